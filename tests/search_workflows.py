"""Workflows that declare search fields (tests/test_search_fields.py), loaded as ``tests.search_workflows``.

``test_search_order`` changes its indexed fields in every way a run's data changes: a step's
result, an external event's callback, a data update, a data trigger's transition, a retried
step, and a child run's result.
"""

import os
from datetime import datetime

from engine import State, Workflow, child, step, trigger


class Order(Workflow):
    name, version = "test_search_order", 1
    search = {"customer": str, "total": float, "country": str, "paid": bool, "due": datetime,
              "items": int}

    pricing = State(initial=True)
    reviewing = State()
    confirming = State()
    invoicing = State()
    charging = State()
    done = State(final=True)

    priced = pricing.to(reviewing)
    review = reviewing.to(confirming)
    confirm = confirming.to(invoicing)
    invoiced = invoicing.to(charging)
    charged = charging.to(done)

    @step(pricing, retries=0)
    def price(self, run):
        return {"total": run.data.get("base", 10) * 1.5, "items": 3}

    def on_review(self, run, data):
        # An external event's data is the event's: the callback keeps what it wants.
        run.data["country"] = data.get("country")
        run.data["items"] = data.get("items", run.data.get("items"))

    paid_up = trigger("paid", send="confirm", states=[confirming], when=lambda run, old, new: new is True)

    def on_confirm(self, run):
        run.data["due"] = "2026-03-01T12:00:00Z"

    invoice = child(invoicing, workflow="test_search_invoice",
                    data=lambda run: {"customer": run.data.get("customer")}, on_done="invoiced")

    def on_invoiced(self, run, customer):
        run.data["customer"] = customer  # the child's final data, by name

    @step(charging, retries=0)
    def charge(self, run):
        if os.path.exists(run.data.get("flag", "")):
            raise RuntimeError("the card was declined")
        return {"total": run.data["total"] + 1, "country": None}


class Invoice(Workflow):
    """The child: indexes its own customer, and hands a changed one back."""

    name, version = "test_search_invoice", 1
    search = {"customer": str}

    issuing = State(initial=True)
    issued = State(final=True)
    issue_done = issuing.to(issued)

    @step(issuing, retries=0)
    def issue(self, run):
        return {"customer": (run.data.get("customer") or "").upper() + " LTD"}

