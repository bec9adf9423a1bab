"""Small, fast workflows used only by the tests (loaded as ``tests.workflows``).

Every name starts with ``test_`` so none can clash with the example workflows.
"""

import os
import threading
from datetime import timedelta

from sqlalchemy import text

from engine import State, Workflow, after, at, step, trigger

# Steps that must wait for the test to let them go block on one of these (the worker
# runs in the test's process). Keyed by a name the test puts in the run's data.
GATES: dict[str, threading.Event] = {}
# How many times each step body ran, keyed by run id: counts executions, not deliveries.
CALLS: dict[str, int] = {}
_calls_lock = threading.Lock()

AUDIT_TABLE = "test_audit"


def count_call(run) -> None:
    with _calls_lock:
        CALLS[run.id] = CALLS.get(run.id, 0) + 1


class Pipeline(Workflow):
    """Three steps in a row, each passing something on in the run's data."""

    name, version = "test_pipeline", 1

    fetching = State(initial=True)
    transforming = State()
    loading = State()
    done = State(final=True)

    fetched = fetching.to(transforming)
    transformed = transforming.to(loading)
    loaded = loading.to(done)

    @step(fetching, retries=0)
    def fetch(self, run):
        count_call(run)
        run.data["rows"] = list(range(1, run.data.get("n", 3) + 1))

    @step(transforming, retries=0)
    def transform(self, run):
        return {"total": sum(run.data["rows"])}

    @step(loading, retries=0)
    def load(self, run):
        return "loaded", {"loaded": True}


class Flaky(Workflow):
    """``work`` fails while the file named by ``data["flag"]`` exists."""

    name, version = "test_flaky", 1

    preparing = State(initial=True)
    working = State()
    done = State(final=True)

    prepared = preparing.to(working)
    worked = working.to(done)

    @step(preparing, retries=1, backoff=timedelta(seconds=0.05))
    def get_ready(self, run):
        return None

    @step(working, retries=2, backoff=timedelta(seconds=0.05))
    def work(self, run):
        if os.path.exists(run.data["flag"]):
            raise RuntimeError(f"flag file {run.data['flag']} is present")
        return {"worked": True}


class Approval(Workflow):
    """Waits up to 30 days for an answer from outside."""

    name, version = "test_approval", 1

    pending = State(initial=True)
    approved = State(final=True)
    rejected = State(final=True)
    expired = State(final=True)

    approve = pending.to(approved)
    reject = pending.to(rejected)
    expire = pending.to(expired)

    deadline = after(timedelta(days=30), pending, send="expire")
    final_status = {"expired": "failed"}


class ShortTimer(Workflow):
    """A reminder 0.3 s after entering ``waiting``, unless answered first."""

    name, version = "test_short_timer", 1

    waiting = State(initial=True)
    reminded = State(final=True)
    answered = State(final=True)

    remind = waiting.to(reminded)
    answer = waiting.to(answered)

    nudge = after(0.3, waiting, send="remind")


class AtTimer(Workflow):
    """Fires at the time stored in ``data["fire_at"]``."""

    name, version = "test_at_timer", 1

    scheduled = State(initial=True)
    fired = State(final=True)
    called_off = State(final=True)

    fire = scheduled.to(fired)
    call_off = scheduled.to(called_off)

    alarm = at("fire_at", scheduled, send="fire")


def _over_budget(run, old, new):
    return isinstance(new, (int, float)) and new > run.data.get("limit", 100)


class Budget(Workflow):
    """Goes to review when ``total`` changes to more than ``limit``."""

    name, version = "test_trigger", 1

    tracking = State(initial=True)
    review = State()
    closed = State(final=True)

    over_budget = tracking.to(review)
    close = tracking.to(closed) | review.to(closed)

    watch_total = trigger("total", send="over_budget", when=_over_budget)


class Guarded(Workflow):
    """``publish`` is only allowed once the data has a title."""

    name, version = "test_guard", 1

    draft = State(initial=True)
    published = State(final=True)

    publish = draft.to(published, cond="has_title")

    def has_title(self, run):
        return bool(run.data.get("title"))


class Audited(Workflow):
    """Entry callbacks write to a table through the transition's connection, or raise."""

    name, version = "test_callbacks", 1

    new = State(initial=True)
    recorded = State()
    done = State(final=True)

    record = new.to(recorded)
    finish = recorded.to(done)

    def on_enter_new(self, run, data):
        if data.get("explode_on_start"):
            raise ValueError("refusing to start")

    def on_enter_recorded(self, run, db, data):
        run.data["recorded"] = True
        db.execute(text(f"INSERT INTO {AUDIT_TABLE} (run_id, note) VALUES (:run_id, :note)"),
                   {"run_id": run.id, "note": data.get("note", "")})
        if data.get("explode"):
            raise ValueError("callback exploded after writing")


class Counter(Workflow):
    """``add`` increments ``data["count"]`` until ``close``."""

    name, version = "test_counter", 1

    counting = State(initial=True)
    closed = State(final=True)

    add = counting.to.itself()
    close = counting.to(closed)

    def on_add(self, run):
        run.data["count"] = run.data.get("count", 0) + 1


class Gated(Workflow):
    """A step that waits for the test (``data["gate"]``), raced by an outside event."""

    name, version = "test_gated", 1

    checking = State(initial=True)
    checked = State(final=True)
    skipped = State(final=True)

    check = checking.to(checked)
    skip = checking.to(skipped)

    @step(checking, retries=0)
    def do_check(self, run):
        count_call(run)
        gate = GATES.get(run.data.get("gate", ""))
        if gate is not None:
            gate.wait(10)
        return "check"


class VersionedV1(Workflow):
    name, version = "test_versioned", 1

    begin = State(initial=True)
    end = State(final=True)

    go = begin.to(end)


class VersionedV2(Workflow):
    """Version 2 adds a review between the same start and end."""

    name, version = "test_versioned", 2

    begin = State(initial=True)
    reviewing = State()
    end = State(final=True)

    go = begin.to(reviewing)
    sign_off = reviewing.to(end)


class Heartbeat(Workflow):
    """Times out 30 s after the last ``ping``: a self-transition re-enters its state and re-arms it."""

    name, version = "test_heartbeat", 1

    watching = State(initial=True)
    expired = State(final=True)

    ping = watching.to.itself()
    time_out = watching.to(expired)

    silence = after(30, watching, send="time_out")


class TwoTriggers(Workflow):
    """Two data triggers; the first one's event is refused by its guard."""

    name, version = "test_two_triggers", 1

    idle = State(initial=True)
    took_a = State(final=True)
    took_b = State(final=True)

    go_a = idle.to(took_a, cond="never")
    go_b = idle.to(took_b)

    on_a = trigger("a", send="go_a")
    on_b = trigger("b", send="go_b")

    def never(self):
        return False
