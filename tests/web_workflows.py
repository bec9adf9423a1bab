"""A workflow for the web page tests (loaded as ``tests.web_workflows``): a step that logs through
Python's ``logging`` and changes the data, then one that logs and fails with a long unbroken token."""

import logging
from datetime import timedelta

from engine import State, Workflow, step

log = logging.getLogger("tests.web_workflows")


class Settlement(Workflow):
    """Prices an order, then charges it; the card gateway refuses while ``data["refuse"]`` is set."""

    name, version = "test_settlement", 1

    pricing = State(initial=True)
    charging = State()
    settled = State(final=True)

    priced = pricing.to(charging)
    charged = charging.to(settled)

    @step(pricing, retries=0)
    def price(self, run):
        log.warning("pricing %d items for %s", len(run.data.get("items", [])), run.data.get("customer"))
        return "priced", {"total": 12.5 * len(run.data.get("items", [])), "currency": "EUR"}

    @step(charging, retries=1, backoff=timedelta(seconds=0.05))
    def charge(self, run):
        log.warning("charging card %s, attempt %d", run.data.get("card"), run.attempt)
        if run.data.get("refuse"):
            raise RuntimeError(f"gateway refused task={run.data['refuse']}")
        return "charged", {"charged": True}

    demo_data = {"customer": "ada@example.com", "card": "4242", "items": ["BOOK-1", "BOOK-2"]}
