"""Workflows for tests that run real worker processes."""

import os
import time
from datetime import timedelta
from pathlib import Path

from engine import State, Workflow, step


class Crashy(Workflow):
    """Its first execution announces itself in a file, then hangs until the worker is killed."""

    name, version = "crashy", 1

    working = State(initial=True)
    finished = State(final=True)

    done = working.to(finished)

    @step(working, retries=3, backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=60))
    def work(self, run):
        markers = Path(run.data["marker_dir"])
        first = not list(markers.glob("attempt-*"))
        (markers / f"attempt-{run.attempt}-pid-{os.getpid()}").touch()
        if first:
            time.sleep(60)
        return "done", {"finished_by": os.getpid()}


class Quick(Workflow):
    name, version = "quick", 1

    queued = State(initial=True)
    finished = State(final=True)

    done = queued.to(finished)

    @step(queued)
    def work(self, run):
        return "done"


class Slow3(Workflow):
    """Three steps that each take ``seconds`` and leave one file per execution in ``marker_dir``
    (named by task id and attempt), written by the step itself: what the outside world saw."""

    name, version = "slow3", 1

    first = State(initial=True)
    second = State()
    third = State()
    finished = State(final=True)

    go2 = first.to(second)
    go3 = second.to(third)
    done = third.to(finished)

    def _execute(self, run, event):
        marker = Path(run.data["marker_dir"]) / f"{run.task_id}-{run.attempt}-{os.getpid()}-{time.time_ns()}"
        marker.touch()
        time.sleep(run.data["seconds"])
        return event

    @step(first)
    def one(self, run):
        return self._execute(run, "go2")

    @step(second)
    def two(self, run):
        return self._execute(run, "go3")

    @step(third)
    def three(self, run):
        return self._execute(run, "done")
