"""No step runs twice without a fault (issue 17): a backlog longer than the re-send interval
runs every step once; each rule that decides whether a task is sent again, and which copy's
result counts, does what it says."""

import time
from collections import Counter

import pytest
from sqlalchemy import select, update

from engine.models import brokers, history, tasks, workers
from engine.operations import LEASE_HELD_ELSEWHERE
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from engine.workers import Presence
from tests import workflows as tw

from .conftest import wait_until
from .processes import Process, env_for


def _task(rt, run_id):
    with rt.db.read() as conn:
        return dict(conn.execute(select(tasks).where(tasks.c.run_id == run_id, tasks.c.status.in_(
            ("queued", "running")))).mappings().one())


def _set_task(rt, task_id, **values):
    with rt.db.write() as conn:
        conn.execute(update(tasks).where(tasks.c.id == task_id).values(**values))


def _ignored(rt, run_id):
    return [h for h in rt.history(run_id) if h.kind == "ignored"]


# -- the backlog, with real worker processes ----------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgres-redis", "postgres-rabbitmq"])
def test_a_backlog_longer_than_the_resend_interval_runs_every_step_once(settings, tmp_path):
    """2 workers x 4 threads, 60 runs of three 1 s steps: 60 steps queued for 8 threads, so
    the last wait ~7 s in the queue, more than three times the 2 s re-send interval."""
    settings = settings.replace(workflows="tests.process_workflows", resend_after=2.0, poll_interval=0.1)
    markers = tmp_path / "executions"
    markers.mkdir()
    rt = Interlock(settings)
    runs = [rt.start("slow3", {"marker_dir": str(markers), "seconds": 1.0}).id for _ in range(60)]
    env = env_for(settings, INTERLOCK_EAGER_THREADS="0")
    started = [Process("worker", "--threads", "4", env=env, log_path=tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        def finished():
            with rt.db.read() as conn:
                from engine.models import runs as runs_table
                return conn.execute(select(runs_table.c.status).where(runs_table.c.status.in_(
                    ("running", "waiting")))).first() is None
        wait_until(finished, timeout=90, interval=0.5, message="every run to finish")
    finally:
        for worker in started:
            worker.stop()
    executions = Counter(path.name.rsplit("-", 2)[0] for path in markers.iterdir())
    assert len(executions) == 180
    assert [key for key, n in executions.items() if n > 1] == []
    assert {rt.get(run_id).status for run_id in runs} == {"succeeded"}
    with rt.db.read() as conn:
        waited = conn.execute(select(history.c.at).where(history.c.kind == "step_started")).scalars().all()
        assert conn.execute(select(history).where(history.c.kind == "ignored")).first() is None
    # The backlog really was longer than the re-send interval.
    assert max(waited) - min(waited) > 3 * settings.resend_after
    rt.close()


# -- each rule, on one engine ----------------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgres"])
def rt(request):
    return request.getfixturevalue(f"{'pg' if request.param == 'postgres' else 'sqlite'}_interlock")


def test_the_fence_prefers_the_delivery_that_holds_the_lease(rt):
    """Two deliveries of one task: the first runs lazily, paused before it claimed; the
    second claims and runs. The claimed one's result counts, whichever finishes first."""
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    paused = rt.executor.load(task_id)
    rt.executor._release(task_id)
    other = Interlock(rt.settings)
    try:
        _set_task(rt, task_id, sends=2)  # re-sent: the second copy claims before it runs
        holder = other.executor.load(task_id)
        assert holder is not None and _task(rt, run.id)["status"] == "running"
        rt.executor.run(paused)  # the paused one finishes first: ignored
        assert [h.detail["reason"] for h in _ignored(rt, run.id)] == [LEASE_HELD_ELSEWHERE]
        assert rt.get(run.id).state == "fetching"
        other.executor.run(holder)
    finally:
        other.close()
    assert rt.get(run.id).state == "transforming"
    assert [h.event for h in rt.history(run.id) if h.kind == "transition"] == ["fetched"]


def test_two_copies_of_a_re_sent_task_run_it_once(rt):
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    _set_task(rt, task_id, sends=2, sent_at=time.time())
    other = Interlock(rt.settings)
    try:
        first = rt.executor.load(task_id)
        assert other.executor.load(task_id) is None  # found claimed: dropped unrun
        rt.executor.run(first)
    finally:
        other.close()
    assert tw.CALLS[run.id] == 1
    assert _ignored(rt, run.id) == []


def test_a_retry_attempt_claims_so_a_copy_of_the_failed_attempts_message_does_not_run_it_again(rt, tmp_path):
    # The failed attempt's message can come back (its acknowledgement lost with the broker
    # connection) beside the retry's own: of the two, one runs the retry.
    flag = tmp_path / "jammed"
    flag.write_text("")
    run = rt.start("test_flaky", {"flag": str(flag)})
    rt.executor.run(rt.executor.load(_task(rt, run.id)["id"]))  # get_ready
    task_id = _task(rt, run.id)["id"]
    rt.executor.run(rt.executor.load(task_id))  # work, attempt 1: fails, a retry is queued
    flag.unlink()
    _set_task(rt, task_id, sends=1, sent_at=time.time(), available_at=time.time())
    other = Interlock(rt.settings)
    try:
        retry = rt.executor.load(task_id)
        assert _task(rt, run.id)["status"] == "running"  # claimed before it runs
        assert other.executor.load(task_id) is None  # the twin finds it claimed: dropped unrun
        rt.executor.run(retry)
    finally:
        other.close()
    assert rt.get(run.id).state == "done"
    assert [(h.kind, h.detail.get("attempt")) for h in rt.history(run.id) if h.kind.startswith("step_")][-3:] == [
        ("step_failed", 1), ("step_started", 2), ("step_succeeded", 2)]
    assert _ignored(rt, run.id) == []


def test_a_task_waiting_longer_than_half_the_interval_claims_before_it_runs(rt):
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    waited = time.time() - rt.settings.resend_after
    _set_task(rt, task_id, sends=1, sent_at=waited, available_at=waited)
    loaded = rt.executor.load(task_id)
    assert _task(rt, run.id)["status"] == "running"
    rt.executor.run(loaded)
    assert rt.get(run.id).state == "transforming"


def _reconciler(rt):
    rt.dispatcher.delivers = True
    return Reconciler(rt), rt.broker.queues[rt.settings.queue]


def test_a_task_behind_a_backlog_is_not_sent_again_while_its_sender_lives(sqlite_interlock):
    rt = sqlite_interlock
    presence = Presence(rt)
    presence.register()
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    reconciler, queue = _reconciler(rt)
    now = time.time()
    rt.settings = rt.settings.replace(resend_after=300.0)  # the default safety interval
    _set_task(rt, task_id, sent_at=now - 6.0, available_at=now - 6.0, sent_by=presence.id, sends=1)
    assert reconciler.send_outbox() == 0 and queue.qsize() == 0


def test_a_task_whose_sender_died_is_sent_again(sqlite_interlock):
    rt = sqlite_interlock
    presence = Presence(rt)
    presence.register()
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    reconciler, queue = _reconciler(rt)
    now = time.time()
    _set_task(rt, task_id, sent_at=now - 1.0, available_at=now - 1.0, sent_by=presence.id, sends=1)
    assert reconciler.send_outbox() == 0  # its sender beats
    with rt.db.write() as conn:
        conn.execute(update(workers).values(heartbeat_at=now - 2 * rt.settings.lease_seconds - 1))
    assert reconciler.send_outbox() == 1 and queue.qsize() == 1
    task = _task(rt, run.id)
    assert task["sends"] == 2 and task["sent_by"] is None
    # A worker that stopped cleanly sent everything first: its tasks are left alone.
    _set_task(rt, task_id, sent_at=now - 1.0, sent_by=presence.id)
    presence.stopped(clean=True)
    assert reconciler.send_outbox() == 0


def test_a_failed_send_is_sent_again_at_once(sqlite_interlock):
    rt = sqlite_interlock
    rt.dispatcher.delivers = True
    reconciler, queue = _reconciler(rt)
    sent = rt.dispatcher.send
    rt.dispatcher.send = lambda *args: False  # the broker refuses the publish after the commit
    try:
        run = rt.start("test_pipeline")
    finally:
        rt.dispatcher.send = sent
    task = _task(rt, run.id)
    assert task["sent_at"] is None and task["sends"] == 0
    assert reconciler.send_outbox() == 1 and queue.qsize() == 1
    assert _task(rt, run.id)["sends"] == 1  # a first send: it may run lazily


def test_a_restarted_broker_has_its_tasks_sent_again_once(sqlite_interlock):
    rt = sqlite_interlock
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    now = time.time()
    _set_task(rt, task_id, sent_at=now - 5.0, sends=1)
    servers = iter([("server-a", 100.0), ("server-b", 2.0), ("server-b", 2.0)])  # (id, uptime)
    rt.dispatcher.server = lambda: next(servers)
    first, second = Presence(rt), Presence(rt)
    assert first.check_broker() == 0  # the first server seen is recorded
    assert first.check_broker() == 1  # a new one: the task sent before it started is unsent
    assert second.check_broker() == 0  # already recorded by the first: nothing to do twice
    assert _task(rt, run.id)["sent_at"] is None
    with rt.db.read() as conn:
        assert conn.execute(select(brokers.c.server_id)).scalar() == "server-b"


def test_an_early_delivery_is_sent_again_with_its_delay(sqlite_interlock):
    rt = sqlite_interlock
    reconciler, queue = _reconciler(rt)
    run = rt.start("test_pipeline")
    task_id = _task(rt, run.id)["id"]
    _set_task(rt, task_id, available_at=time.time() + 10.0, sent_at=time.time(), sends=1)
    assert rt.executor.load(task_id) is None
    assert tw.CALLS.get(run.id, 0) == 0
    [message] = _delayed(rt)
    assert list(message.args) == [task_id]
    assert 8_000 < message.options["eta"] - time.time() * 1000 <= 10_000
    assert _task(rt, run.id)["sends"] == 2  # so both copies claim before they run


def _delayed(rt):
    from dramatiq import Message

    queue = rt.broker.queues[f"{rt.settings.queue}.DQ"]
    return [Message.decode(queue.get_nowait()) for _ in range(queue.qsize())]


def test_a_worker_beats_while_it_runs_and_is_marked_stopped_when_it_stops(sqlite_interlock):
    rt = sqlite_interlock

    def row():
        with rt.db.read() as conn:
            return conn.execute(select(workers)).mappings().one()

    with rt.worker(2):
        registered = row()
        assert registered["stopped_at"] is None and registered["workflows"]["test_pipeline"] == [1]
        wait_until(lambda: row()["heartbeat_at"] > registered["heartbeat_at"], timeout=5, message="a heartbeat")
        run = rt.start("test_pipeline")
        with rt.db.read() as conn:  # committed as sent by this worker
            senders = set(conn.execute(select(tasks.c.sent_by).where(tasks.c.run_id == run.id)).scalars())
        assert senders == {registered["id"]}
    assert row()["stopped_at"] is not None
