"""Workflows with max_active (tests/test_admission.py)."""

import time
from datetime import timedelta

from engine import Limit, State, Workflow, after, at, step


def group(run) -> str:
    """The key: the runs of one test share it (``group`` in their data); a run without one has a
    key of its own, so that runs of unrelated tests never wait for each other."""
    return run.data.get("group") or run.id


class Gate(Workflow):
    """At most three runs past the gate at once: the others wait in ``pending``, oldest first."""

    name, version = "adm_gate", 1
    max_active = Limit(3, key=group)

    pending = State(initial=True)
    working = State()
    parked = State()
    done = State(final=True)

    go = pending.to(working)
    park = working.to(parked)
    finished = working.to(done) | parked.to(done)
    note = pending.to.itself(internal=True) | working.to.itself(internal=True) | parked.to.itself(internal=True)

    # Would fire at once if it counted from the start rather than from the admission.
    reminder = after(timedelta(hours=1), pending, send="go")

    def on_note(self, run, text=None):
        run.data.setdefault("notes", []).append(text)

    @step(pending)
    def begin(self, run):
        return "go"

    @step(working, retries=1, backoff=timedelta(seconds=0.05), time_limit=timedelta(seconds=30))
    def work(self, run):
        if time.time() < run.data.get("fail_until", 0):  # epoch seconds: a retry after then succeeds
            raise RuntimeError("the work failed")
        time.sleep(run.data.get("sleep", 0.05))
        return "park" if run.data.get("park") else "finished"

    demo_data = {"park": True}
    demo_events = {"parked": "finished"}



class Deadline(Workflow):
    """One at a time; its initial state has a deadline read from the run's data when entered."""

    name, version = "adm_deadline", 1
    max_active = Limit(1, key=group)

    pending = State(initial=True)
    done = State(final=True)

    finish = pending.to(done)
    late = pending.to(done)

    expires = at("deadline", pending, send="late")

    demo_data = {"deadline": "2100-01-01T00:00:00Z"}
    demo_events = {"pending": "finish"}
