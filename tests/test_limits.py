"""Concurrency limits, rate limits and priorities (engine/limits.py): never more attempts at once
than the limit, across worker processes; other keys go through; a killed worker's attempt runs
again under its slot; a rate holds; higher priorities are handed slots first."""

import threading
import time
import uuid

import pytest
from sqlalchemy import create_engine, select, text

from engine.explain import explain
from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.limit_workflows"


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    runtime = Interlock(settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def attempts(rt, run_ids) -> list[tuple[float, float, str]]:
    """(start, end, run id) of each step attempt, from the history."""
    out = []
    for run_id in run_ids:
        for h in rt.history(run_id):
            if h.kind in ("step_succeeded", "step_failed"):
                out.append((h.at - h.detail["duration"], h.at, run_id))
    return out


def most_at_once(spans) -> int:
    events = sorted([(start, 1) for start, _, _ in spans] + [(end, -1) for _, end, _ in spans])
    now = top = 0
    for _, step in events:
        now += step
        top = max(top, now)
    return top


def finish_all(rt, run_ids, timeout=30):
    wait_until(lambda: all(rt.get(r).status == "succeeded" for r in run_ids), timeout=timeout,
               message="every run to succeed")


def test_a_step_with_concurrency_2_runs_two_attempts_at_once_at_most(rt):
    with rt.worker(6):
        ids = [rt.start("lim_call", {"sleep": 0.25, "group": "g"}).id for _ in range(6)]
        finish_all(rt, ids)
    spans = attempts(rt, ids)
    assert len(spans) == 6 and most_at_once(spans) == 2


def test_a_per_key_limit_lets_other_keys_through(rt):
    with rt.worker(6):
        ids = {key: [rt.start("lim_account", {"account": key, "sleep": 0.25}).id for _ in range(3)]
               for key in ("A-1", "B-2")}
        finish_all(rt, [r for runs in ids.values() for r in runs])
    for key, runs in ids.items():
        assert most_at_once(attempts(rt, runs)) == 1, key
    assert most_at_once(attempts(rt, ids["A-1"] + ids["B-2"])) == 2


def test_a_waiting_step_holds_no_thread_and_explain_names_the_slot(rt):
    with rt.worker(2):
        first = rt.start("lim_account", {"account": "A-17", "sleep": 1.0}).id
        wait_until(lambda: explain(rt, first)["tasks"] and explain(rt, first)["tasks"][0]["status"] != "limited")
        waiting = [rt.start("lim_account", {"account": "A-17", "sleep": 0.01}).id for _ in range(3)]
        why = explain(rt, waiting[-1])
        [task] = why["tasks"]
        assert task["status"] == "limited" and task["limit"]["in_use"] == 1 and task["limit"]["ahead"] == 2
        assert why["waiting_for"].startswith("a slot of lim_account.call (A-17: 1 of 1 in use, 2 waiting ahead)")
        # Two worker threads, one busy: the three waiters take no thread, so another run still goes.
        other = rt.start("lim_call", {"sleep": 0.01}).id
        wait_until(lambda: rt.get(other).status == "succeeded", message="a run of another step meanwhile")
        assert rt.get(first).status == "running"
        finish_all(rt, [first, *waiting])


def test_a_higher_priority_run_is_handed_the_slot_before_older_lower_ones(rt):
    with rt.worker(4):
        # Long enough that the five starts and the priority change below come first on a loaded machine.
        blocker = rt.start("lim_account", {"account": "P", "sleep": 2.0}).id
        wait_until(lambda: explain(rt, blocker)["tasks"][0]["status"] != "limited")
        low = [rt.start("lim_account", {"account": "P", "sleep": 0.05}, priority=0).id for _ in range(3)]
        high = rt.start("lim_account", {"account": "P", "sleep": 0.05}, priority=5).id
        raised = rt.start("lim_account", {"account": "P", "sleep": 0.05}, priority=0).id
        assert rt.set_priority(raised, 9).priority == 9
        finish_all(rt, [blocker, *low, high, raised])
    order = [run_id for _, _, run_id in sorted(attempts(rt, [blocker, *low, high, raised]))]
    assert order[:3] == [blocker, raised, high]
    assert order[3:] == low  # oldest first among equals
    assert [h.kind for h in rt.history(raised)][:2] == ["started", "priority_changed"]


def test_a_failed_attempt_keeps_its_slot_through_its_retry_and_a_superseded_task_gives_it_back(rt):
    with rt.worker(4):
        flaky = rt.start("lim_call", {"sleep": 0.05, "fail_first": 1, "group": "g"}).id
        finish_all(rt, [flaky])
        assert [h.kind for h in rt.history(flaky) if h.kind in ("step_failed", "step_succeeded")] == [
            "step_failed", "step_succeeded"]
        slow = [rt.start("lim_call", {"sleep": 8, "group": "g"}).id for _ in range(2)]
        queued = rt.start("lim_call", {"sleep": 0.05, "group": "g"}).id
        wait_until(lambda: explain(rt, queued)["tasks"][0]["status"] == "limited", message="the third to wait")
        rt.cancel(slow[0], "no longer needed")  # its task is cancelled: the reconciler frees its slot
        wait_until(lambda: rt.get(queued).status == "succeeded", message="the waiter to get the freed slot")
        rt.cancel(slow[1])


def make_probe(url):
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE IF EXISTS lim_probe"))
        conn.execute(text("CREATE TABLE lim_probe (task_id varchar(32), attempt integer, pid integer, "
                          "started_at double precision, ended_at double precision)"))
    return engine


def probed_starts(engine) -> list[float]:
    with engine.connect() as conn:
        return sorted(conn.execute(text("SELECT started_at FROM lim_probe")).scalars())


def test_a_rate_limit_spaces_the_starts(rt, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'probe.db'}"
    monkeypatch.setenv("LIMIT_PROBE_URL", url)
    engine = make_probe(url)
    with rt.worker(4):
        ids = [rt.start("lim_rate", {}).id for _ in range(30)]
        finish_all(rt, ids)
    starts = probed_starts(engine)
    # 20 a second: 30 starts over 29 intervals of 50 ms. A start may come late (up to an interval
    # late it keeps its place, then the next is on time; a thread busy on a loaded machine adds
    # more): no second holds more than 20, and a few late ones.
    assert len(starts) == 30
    assert starts[-1] - starts[0] >= 29 * 0.05 * 0.95
    assert max(in_window(starts, 1.0)) <= 23
    engine.dispose()


def in_window(starts, seconds) -> list[int]:
    """For each start, how many starts fall in the window of ``seconds`` it opens."""
    return [sum(1 for t in starts[i:] if t < start + seconds) for i, start in enumerate(starts)]


# -- several worker processes on PostgreSQL, with Redis and with RabbitMQ -----------------------------

@pytest.fixture(params=["redis", "rabbitmq"])
def broker_settings(request, pg_settings):
    from tests.conftest import _delete_rabbit_queues, broker_url
    settings = pg_settings.replace(workflows=WORKFLOWS, broker_url=broker_url(request.param), lease_seconds=2.0,
                                   queue=f"interlock_test_{uuid.uuid4().hex[:12]}")
    yield settings
    if request.param == "rabbitmq":
        _delete_rabbit_queues(settings.queue)


@pytest.fixture
def probe_table(broker_settings):
    engine = make_probe(broker_settings.database_url)
    yield engine
    engine.dispose()


class Sampler(threading.Thread):
    """Counts, every few milliseconds, the attempts the probe table shows running."""

    def __init__(self, engine):
        super().__init__(daemon=True)
        self.engine, self.stop, self.seen = engine, threading.Event(), []

    def run(self):
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                self.seen.append(conn.execute(text("SELECT count(*) FROM lim_probe WHERE ended_at IS NULL")).scalar())
                conn.commit()
                time.sleep(0.005)


def workers(settings, tmp_path, n, env_extra):
    from tests.processes import Process, env_for

    env = env_for(settings, **env_extra)
    return [Process("worker", "--threads", "4", env=env, log_path=tmp_path / f"worker{i}.log") for i in range(n)]


def test_three_worker_processes_never_run_more_than_three_attempts_at_once(broker_settings, probe_table, tmp_path):
    rt = Interlock(broker_settings)
    procs = workers(broker_settings, tmp_path, 3, {"LIMIT_PROBE_URL": broker_settings.database_url})
    sampler = Sampler(probe_table)
    try:
        sampler.start()
        # Steps of a second: the hand-over of a slot (a commit, then a broker message) is well
        # under that even on a loaded machine, so three at once are seen, and never a fourth.
        ids = [rt.start("lim_three", {"sleep": 1.0, "group": "g"}).id for _ in range(12)]
        finish_all(rt, ids, timeout=60)
    finally:
        sampler.stop.set()
        for proc in procs:
            proc.stop()
        rt.close()
    sampler.join(5)
    assert max(sampler.seen) == 3, sorted(sampler.seen)[-5:]
    with probe_table.connect() as conn:
        spans = [(s, e, t) for t, s, e in conn.execute(text("SELECT task_id, started_at, ended_at FROM lim_probe"))]
        pids = set(conn.execute(text("SELECT DISTINCT pid FROM lim_probe")).scalars())
    assert len(spans) == 12 and most_at_once(spans) == 3
    assert len(pids) >= 2  # the work was shared


def test_a_killed_workers_attempt_runs_again_under_its_slot_and_the_others_follow(broker_settings, probe_table, tmp_path):
    rt = Interlock(broker_settings)
    env = {"LIMIT_PROBE_URL": broker_settings.database_url}
    first = workers(broker_settings, tmp_path, 1, env)[0]
    ids = [rt.start("lim_three", {"sleep": 2.0, "group": "g"}).id for _ in range(4)]
    try:
        with probe_table.connect() as conn:
            wait_until(lambda: conn.execute(text("SELECT count(*) FROM lim_probe")).scalar() == 3, timeout=20,
                       message="three attempts running in the first worker")
        first.kill()
        second = workers(broker_settings, tmp_path, 1, env)[0]
        try:
            finish_all(rt, ids, timeout=60)
        finally:
            second.stop()
    finally:
        first.stop()
        rt.close()
    with probe_table.connect() as conn:
        rows = conn.execute(text("SELECT task_id, started_at, ended_at FROM lim_probe")).all()
    finished = [(s, e, t) for t, s, e in rows if e is not None]
    assert most_at_once(finished) <= 3
    killed = [t for t, s, e in rows if e is None]
    assert len(killed) == 3  # the three killed attempts ran again: each task finished once more
    assert {t for t, s, e in rows if e is not None} >= set(killed)


def test_a_rate_of_20_a_second_holds_over_10_seconds_across_worker_processes(broker_settings, probe_table,
                                                                             tmp_path):
    """The runs are started before the workers are up: the backlog is spread out, not let through."""
    rt = Interlock(broker_settings)
    ids = [rt.start("lim_rate", {}).id for _ in range(230)]
    procs = workers(broker_settings, tmp_path, 2, {"LIMIT_PROBE_URL": broker_settings.database_url})
    try:
        finish_all(rt, ids, timeout=60)
    finally:
        for proc in procs:
            proc.stop()
        rt.close()
    starts = probed_starts(probe_table)
    assert len(starts) == 230
    busiest = max(in_window(starts, 10.0))
    # Never more than 5 % over 200 in any 10 s; a busy machine may start some late (a late start
    # takes a new place at the end), which only makes the rate lower.
    assert 170 <= busiest <= 210, busiest
    rate = (len(starts) - 1) / (starts[-1] - starts[0])
    assert 16 <= rate <= 21, rate


def test_a_high_priority_runs_step_starts_before_the_queued_low_priority_ones(broker_settings, tmp_path):
    """RabbitMQ orders the messages themselves (queues with x-max-priority); Redis has no
    priorities, so there the order is the database's: the waiters of a limit."""
    rabbitmq = broker_settings.broker_url.startswith("amqp")
    workflow, data = ("lim_plain", {"sleep": 0.05}) if rabbitmq else ("lim_account", {"account": "Q", "sleep": 0.05})
    rt = Interlock(broker_settings)
    try:
        low = [rt.start(workflow, data).id for _ in range(40)]
        high = rt.start(workflow, data, priority=5).id
        procs = workers(broker_settings, tmp_path, 1, {})
        try:
            finish_all(rt, [*low, high], timeout=60)
        finally:
            for proc in procs:
                proc.stop()
        order = [run_id for _, _, run_id in sorted(attempts(rt, [*low, high]))]
    finally:
        rt.close()
    # Without priorities it would be the last of 41. RabbitMQ hands the four threads of the worker
    # their first messages together; the limit lets one low-priority run through first, which took
    # the slot when it was started.
    assert order.index(high) < (4 if rabbitmq else 2), order.index(high)


def _limited_snapshot(rt, run_ids) -> dict:
    """Each run's state and tasks (step, status, whether it holds a slot), the waiters in order."""
    from engine.models import limit_slots, limit_waiters, tasks

    with rt.db.read() as conn:
        holding = set(conn.execute(select(limit_slots.c.task_id).where(limit_slots.c.task_id.is_not(None))).scalars())
        rows = conn.execute(select(tasks.c.id, tasks.c.run_id, tasks.c.name, tasks.c.status, tasks.c.slot)
                            .where(tasks.c.run_id.in_(run_ids)).order_by(tasks.c.id)).all()
        waiting = conn.execute(select(limit_waiters.c.task_id).order_by(limit_waiters.c.since,
                                                                          limit_waiters.c.task_id)).scalars().all()
    index = {run_id: i for i, run_id in enumerate(run_ids)}
    of_task = {row.id: (index[row.run_id], row.name) for row in rows}
    return {"runs": [(rt.get(r).state, rt.get(r).status) for r in run_ids],
            "tasks": sorted((of_task[r.id], r.status, r.id in holding, r.slot is not None) for r in rows),
            "waiters": [of_task[t] for t in waiting if t in of_task]}


def _drive_limited_batches(rt, group) -> dict:
    """Five runs of two limited steps (two slots each): their steps end in group commits of
    every step holding a slot at once, until all are done."""
    from engine.operations import StepDone, StepResult
    from engine.transitions import apply_many

    run_ids = [rt.start("lim_chain", {"group": group}).id for _ in range(5)]
    snapshots = [_limited_snapshot(rt, run_ids)]
    for _ in range(8):
        with rt.db.read() as conn:
            ready = conn.execute(text("SELECT id, run_id FROM tasks WHERE status = 'queued' AND slot IS NOT NULL "
                                      "ORDER BY id")).all()
        ready = [(task_id, run_id) for task_id, run_id in ready if run_id in run_ids]
        if not ready:
            break
        now = rt.clock.now()
        apply_many(rt, [(run_id, StepDone(task_id, 1, StepResult("next" if rt.get(run_id).state == "first"
                                                                 else "finished"), now, 0.0))
                        for task_id, run_id in ready])
        snapshots.append(_limited_snapshot(rt, run_ids))
    return snapshots


def test_slots_taken_and_given_back_by_the_batch_are_those_taken_one_task_at_a_time(pg_settings, monkeypatch):
    """PostgreSQL takes a group commit's slots, and gives them back, with a statement for the batch
    (limits.flush); the tasks holding slots, the waiters and their order are those of taking and
    giving back one task at a time."""
    from engine import limits

    rt = Interlock(pg_settings.replace(workflows=WORKFLOWS))
    try:
        batched = _drive_limited_batches(rt, "batched")
        monkeypatch.setattr(limits, "BATCHED", ())
        alone = _drive_limited_batches(rt, "alone")
    finally:
        rt.close()
    assert batched == alone
    assert len(batched) >= 5 and batched[-1]["runs"] == [("done", "succeeded")] * 5
    assert batched[0]["waiters"] == [(2, "call_first"), (3, "call_first"), (4, "call_first")]


def test_a_group_commit_that_gives_back_slots_and_makes_new_waiters_hands_them_over(rt):
    """Two runs' second steps end in the batch in which two others enter theirs: the slots go
    to the new waiters once their rows are written, and no task is left waiting with no waiter."""
    snapshots = _drive_limited_batches(rt, "handed")
    assert snapshots[-1]["runs"] == [("done", "succeeded")] * 5
    for snapshot in snapshots:
        waiting = sorted(task for task, status, _, _ in snapshot["tasks"] if status == "limited")
        assert waiting == sorted(snapshot["waiters"])


def test_a_queue_declared_without_priorities_is_a_clear_error_at_worker_start(pg_settings):
    import pika

    from engine.errors import ConfigurationError
    from tests.conftest import _delete_rabbit_queues, broker_url

    settings = pg_settings.replace(workflows=WORKFLOWS, broker_url=broker_url("rabbitmq"),
                                   queue=f"interlock_test_{uuid.uuid4().hex[:12]}")
    connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
    connection.channel().queue_declare(settings.queue, durable=True)  # as an engine without priorities did
    connection.close()
    rt = Interlock(settings)
    try:
        with pytest.raises(ConfigurationError, match="x-max-priority"):
            rt.worker(1).start()
        assert rt.worker_id is None  # nothing registered
    finally:
        rt.close()
        _delete_rabbit_queues(settings.queue)
    assert rt_works_without_priorities(settings)


def test_a_message_sent_again_after_waiting_goes_up_a_level_per_minute_waited(pg_settings):
    import pika

    from engine.broker import broker_level
    from engine.models import tasks
    from engine.reconciler import Reconciler
    from tests.conftest import _delete_rabbit_queues, broker_url

    settings = pg_settings.replace(workflows=WORKFLOWS, broker_url=broker_url("rabbitmq"),
                                   queue=f"interlock_test_{uuid.uuid4().hex[:12]}")
    rt = Interlock(settings)
    try:
        run = rt.start("lim_plain", {"sleep": 0.01}, priority=1)
        long_ago = rt.clock.now() - 600  # ten minutes in the queue, unclaimed: its message may be lost
        with rt.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.run_id == run.id).values(available_at=long_ago, sent_at=long_ago))
        assert Reconciler(rt).send_outbox() == 1
        connection = pika.BlockingConnection(pika.URLParameters(settings.broker_url))
        channel = connection.channel()
        levels = []
        while (got := channel.basic_get(settings.queue, auto_ack=True))[0] is not None:
            levels.append(got[1].priority)
        connection.close()
    finally:
        rt.close()
        _delete_rabbit_queues(settings.queue)
    # The copy is delivered first, and a twin that arrives later is dropped unrun (it claims first).
    assert levels == [broker_level(11, 10), broker_level(1, 10)] == [9, 6]


def rt_works_without_priorities(settings) -> bool:
    """INTERLOCK_BROKER_PRIORITIES=0 declares plain queues, as before."""
    rt = Interlock(settings.replace(broker_priorities=0))
    try:
        with rt.worker(2):
            run = rt.start("lim_plain", {"sleep": 0.01})
            finish_all(rt, [run.id])
        return True
    finally:
        rt.close()


def test_the_api_and_the_cli_set_a_priority_and_list_the_limits(rt):
    from api import create_app

    client = create_app(interlock=rt).test_client()
    made = client.post("/api/workflows/lim_account/runs", json={"data": {"account": "Z", "sleep": 0.01}, "priority": 3})
    assert made.status_code == 201 and made.json["priority"] == 3
    run_id = made.json["id"]
    changed = client.post(f"/api/runs/{run_id}/priority", json={"priority": -2})
    assert changed.status_code == 200 and changed.json["priority"] == -2 and rt.get(run_id).priority == -2
    assert client.post(f"/api/runs/{run_id}/priority", json={"priority": 5000}).status_code == 422
    assert client.post(f"/api/runs/{run_id}/priority", json={"priority": "high"}).status_code == 422
    assert client.post("/api/runs/" + "0" * 32 + "/priority", json={"priority": 1}).status_code == 404
    second = rt.start("lim_account", {"account": "Z", "sleep": 0.01}).id  # waits: Z's one slot is taken
    listed = client.get("/api/limits", query_string={"name": "lim_account.call"}).json["limits"]
    assert listed == [{"kind": "step", "name": "lim_account.call", "key": "Z", "slots": 1, "in_use": 1, "waiting": 1}]
    rt.cancel(second)
