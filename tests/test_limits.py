"""Concurrency limits, rate limits and priorities (engine/limits.py): never more attempts at once
than the limit, across worker processes; other keys go through; a killed worker's attempt runs
again under its slot; a rate holds; higher priorities are handed slots first."""

import threading
import time

import pytest
from sqlalchemy import create_engine, text

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
        blocker = rt.start("lim_account", {"account": "P", "sleep": 0.6}).id
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
        slow = [rt.start("lim_call", {"sleep": 5, "group": "g"}).id for _ in range(2)]
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
    from tests.conftest import broker_url
    return pg_settings.replace(workflows=WORKFLOWS, broker_url=broker_url(request.param), lease_seconds=2.0)


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
