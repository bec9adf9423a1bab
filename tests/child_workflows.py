"""Parents that start child runs, and the children they start (tests/test_children.py)."""

from datetime import timedelta

from engine import State, Workflow, after, child, map_, step


class Invoice(Workflow):
    """The child: issues an invoice, or fails when told to."""

    name, version = "test_invoice", 1

    issuing = State(initial=True)
    issued = State(final=True)
    done = issuing.to(issued)

    @step(issuing, retries=0)
    def issue(self, run):
        if run.data.get("fail"):
            raise RuntimeError("the invoicing service refused the order")
        return {"invoice_no": f"INV-{run.data['order']}"}


class Paperwork(Workflow):
    """A child that waits for an event from outside (so a test decides when it ends)."""

    name, version = "test_paperwork", 1

    pending = State(initial=True)
    signed = State(final=True)
    sign = pending.to(signed)


class Ordering(Workflow):
    """The parent: waits for its invoice, then goes on (or stops when invoicing failed)."""

    name, version = "test_ordering", 1

    invoicing = State(initial=True)
    shipping = State()
    shipped = State(final=True)
    unbilled = State(final=True)

    invoiced = invoicing.to(shipping)
    invoice_failed = invoicing.to(unbilled)
    ship = shipping.to(shipped)
    final_status = {"unbilled": "failed"}

    invoice = child(invoicing, workflow="test_invoice", data=lambda run: {"order": run.data["order"],
                                                                           "fail": run.data.get("fail", False)},
                    business_key=lambda run: run.data["order"], on_done="invoiced",
                    on_error="invoice_failed", result="invoice")

    def on_invoiced(self, run, invoice_no):
        run.data["billed_as"] = invoice_no  # the child's final data arrives by name

    demo_data = {"order": "A-1"}


class Impatient(Workflow):
    """A parent that stops waiting for its paperwork after a timer; the child is cancelled."""

    name, version = "test_impatient", 1

    waiting = State(initial=True)
    signed = State(final=True)
    gave_up = State(final=True)

    done = waiting.to(signed)
    give_up = waiting.to(gave_up)

    papers = child(waiting, workflow="test_paperwork", on_done="done")
    patience = after(timedelta(days=1), waiting, send="give_up")


class Detached(Impatient):
    """The same, but the child is abandoned (goes on alone) when the parent leaves."""

    name, version = "test_detached", 1

    papers = child(Impatient.waiting, workflow="test_paperwork", on_done="done", parent_close="abandon")


class Parcel(Workflow):
    """A map's item: delivered, unless the file its item names exists (then lost: failed)."""

    name, version = "test_parcel", 1

    moving = State(initial=True)
    delivered = State(final=True)
    arrive = moving.to(delivered)

    @step(moving, retries=0)
    def carry(self, run):
        import os
        import time
        time.sleep(run.data.get("seconds", 0.05))
        if run.data.get("flag") and os.path.exists(run.data["flag"]):
            raise RuntimeError(f"parcel {run.data['id']} lost")
        return {"delivered": run.data["id"]}


class Consignment(Workflow):
    """A parent shipping each of its parcels as a child run, two at a time, one loss tolerated."""

    name, version = "test_consignment", 1

    shipping = State(initial=True)
    done = State(final=True)
    partly_lost = State(final=True)

    all_delivered = shipping.to(done)
    some_lost = shipping.to(partly_lost)
    final_status = {"partly_lost": "failed"}

    parcels = map_(shipping, items="parcels", workflow="test_parcel", max_concurrency=2, tolerated_failures=1,
                   business_key=lambda run, item: item["id"], on_done="all_delivered", on_error="some_lost",
                   results="deliveries")

    demo_data = {"parcels": [{"id": "P1"}, {"id": "P2"}, {"id": "P3"}]}


class StrictConsignment(Workflow):
    """No loss tolerated and no on_error: a failed map fails the run, and retry re-runs the lost."""

    name, version = "test_strict_consignment", 1

    shipping = State(initial=True)
    done = State(final=True)
    all_delivered = shipping.to(done)

    parcels = map_(shipping, items="parcels", workflow="test_parcel", max_concurrency=3,
                   data=lambda run, item: {"seconds": 0, **item}, business_key=lambda run, item: item["id"],
                   on_done="all_delivered", results="deliveries")

    demo_data = {"parcels": [{"id": "P1"}]}


class Patient(Workflow):
    """A parent with no on_error: a failed child leaves it waiting until the child is retried."""

    name, version = "test_patient", 1

    waiting = State(initial=True)
    arrived = State(final=True)
    arrive = waiting.to(arrived)

    parcel = child(waiting, workflow="test_parcel", data=lambda run: run.data["parcel"], on_done="arrive")

    demo_data = {"parcel": {"id": "P1"}}
