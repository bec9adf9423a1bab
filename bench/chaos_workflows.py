"""A workflow only the chaos run uses (``bench/chaos.py``): an activity, a long flaky step,
a step that breaks until an operator retries it, and timers read from the run's data.

Loaded with ``INTERLOCK_WORKFLOWS=workflows,bench.chaos_workflows``. Everything a step
does is decided by the run's data (and the clock, for ``broken_until``), so any worker
process gives the same answer and the chaos checks can tell, from the database alone,
which final states a run was allowed to reach.
"""

import time
from datetime import timedelta

from engine import State, Workflow, activity, at, step


class StepBroken(Exception):
    """A simulated outage of the service a step calls."""


class ChaosParcel(Workflow):
    """A parcel: inspected by an outside worker, sorted, labelled, then picked up or returned.

    - ``received``: the ``chaos_inspect`` activity (ActivityPoller in the chaos script);
      its worker fails the first ``inspect_failures`` attempts.
    - ``sorting``: a step that takes ``work_seconds`` (long enough to be claimed, so a
      killed worker leaves a leased task behind) and fails its first ``sort_failures`` attempts.
    - ``labelling``: a step that fails while ``time.time() < broken_until`` and has one retry
      only, so the run fails and the operator (the chaos script) retries it; the
      ``label_deadline`` timer skips the label, and races the retry when it is due meanwhile.
    - ``awaiting_pickup``: the ``picked_up`` event from outside races the ``pickup_deadline`` timer.
    """

    name, version = "chaos_parcel", 1

    received = State(initial=True)
    sorting = State()
    labelling = State()
    awaiting_pickup = State()
    delivered = State(final=True)
    returned = State(final=True)

    inspected = received.to(sorting)
    reject = received.to(returned)
    binned = sorting.to(labelling)
    labelled = labelling.to(awaiting_pickup)
    skip_label = labelling.to(awaiting_pickup)
    picked_up = awaiting_pickup.to(delivered)
    expire = awaiting_pickup.to(returned)

    final_status = {"returned": "failed"}

    chaos_inspect = activity(received, retries=6, visibility_timeout=timedelta(seconds=4),
                             on_error="reject", default="inspected")
    label_timeout = at("label_deadline", labelling, send="skip_label")
    pickup_timeout = at("pickup_deadline", awaiting_pickup, send="expire")

    @step(sorting, retries=6, backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=20))
    def sort(self, run):
        time.sleep(run.data.get("work_seconds", 0))
        if run.attempt <= run.data.get("sort_failures", 0):
            raise StepBroken(f"sorter jammed (attempt {run.attempt})")
        return "binned", {"bin": f"B{len(run.id) % 7}"}

    @step(labelling, retries=1, backoff=timedelta(seconds=0.1))
    def label(self, run):
        if time.time() < run.data.get("broken_until", 0):
            raise StepBroken("label printer offline")
        return "labelled", {"label": f"L-{run.id[-6:]}"}
