"""Workflows for tests/test_clock.py: timers, a long step and a retry, run by two workers whose
clocks differ. Each records which process did what, and the database server's clock when a
timer's event is taken (inside the transaction that fires it)."""

import os
import time
from datetime import timedelta

from engine import State, Workflow, after, at, step

SERVER_NOW = "SELECT extract(epoch from clock_timestamp())"


def _server_now(db) -> float:
    return float(db.exec_driver_sql(SERVER_NOW).scalar())


class ClockCourse(Workflow):
    """A quick step (its worker arms the ``after`` timer), an ``after`` timer, an ``at`` timer,
    then a step that fails its first attempt and is retried after a short backoff."""

    name, version = "clock_course", 1

    preparing = State(initial=True)
    cooling = State()
    waiting_deadline = State()
    retrying = State()
    finished = State(final=True)

    prepared = preparing.to(cooling)
    cooled = cooling.to(waiting_deadline)
    deadline_passed = waiting_deadline.to(retrying)
    recovered = retrying.to(finished)

    cool_down = after(timedelta(seconds=3), cooling, send="cooled")
    deadline = at("deadline", waiting_deadline, send="deadline_passed")

    @step(preparing)
    def get_ready(self, run):
        return "prepared", {"prepared_by": os.getpid()}

    def on_cooled(self, run, db):
        run.data["cooled_by_server_clock"] = _server_now(db)

    def on_deadline_passed(self, run, db):
        run.data["deadline_by_server_clock"] = _server_now(db)

    @step(retrying, retries=2, backoff=timedelta(seconds=2))
    def flaky(self, run):
        if run.attempt == 1:
            raise RuntimeError("first attempt fails")
        return "recovered", {"recovered_by": os.getpid()}


class ClockLongStep(Workflow):
    """A step that runs longer than the lease: its worker must renew it, no other may take it."""

    name, version = "clock_long_step", 1

    working = State(initial=True)
    finished = State(final=True)

    done = working.to(finished)

    @step(working, retries=0, time_limit=timedelta(seconds=30))
    def work(self, run):
        time.sleep(run.data["seconds"])
        return "done", {"worked_by": os.getpid()}
