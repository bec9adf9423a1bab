"""Invoicing: one invoice for an order, issued by a (simulated) billing service."""

from datetime import timedelta

from engine import State, Workflow, step

from . import simulators


class Invoicing(Workflow):
    """Issues the invoice of an order; the order (its parent run) waits for it."""

    name, version = "invoicing", 1

    issuing = State(initial=True)
    issued = State(final=True)
    refused = State(final=True)

    done = issuing.to(issued)
    refuse = issuing.to(refused)
    final_status = {"refused": "failed"}

    @step(issuing, retries=3, backoff=timedelta(seconds=0.2), on_error="refuse", default="done")
    def issue(self, run):
        if run.data.get("billing_refuses"):
            raise simulators.BillingRefused(f"billing refused order {run.data['order']}")
        return {"invoice_no": simulators.reference("INV", run.data["order"]), "amount": run.data.get("amount", 0)}

    demo_data = {"order": "A-1001", "amount": 120.0}
