"""Steps with concurrency and rate limits (tests/test_limits.py)."""

import time
from datetime import timedelta

from engine import Limit, Rate, State, Workflow, step


class LimitedCall(Workflow):
    """A call to a system that takes at most two at once."""

    name, version = "lim_call", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, concurrency=2, retries=2, backoff=timedelta(seconds=0.05))
    def call(self, run):
        if run.attempt <= run.data.get("fail_first", 0):
            raise RuntimeError("the system said no")
        time.sleep(run.data.get("sleep", 0.2))
        return "finished"

    demo_data = {"sleep": 0.05}
    demo_events = {}


class PerAccount(Workflow):
    """One call at a time per account."""

    name, version = "lim_account", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, concurrency=Limit(1, key=lambda run: run.data.get("account") or run.id))
    def call(self, run):
        time.sleep(run.data.get("sleep", 0.2))
        return "finished"

    demo_data = {"sleep": 0.05}  # an account of its own
    demo_events = {}


class Rated(Workflow):
    """A gateway that takes 20 calls a second."""

    name, version = "lim_rate", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, rate=Rate(20, per=timedelta(seconds=1)))
    def call(self, run):
        return "finished"

    demo_data = {}
    demo_events = {}
