"""Parallel branches with steps: each region's step runs at once, on whichever worker is free."""

import time
from datetime import timedelta

from engine import State, Workflow, step


class Clearance(Workflow):
    """Customs papers and a container scan go on side by side; refused papers stop both."""

    name, version = "test_branches", 1

    class checking(State.Parallel, initial=True):
        class customs(State.Compound):
            filing = State(initial=True)
            filed = State(final=True)
            file = filing.to(filed)

        class inspection(State.Compound):
            scanning = State(initial=True)
            scanned = State(final=True)
            scan = scanning.to(scanned)

    released = State(final=True)
    refused = State(final=True)

    done_state_checking = checking.to(released)  # every region reached its final state
    refuse = checking.to(refused)  # one region failed: leave the others
    final_status = {"refused": "failed"}

    @step("filing", retries=0, on_error="refuse", time_limit=timedelta(seconds=30))
    def file_papers(self, run):
        time.sleep(run.data.get("filing_seconds", 1.0))
        if run.data.get("customs_refuses"):
            raise RuntimeError("customs refused the declaration")
        return "file"

    @step("scanning", retries=0, time_limit=timedelta(seconds=30))
    def scan_container(self, run):
        time.sleep(run.data.get("scanning_seconds", 1.0))
        return "scan", {"scanned": True}
