"""Parents that start child runs, and the children they start (tests/test_children.py)."""

from datetime import timedelta

from engine import State, Workflow, after, child, step


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
