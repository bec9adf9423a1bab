"""Workflows for the race tests (tests/test_races.py), loaded as ``tests.race_workflows``."""

import os
from datetime import timedelta
from pathlib import Path

from engine import State, Workflow, at, step


class Courier(Workflow):
    """A delivery attempt that fails while ``data["flag"]`` names a file that exists; no retries, so
    the run fails and waits for an operator's retry. The ``give_up_at`` timer ends it meanwhile."""

    name, version = "race_courier", 1

    dispatching = State(initial=True)
    delivered = State(final=True)
    gave_up = State(final=True)

    deliver = dispatching.to(delivered)
    give_up = dispatching.to(gave_up)

    final_status = {"gave_up": "failed"}
    deadline = at("give_up_at", dispatching, send="give_up")

    @step(dispatching, retries=0)
    def try_delivery(self, run):
        if os.path.exists(run.data["flag"]):
            raise RuntimeError("the van broke down")
        return "deliver"


class Marked(Workflow):
    """Each execution of its step leaves a file in ``data["marker_dir"]`` (executions, not deliveries)."""

    name, version = "race_marked", 1

    working = State(initial=True)
    finished = State(final=True)

    done = working.to(finished)

    @step(working, retries=3, backoff=timedelta(seconds=0.1))
    def work(self, run):
        (Path(run.data["marker_dir"]) / f"run-{run.id}-attempt-{run.attempt}-pid-{os.getpid()}").touch()
        return "done", {"by": os.getpid()}
