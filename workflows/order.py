"""An order composed of other runs: an invoicing child, then one cargo run per parcel (a Map)."""

from engine import State, Workflow, child, map_

from .cargo import CargoShipment

# What each parcel's cargo run starts with, beside its container: the simulator's pace.
CARGO = {key: CargoShipment.demo_data[key] for key in
         ("origin", "destination", "check_every_seconds", "arrives_after_checks", "customs_outages", "customs_holds")}


class Order(Workflow):
    """An order that ships several parcels.

    Packing waits for the order's invoice, a child run of ``invoicing``. Shipping starts a
    ``cargo`` run per parcel, at most 20 at a time, and goes on when all have ended: delivered,
    or ``partly_lost`` as soon as more than 10% of them are lost. The deliveries are collected
    in parcel order.
    """

    name, version = "order", 1

    packing = State(initial=True)
    shipping = State()
    done = State(final=True)
    partly_lost = State(final=True)
    unbilled = State(final=True)

    packed = packing.to(shipping)
    invoice_refused = packing.to(unbilled)
    all_delivered = shipping.to(done)
    some_lost = shipping.to(partly_lost)
    final_status = {"partly_lost": "failed", "unbilled": "failed"}

    invoice = child(packing, workflow="invoicing", data=lambda run: {"order": run.id, "amount": run.data["amount"]},
                    on_done="packed", on_error="invoice_refused", result="invoice")
    parcels = map_(shipping, items="parcels", workflow="cargo",
                   data=lambda run, item: {**CARGO, "container": item["container"], "manifest": item["contents"]},
                   business_key=lambda run, item: item["container"], max_concurrency=20, tolerated_failures=0.1,
                   on_done="all_delivered", on_error="some_lost", results="deliveries")

    demo_data = {"amount": 2450.0, "parcels": [
        {"container": "MSCU1234565", "contents": ["electronics"]},
        {"container": "TGHU8412030", "contents": ["textiles"]},
        {"container": "CMAU5531187", "contents": ["furniture", "lamps"]},
    ]}
