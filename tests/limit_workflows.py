"""Steps with concurrency and rate limits (tests/test_limits.py)."""

import os
import time
from datetime import timedelta

from sqlalchemy import create_engine, text

from engine import Limit, Rate, State, Workflow, step

_PROBES: dict = {}


def group(run) -> str:
    """The limit's key: the runs of one test share it (``group`` in their data); a run without one
    has a key of its own, so that runs of unrelated tests never wait for each other."""
    return run.data.get("group") or run.id


def probe(run, event: str) -> None:
    """With LIMIT_PROBE_URL set (tests/test_limits.py), note the attempt's start or end in the
    ``lim_probe`` table, committed at once: a sampler counts the attempts running at every moment."""
    url = os.environ.get("LIMIT_PROBE_URL")
    if not url:
        return
    engine = _PROBES.get(url) or _PROBES.setdefault(url, create_engine(url))
    with engine.begin() as conn:
        if event == "start":
            conn.execute(text("INSERT INTO lim_probe (task_id, attempt, pid, started_at) VALUES (:t, :a, :p, :s)"),
                         {"t": run.task_id, "a": run.attempt, "p": os.getpid(), "s": time.time()})
        else:
            conn.execute(text("UPDATE lim_probe SET ended_at = :e WHERE task_id = :t AND attempt = :a AND pid = :p"),
                         {"t": run.task_id, "a": run.attempt, "p": os.getpid(), "e": time.time()})


class LimitedCall(Workflow):
    """A call to a system that takes at most two at once."""

    name, version = "lim_call", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, concurrency=Limit(2, key=group), retries=2, backoff=timedelta(seconds=0.05))
    def call(self, run):
        if run.attempt <= run.data.get("fail_first", 0):
            raise RuntimeError("the system said no")
        time.sleep(run.data.get("sleep", 0.2))
        return "finished"


class ThreeAtOnce(Workflow):
    """A carrier API that bans a client running more than three requests at once."""

    name, version = "lim_three", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, concurrency=Limit(3, key=group), time_limit=timedelta(seconds=30))
    def call(self, run):
        probe(run, "start")
        time.sleep(run.data.get("sleep", 0.3))
        probe(run, "end")
        return "finished"

    demo_data = {"sleep": 0.01}
    demo_events = {}

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


class TwoCalls(Workflow):
    """Two calls in a row to a system that takes two at once."""

    name, version = "lim_chain", 1

    first = State(initial=True)
    second = State()
    done = State(final=True)

    next = first.to(second)
    finished = second.to(done)

    @step(first, concurrency=Limit(2, key=group))
    def call_first(self, run):
        return "next"

    @step(second, concurrency=Limit(2, key=group))
    def call_second(self, run):
        return "finished"

    demo_data = {}
    demo_events = {}


class Unlimited(Workflow):
    """A call with no limit: a run's priority orders its message where the broker has priorities."""

    name, version = "lim_plain", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling)
    def call(self, run):
        time.sleep(run.data.get("sleep", 0.05))
        return "finished"

    demo_data = {"sleep": 0.01}
    demo_events = {}


class Rated(Workflow):
    """A gateway that takes 20 calls a second."""

    name, version = "lim_rate", 1

    calling = State(initial=True)
    done = State(final=True)

    finished = calling.to(done)

    @step(calling, rate=Rate(20, per=timedelta(seconds=1)))
    def call(self, run):
        probe(run, "start")
        probe(run, "end")
        return "finished"

    demo_data = {}
    demo_events = {}
