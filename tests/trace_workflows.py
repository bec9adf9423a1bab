"""A workflow for the tracing tests: a step that fails once, an event, and a step that may run
in another process."""

import logging
import os
from datetime import timedelta

from engine import State, Workflow, step

log = logging.getLogger(__name__)


class Traced(Workflow):
    name, version = "traced", 1

    checking = State(initial=True)
    held = State()
    packing = State()
    done = State(final=True)

    checked = checking.to(held)
    release = held.to(packing)
    packed = packing.to(done)

    @step(checking, retries=1, backoff=timedelta(seconds=0.05))
    def check(self, run):
        if run.attempt == 1:
            raise RuntimeError("the first attempt fails")
        return "checked"

    @step(packing)
    def pack(self, run):
        log.info("packing in process %d", os.getpid())
        return "packed", {"packed_by": os.getpid()}

    def on_enter_done(self, run):
        log.info("run %s is done", run.id)
