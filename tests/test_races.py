"""Races on PostgreSQL: two callers change one run at the same moment, and the final state and
the history come out as if one had come after the other.

Where a race needs a precise interleaving, the test holds the run's row lock from a
connection of its own (``SELECT … FOR UPDATE``) until every contender is waiting for it
(seen in ``pg_stat_activity``), then lets go: the contenders have read what they read
before the lock was released, exactly as when two processes collide.
"""

import socket
import threading
import time
import uuid
from contextlib import contextmanager

import pytest
import requests
from sqlalchemy import create_engine, select, text, update

from engine.models import tasks, timers
from engine.operations import TimerFired
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from engine.steps import StepExecutor
from engine.transitions import apply, fire_due_timers

from .conftest import REDIS_URL, require_server, wait_until
from .processes import Process, env_for

pytestmark = pytest.mark.postgres


RACE_WORKFLOWS = "workflows,tests.workflows,tests.race_workflows"


@pytest.fixture
def race_rt(pg_settings):
    rt = Interlock(pg_settings.replace(workflows=RACE_WORKFLOWS))
    yield rt
    rt.close()


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


def test_two_reconcilers_send_a_stale_task_once(pg_settings):
    """A task committed by a process without a broker: two workers' reconcilers both find it in
    the outbox at the same moment. The broker gets one message."""
    require_server("Redis", "127.0.0.1", 6379)
    import redis

    queue = f"interlock_test_{uuid.uuid4().hex[:12]}"
    writer = Interlock(pg_settings.replace(workflows=RACE_WORKFLOWS))  # memory broker, no worker: no send
    senders = [Interlock(pg_settings.replace(workflows=RACE_WORKFLOWS, broker_url=REDIS_URL, queue=queue))
               for _ in range(2)]
    client = redis.Redis.from_url(REDIS_URL)
    try:
        run = writer.start("race_marked", {"marker_dir": "/nonexistent"})
        [task] = task_of(writer, run.id)
        assert task["sent_at"] is None
        # Both reconcilers read the outbox, then wait on the task row we hold: they take it in turn.
        engine = create_engine(pg_settings.database_url)
        with engine.connect() as conn, conn.begin():
            conn.execute(text("SELECT id FROM tasks WHERE id = :id FOR UPDATE"), {"id": task["id"]})
            both = Together(*(Reconciler(rt).send_outbox for rt in senders))
            wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 2, timeout=10,
                       message="both reconcilers to wait for the task")
        engine.dispose()
        assert [r[0] for r in both.join()] == ["ok", "ok"]
        assert client.llen(f"dramatiq:{queue}") == 1
        [after] = task_of(writer, run.id)
        assert after["status"] == "queued" and after["sent_at"] is not None
    finally:
        for key in client.scan_iter(match=f"dramatiq:{queue}*"):
            client.delete(key)
        client.close()
        for rt in (writer, *senders):
            rt.close()


@pytest.mark.slow
def test_two_worker_processes_with_one_stale_task_apply_its_result_once(pg_settings, tmp_path):
    """Two `interlock worker` processes start together over a task that was sent a minute ago and
    never claimed (its message was lost): both reconcilers want to send it again."""
    require_server("Redis", "127.0.0.1", 6379)
    settings = pg_settings.replace(workflows=RACE_WORKFLOWS, broker_url=REDIS_URL,
                                   queue=f"interlock_test_{uuid.uuid4().hex[:12]}")
    writer = Interlock(pg_settings.replace(workflows=RACE_WORKFLOWS))
    markers = tmp_path / "markers"
    markers.mkdir()
    runs = [writer.start("race_marked", {"marker_dir": str(markers)}) for _ in range(5)]
    with writer.db.write() as conn:
        conn.execute(update(tasks).values(sent_at=time.time() - 60))
    workers = [Process("worker", "--threads", "4", env=env_for(settings), log_path=tmp_path / f"worker{i}.log")
               for i in range(2)]
    try:
        for run in runs:
            wait_until(lambda r=run: writer.get(r.id).status == "succeeded", timeout=60,
                       message="the runs to finish")
    finally:
        for w in workers:
            w.stop()
    for run in runs:
        entries = history_of(writer, run.id)
        assert [h.kind for h in entries] == ["started", "step_started", "step_succeeded", "transition"], \
            [(h.kind, h.detail) for h in entries]
        executions = list(markers.glob(f"run-{run.id}-*"))
        assert len(executions) >= 1  # at least once; in practice once
        assert writer.get(run.id).data["by"] in {int(p.name.rsplit("-", 1)[1]) for p in executions}
    writer.close()


# -- a cancel racing a step's completion ---------------------------------------------------------

@pytest.mark.parametrize("first", ["step", "cancel"])
def test_a_cancel_racing_a_step_completion(pg_interlock, pg_settings, first):
    """The step's result and a cancel arrive together; whichever takes the run's lock first wins,
    and the other one changes nothing but the history's note of it."""
    rt = pg_interlock
    run = rt.start("test_pipeline", {"n": 2})
    [task] = task_of(rt, run.id)
    executor = StepExecutor(rt)
    contenders = {"step": lambda: executor.execute(task["id"]), "cancel": lambda: rt.cancel(run.id, "customer")}
    second = "cancel" if first == "step" else "step"

    with run_lock_held(pg_settings.database_url, run.id):
        a = Together(contenders[first])
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 1, timeout=10, message=first)
        b = Together(contenders[second])
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 2, timeout=10, message=second)
    assert [r[0] for r in a.join() + b.join()] == ["ok", "ok"]

    final = rt.get(run.id)
    entries = history_of(rt, run.id)
    kinds = [(h.kind, h.event) for h in entries]
    if first == "step":
        # The step moved the run on; the cancel then ended it in the next state, and its task.
        assert (final.status, final.state) == ("cancelled", "transforming")
        assert kinds == [("started", None), ("step_started", None), ("step_succeeded", "fetched"),
                         ("transition", "fetched"), ("cancelled", None)]
        assert entries[-1].source == "transforming"
    else:
        # Cancelled first: the step's result came too late and is recorded as ignored.
        assert (final.status, final.state) == ("cancelled", "fetching")
        assert kinds == [("started", None), ("cancelled", None), ("ignored", None)]
        assert entries[-1].detail["reason"] == "task is cancelled (attempt 0), result was for attempt 1"
    # Nothing is left to run or fire.
    assert [t["status"] for t in task_of(rt, run.id) if t["status"] in ("queued", "running")] == []
    with rt.db.read() as conn:
        assert conn.execute(text("SELECT open_tasks FROM runs WHERE id = :id"), {"id": run.id}).scalar() == 0


# -- a retry racing a timer ---------------------------------------------------------------------

@pytest.mark.parametrize("first", ["timer", "step"])
def test_a_retry_racing_a_timer(race_rt, pg_settings, tmp_path, first):
    """A failed run's timer came due while it waited for an operator: suspended, it does not fire.
    The retry re-arms it, and it fires at once, racing the retried step."""
    rt = race_rt
    flag = tmp_path / "broken"
    flag.touch()
    run = rt.start("race_courier", {"flag": str(flag), "give_up_at": time.time() + 3600})
    [task] = task_of(rt, run.id)
    StepExecutor(rt).execute(task["id"])
    assert rt.get(run.id).status == "failed"

    # The deadline passes while the run is failed: its timer is suspended and does not fire.
    with rt.db.write() as conn:
        conn.execute(update(timers).where(timers.c.run_id == run.id).values(due_at=time.time() - 1))
    assert Reconciler(rt).fire_due_timers() == 0
    assert rt.get(run.id).status == "failed"

    flag.unlink()
    rt.retry(run.id)
    [retried] = [t for t in task_of(rt, run.id) if t["status"] == "queued"]
    executor = StepExecutor(rt)
    with rt.db.read() as conn:
        timer_id = conn.execute(select(timers.c.id).where(timers.c.run_id == run.id)).scalar_one()
    # The reconciler's batches skip a locked run (a later pass fires it); one timer alone waits
    # for the lock, which is the race to test.
    contenders = {"timer": lambda: apply(rt, run.id, TimerFired(timer_id)),
                  "step": lambda: executor.execute(retried["id"])}
    second = "step" if first == "timer" else "timer"
    with run_lock_held(pg_settings.database_url, run.id):
        a = Together(contenders[first])
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 1, timeout=10, message=first)
        b = Together(contenders[second])
        wait_until(lambda: waiting_for_locks(pg_settings.database_url) >= 2, timeout=10, message=second)
    assert [r[0] for r in a.join() + b.join()] == ["ok", "ok"]

    final = rt.get(run.id)
    entries = history_of(rt, run.id)
    after_retry = [(h.kind, h.event) for h in entries[[h.kind for h in entries].index("retried") + 1:]]
    if first == "timer":
        assert (final.status, final.state) == ("failed", "gave_up")
        assert after_retry == [("timer_fired", "give_up"), ("transition", "give_up"), ("ignored", None)]
    else:
        assert (final.status, final.state) == ("succeeded", "delivered")
        # The timer, read as due before the step's transition cancelled it, does nothing.
        assert after_retry == [("step_started", None), ("step_succeeded", "deliver"), ("transition", "deliver")]
    with rt.db.read() as conn:
        statuses = conn.execute(select(timers.c.status).where(timers.c.run_id == run.id)).scalars().all()
    assert statuses == (["fired"] if first == "timer" else ["cancelled"])
    failed = [h for h in entries if h.kind == "step_failed"]
    assert len(failed) == 1 and failed[0].detail["final"]


# -- events from several API processes -------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _up(base) -> bool:
    try:
        return requests.get(f"{base}/api/workflows", timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_events_sent_at_once_through_several_api_processes(pg_interlock, pg_settings, tmp_path):
    """Two `interlock serve` instances with two gunicorn workers each: four processes take 48
    events for one run at the same moment. Each is applied once, in one order, or refused."""
    rt = pg_interlock
    servers, bases = [], []
    for i in range(2):
        port = _free_port()
        bases.append(f"http://127.0.0.1:{port}")
        servers.append(Process("serve", "--port", str(port), "--workers", "2", "--threads", "32",
                               env=env_for(pg_settings), log_path=tmp_path / f"serve{i}.log"))
    try:
        for base, server in zip(bases, servers, strict=True):
            wait_until(lambda b=base, s=server: _up(b) or s.proc.poll() is not None, timeout=60,
                       message="the API processes")
            assert server.proc.poll() is None, server.output()
        run = rt.start("test_counter", {"count": 0})
        events = ["close" if i % 16 == 15 else "add" for i in range(48)]
        barrier = threading.Barrier(len(events))
        sessions = [requests.Session() for _ in events]

        def send(i):
            barrier.wait(10)
            response = sessions[i].post(f"{bases[i % 2]}/api/runs/{run.id}/events",
                                        json={"event": events[i]}, timeout=30)
            return response.status_code, response.json()

        results = Together(*(lambda i=i: send(i) for i in range(len(events)))).join(60)
    finally:
        for server in servers:
            server.stop()
    assert all(outcome == "ok" for outcome, _ in results), results
    answers = [(events[i], code, body) for i, (_, (code, body)) in enumerate(results)]
    assert {code for _, code, _ in answers} <= {200, 409}
    accepted = [(event, body) for event, code, body in answers if code == 200]
    refused = [body for _, code, body in answers if code == 409]
    assert [event for event, _ in accepted].count("close") == 1
    # Every refusal came after the close: the run had ended, whatever the event.
    assert all(body["type"].endswith("run-not-active") for body in refused), refused

    final = rt.get(run.id)
    adds = sum(1 for event, _ in accepted if event == "add")
    assert (final.status, final.state, final.data) == ("succeeded", "closed", {"count": adds})
    entries = history_of(rt, run.id)
    assert [h.event for h in entries[1:]] == ["add"] * adds + ["close"]
    # Each accepted call was told the seq of its own transition: all distinct, none missing.
    assert sorted(body["last_seq"] for _, body in accepted) == [h.seq for h in entries[1:]]
    assert sorted(body["data"]["count"] for event, body in accepted if event == "add") == list(range(1, adds + 1))


# -- two reconcilers firing due timers ------------------------------------------------------------

def test_reconcilers_firing_due_timers_at_once_fire_each_timer_once(pg_interlock):
    """Every worker fires due timers in batches, taking runs no other worker has locked. A run a
    batch finds unlocked may have been fired by another batch a moment before: its timer must be
    seen as fired then, not as the armed row of the moment the batch's statement began.

    Three workers firing small batches of 300 due timers as fast as they can: without that care,
    some timers fire twice (the second time recorded as ignored, the run already ended)."""
    rt = pg_interlock
    due = time.time() - 1
    run_ids = [rt.start("test_at_timer", {"fire_at": due}).id for _ in range(300)]

    def fire_until_none_due():
        while fire_due_timers(rt, lambda t: TimerFired(t["id"], row=t), 2):
            pass

    Together(*[fire_until_none_due] * 3).join(120)

    doubles = []
    for run_id in run_ids:
        handled = [h for h in rt.history(run_id) if h.cause == "timer"]
        if [h.kind for h in handled] != ["timer_fired", "transition"]:
            doubles.append([(h.kind, h.detail and h.detail.get("reason")) for h in handled])
        assert rt.get(run_id).state == "fired"
    assert doubles == [], f"{len(doubles)} of {len(run_ids)} runs: {doubles[:3]}"
