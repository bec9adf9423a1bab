"""Test your own workflows: a throwaway SQLite database and an in-process worker.

    from engine.testing import Harness

    def test_order_ships():
        with Harness(OrderPipeline) as h:
            run = h.run("orders", {"items": [...]}, events={"review": "approve"})
            assert run.status == "succeeded"
            assert [e.event for e in h.rt.history(run.id) if e.kind == "transition"] == [...]
"""

import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import update

from .config import Settings
from .db import Database
from .models import timers
from .registry import Registry
from .runner import follow
from .runtime import Interlock
from .transitions import ACTIVE


def fast_forward(rt: Interlock, run_id: str, timer: str | None = None) -> int:
    """Make the run's armed timers (or the one named ``timer``) due now; returns how many.

    The worker's reconciler then fires them through the transition function as usual.
    """
    conditions = [timers.c.run_id == run_id, timers.c.status == "armed"]
    if timer is not None:
        conditions.append(timers.c.name == timer)
    with rt.db.write() as conn:
        return conn.execute(update(timers).where(*conditions).values(due_at=rt.clock.now())).rowcount


def fire_schedule(rt: Interlock, name: str, at: float | None = None) -> list[dict]:
    """Fire schedule ``name`` as a reconciler would at ``at`` (epoch seconds; default: the time of
    its next tick), without waiting for it; the ticks it fired, each with its ``run_id``.

    Ticks between now and ``at`` count as missed (the catch-up policy decides): to step through
    several ticks, call it once per tick.
    """
    from . import schedules

    at = schedules.get(rt, name)["next_fire_at"] if at is None else at
    before = {t["fire_time"] for t in schedules.ticks(rt, name, limit=1000)}
    schedules.fire_due(rt, now=at)
    return [t for t in reversed(schedules.ticks(rt, name, limit=1000)) if t["fire_time"] not in before]


class Harness:
    """Runs the given workflow classes (or modules) on a fresh SQLite file with a worker."""

    def __init__(self, *workflows, threads: int = 4, directory: str | None = None, **settings):
        """``settings``: Settings fields to override (say ``eager_threads=0``)."""
        self._dir = Path(directory or tempfile.mkdtemp(prefix="interlock-test-"))
        self._own_dir = directory is None
        url = f"sqlite:///{self._dir / 'interlock.db'}"
        database = Database(url)
        database.upgrade()
        database.dispose()
        registry = Registry()
        for item in workflows:
            if isinstance(item, str):
                registry.load_modules([item])
            else:
                registry.add(item)
        settings = Settings(database_url=url, broker_url="memory://", poll_interval=0.02,
                            resend_after=1.0, lease_seconds=5.0, queue="interlock_harness").replace(**settings)
        self.rt = Interlock(settings, registry=registry)
        self.rt.worker(threads).start()

    def run(self, workflow: str, data=None, *, events=None, timeout: float = 10.0, **start_kwargs):
        """Start a run and wait until it ends, sending ``events`` ({state: event}) when it waits
        (and the ``demo_events`` of their workflows to the runs it starts)."""
        run = self.rt.start(workflow, data, **start_kwargs)
        return follow(self.rt, run.id, events=events, timeout=timeout, fallback_poll=0.05, event_delay=0,
                      children=True)

    def wait(self, run_id: str, *, state: str | None = None, timeout: float = 10.0):
        """Wait until the run ends, or (with ``state``) until it waits or runs in that state."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.rt.get(run_id)
            if state is not None and state in run.state.split(","):
                return run
            if state is None and run.status not in ACTIVE:
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} is {run.status} in {run.state} after {timeout}s")
            time.sleep(0.01)

    def fast_forward(self, run_id: str, timer: str | None = None) -> int:
        return fast_forward(self.rt, run_id, timer)

    def close(self):
        self.rt.close()
        if self._own_dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc):
        self.close()
