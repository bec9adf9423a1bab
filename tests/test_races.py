"""Races on PostgreSQL: two callers change one run at the same moment, and the final state and
the history come out as if one had come after the other.

Where a race needs a precise interleaving, the test holds the run's row lock from a
connection of its own (``SELECT … FOR UPDATE``) until every contender is waiting for it
(seen in ``pg_stat_activity``), then lets go: the contenders have read what they read
before the lock was released, exactly as when two processes collide.
"""

import threading
import time
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, select, text, update

from engine.models import tasks, timers
from engine.reconciler import Reconciler
from engine.steps import StepExecutor

from .conftest import wait_until

pytestmark = pytest.mark.postgres


# -- helpers ---------------------------------------------------------------------------------

class Together:
    """Run callables in threads; collect what each returned or raised."""

    def __init__(self, *actions):
        self.results = [None] * len(actions)
        self.threads = [threading.Thread(target=self._run, args=(i, a), daemon=True) for i, a in enumerate(actions)]
        for t in self.threads:
            t.start()

    def _run(self, i, action):
        try:
            self.results[i] = ("ok", action())
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.results[i] = ("error", exc)

    def join(self, timeout=30):
        for t in self.threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a contender never returned"
        return self.results


@contextmanager
def run_lock_held(url, run_id):
    """Hold run ``run_id``'s row lock in a transaction of our own until the block ends."""
    engine = create_engine(url)
    conn = engine.connect()
    tx = conn.begin()
    conn.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": run_id})
    try:
        yield
    finally:
        tx.rollback()
        conn.close()
        engine.dispose()


def waiting_for_locks(url) -> int:
    """Backends of this database blocked on a lock right now."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'")).scalar()
    finally:
        engine.dispose()


def history_of(rt, run_id):
    entries = rt.history(run_id)
    assert [h.seq for h in entries] == list(range(1, rt.get(run_id).last_seq + 1))
    return entries


def task_of(rt, run_id, state=None):
    query = select(tasks).where(tasks.c.run_id == run_id).order_by(tasks.c.created_at)
    if state:
        query = query.where(tasks.c.state == state)
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def expire_lease(rt, task_id, attempt=1):
    """The task was claimed (attempt ``attempt``) by a worker that died: its lease ended."""
    now = time.time()
    with rt.db.write() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(
            status="running", attempt=attempt, claimed_at=now - 10, lease_until=now - 1))


# -- two reconcilers -----------------------------------------------------------------------------

def test_two_reconcilers_recovering_one_lost_task_count_one_failed_attempt(pg_interlock, pg_settings):
    """Two worker processes' reconcilers find the same expired lease at the same moment."""
    rt = pg_interlock
    run = rt.start("test_flaky", {"flag": "/nonexistent"})  # get_ready: 2 attempts
    [task] = task_of(rt, run.id)
    expire_lease(rt, task["id"])

    with run_lock_held(pg_settings.database_url, run.id):
        both = Together(Reconciler(rt).recover_lost_tasks, Reconciler(rt).recover_lost_tasks)
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 2, timeout=10,
                   message="both reconcilers to wait for the run's lock")
    assert [r[0] for r in both.join()] == ["ok", "ok"]

    entries = history_of(rt, run.id)
    failed = [h for h in entries if h.kind == "step_failed"]
    assert [(h.detail["attempt"], h.detail["lost"]) for h in failed] == [(1, True)], \
        [(h.seq, h.kind, h.detail.get("attempt")) for h in entries]
    [after] = task_of(rt, run.id)
    assert (after["status"], after["attempt"]) == ("queued", 1)
    assert rt.get(run.id).status == "running"


def test_one_task_delivered_to_two_workers_is_applied_once(pg_interlock, pg_settings):
    """A stale task sent again (by a reconciler, or two) reaches two worker processes; both run the
    step before either claims it. The cargo tracker answers "not yet": one recheck, one timer."""
    rt = pg_interlock
    run = rt.start("cargo", {"container": "C1", "manifest": ["x"], "arrives_after_checks": 99,
                             "check_every_seconds": 600})
    rt.send(run.id, "depart")
    [task] = task_of(rt, run.id, "in_transit")
    first, second = StepExecutor(rt), StepExecutor(rt)  # one per worker process

    with run_lock_held(pg_settings.database_url, run.id):
        both = Together(lambda: first.execute(task["id"]), lambda: second.execute(task["id"]))
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 2, timeout=10,
                   message="both results to wait for the run's lock")
    assert [r[0] for r in both.join()] == ["ok", "ok"]

    entries = history_of(rt, run.id)
    kinds = [h.kind for h in entries if h.seq > 2]
    assert kinds == ["step_started", "step_rechecked", "ignored"], [(h.seq, h.kind, h.detail) for h in entries]
    assert entries[-1].detail["attempt"] == 1 and "succeeded" in entries[-1].detail["reason"]
    with rt.db.read() as conn:
        armed = conn.execute(select(timers.c.kind).where(timers.c.run_id == run.id,
                                                         timers.c.status == "armed")).scalars().all()
    assert sorted(armed) == ["recheck", "timer"]  # one recheck, and the 30-day timeout
    assert rt.get(run.id).data["checks"] == 1
