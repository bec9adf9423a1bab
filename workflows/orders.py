"""An order pipeline: reserve inventory, charge payment, ship; compensate when payment fails."""

from datetime import timedelta

from engine import State, Workflow, step, trigger

from . import simulators

REVIEW_LIMIT = 1000


class OrderPipeline(Workflow):
    """An order from payment to shipping.

    A declined payment compensates: the reservation is released and the order ends
    ``cancelled``. A data trigger on the order total sends large orders to manual
    review before they are charged (the seed's "TotalUpdated").
    """

    name, version = "orders", 1
    search = {"order_id": str, "customer": str}

    placed = State(initial=True)
    payment = State()
    review = State()
    shipping = State()
    releasing = State()
    completed = State(final=True)
    cancelled = State(final=True)

    reserved = placed.to(payment)
    charged = payment.to(shipping)
    payment_failed = payment.to(releasing)
    hold_for_review = payment.to(review)
    approve = review.to(payment)
    reject = review.to(releasing)
    shipped = shipping.to(completed)
    released = releasing.to(cancelled)

    final_status = {"cancelled": "cancelled"}
    large_order = trigger("total", send="hold_for_review", states=[payment],
                          when=lambda run, old, new: new is not None and new > REVIEW_LIMIT)

    def on_enter_review(self, run):
        run.data["review_reason"] = f"total {run.data['total']} is over {REVIEW_LIMIT}"

    @step(placed, retries=3, backoff=timedelta(seconds=0.2))
    def reserve_inventory(self, run):
        total = round(sum(item["qty"] * item["price"] for item in run.data["items"]), 2)
        reservation = simulators.reference("RES", run.id)
        return "reserved", {"total": total, "reservation": reservation}

    @step(payment, retries=2, backoff=timedelta(seconds=0.2), on_error="payment_failed")
    def charge_payment(self, run):
        if simulators.charge(run.data, run.attempt) == "declined":
            return "payment_failed", {"payment": "declined"}
        return "charged", {"payment": simulators.reference("PAY", run.id, run.data["total"])}

    @step(releasing, retries=5, backoff=timedelta(seconds=0.2))
    def release_inventory(self, run):
        return "released", {"reservation": None, "released": run.data.get("reservation")}

    @step(shipping, retries=5, backoff=timedelta(seconds=0.2))
    def ship(self, run):
        return "shipped", {"tracking": simulators.reference("TRK", run.id)}

    demo_data = {
        "order_id": "A-1001", "customer": "ada@example.com", "card": "4242",
        "items": [{"sku": "BOOK-1", "qty": 2, "price": 12.5}, {"sku": "PEN-7", "qty": 3, "price": 1.9}],
        "gateway_timeouts": 1,
    }
    demo_events = {"review": "approve"}
