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
