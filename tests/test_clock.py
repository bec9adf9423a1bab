"""One clock for every durable time: the database server's, as each process measures its offset to it."""

import logging
import re
import socket
import time

import pytest
import requests
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, func, select, text

from engine.clock import Clock
from engine.models import tasks, timers
from engine.runtime import Interlock

from .conftest import _delete_rabbit_queues, require_server, wait_until
from .processes import Process, env_for
from .test_migrations import MARIADB_ADMIN_URL

SERVER_NOW = text("SELECT extract(epoch from clock_timestamp())")


@pytest.fixture
def pg_engine(pg_database_url):
    engine = create_engine(pg_database_url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "mariadb"])
def server_engine(request):
    """An engine on the server and the statement that reads its clock."""
    if request.param == "postgresql":
        yield request.getfixturevalue("pg_engine"), SERVER_NOW
        return
    require_server("MariaDB", "127.0.0.1", 3306)
    engine = create_engine(MARIADB_ADMIN_URL)
    yield engine, text("SELECT UNIX_TIMESTAMP(NOW(6))")
    engine.dispose()


@pytest.mark.parametrize("shift", [-8.0, 0.0, 100.0])
def test_offset_to_the_server_is_measured_within_a_few_milliseconds(server_engine, shift):
    engine, server_now = server_engine
    clock = Clock(local=lambda: time.time() + shift)
    offset = clock.measure(engine)
    assert offset == pytest.approx(-shift, abs=0.005)
    assert clock.error < 0.005
    with engine.connect() as conn:
        before = clock.now()
        server = float(conn.execute(server_now).scalar())
        after = clock.now()
    assert before - 0.005 <= server <= after + 0.005


def test_sqlite_keeps_the_local_clock(sqlite_interlock):
    clock = Clock(local=lambda: time.time() + 100.0)
    with sqlite_interlock.db.read() as conn:
        assert clock.measure(conn) == 0.0
    assert clock.now() == pytest.approx(time.time() + 100.0, abs=0.01)
    assert sqlite_interlock.clock.offset == 0.0


def test_a_skewed_clock_is_reported_once_in_the_log_and_always_in_the_gauge(pg_engine, caplog):
    clock = Clock(local=lambda: time.time() + 8.0, warn_over=1.0)
    with caplog.at_level(logging.WARNING, logger="engine.clock"):
        clock.measure(pg_engine)
        clock.measure(pg_engine)
    warnings = [r.getMessage() for r in caplog.records if "CLOCK SKEW" in r.getMessage()]
    assert len(warnings) == 1
    ahead = re.search(r"is ([\d.]+) s ahead of the database server's \(127\.0\.0\.1\)", warnings[0])
    assert ahead and float(ahead.group(1)) == pytest.approx(8.0, abs=0.005), warnings[0]
    assert REGISTRY.get_sample_value("interlock_clock_offset_seconds") == pytest.approx(-8.0, abs=0.005)

    caplog.clear()
    in_sync = Clock(warn_over=1.0)
    with caplog.at_level(logging.WARNING, logger="engine.clock"):
        in_sync.measure(pg_engine)
    assert not [r for r in caplog.records if "CLOCK SKEW" in r.getMessage()]
    assert REGISTRY.get_sample_value("interlock_clock_offset_seconds") == pytest.approx(0.0, abs=0.005)


def test_runtime_times_are_the_database_servers(pg_settings, monkeypatch):
    """A runtime on a host 8 s ahead writes created_at and timer due times by the server's clock."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 8.0)
    rt = Interlock(pg_settings)
    try:
        assert rt.clock.offset == pytest.approx(-8.0, abs=0.005)
        with rt.db.read() as conn:
            server = float(conn.execute(SERVER_NOW).scalar())
        run = rt.start("test_short_timer")
        assert run.created_at == pytest.approx(server, abs=0.5)
        with rt.db.read() as conn:
            due = conn.execute(text("SELECT due_at FROM timers WHERE run_id = :r"), {"r": run.id}).scalar()
        assert due == pytest.approx(run.created_at + 0.3, abs=0.001)
        # The id's time part is the same instant as created_at, so id ranges still match time ranges.
        assert int(run.id[:12], 16) == int(run.created_at * 1000)
    finally:
        rt.close()


# -- two worker processes, one with its clock shifted --------------------------------------

SHIFT = 8.0
TIMER_LATENESS = 1.0  # poll interval (0.05 s) + a batch + a busy moment
START_LATENESS = 1.0  # a step starts this soon after its task is available


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_now(rt) -> float:
    with rt.db.read() as conn:
        return float(conn.execute(SERVER_NOW).scalar())


def _available_at(rt, history, started) -> float:
    """When the task of a step_started entry became available, by the history (the database's clock)."""
    task, attempt = started.detail["task"], started.detail["attempt"]
    if attempt == 1:
        with rt.db.read() as conn:
            entry_seq = conn.execute(select(tasks.c.entry_seq).where(tasks.c.id == task)).scalar()
        return next(h.at for h in history if h.seq == entry_seq)
    failed = next(h for h in history if h.kind == "step_failed" and h.detail["task"] == task
                  and h.detail["attempt"] == attempt - 1)
    return failed.at + failed.detail["retry_in"]


@pytest.mark.slow
@pytest.mark.serial  # its bounds on lateness are a second: alone, not beside other tests
# Each direction once, each broker once: the clock is the database's whatever the broker.
@pytest.mark.parametrize("backend, shift", [("postgres-redis", SHIFT), ("postgres-rabbitmq", -SHIFT)],
                         ids=["ahead-postgres-redis", "behind-postgres-rabbitmq"])
def test_a_worker_with_its_clock_shifted_keeps_every_time_by_the_database_clock(settings, tmp_path, shift):
    """The worker whose times are at stake runs alone first: it arms the ``after`` timers and
    holds the leases of long steps; then the other starts and judges them (by the database's
    clock: a worker ahead would fire timers early and take leases, one behind would write
    timers and leases others find due, and refuse tasks it found not yet due)."""
    settings = settings.replace(workflows="tests.clock_workflows")  # lease 3 s, re-send after 2 s
    env, metrics_port = env_for(settings), _free_port()

    def start_worker(name):
        if name == "normal":
            return Process("worker", "--threads", "8", env=env, log_path=tmp_path / "normal.log")
        return Process("worker", "--threads", "8", "--metrics-port", str(metrics_port),
                       env={**env, "SKEWED_CLOCK_SECONDS": str(shift)}, log_path=tmp_path / "skewed.log",
                       module="tests.skewed_worker")

    def wait_ready(worker):
        wait_until(lambda: "worker ready" in worker.output(), timeout=30, message="the worker to start")

    first_name, second_name = ("normal", "skewed") if shift > 0 else ("skewed", "normal")
    workers = {first_name: start_worker(first_name)}
    rt = Interlock(settings)
    try:
        wait_ready(workers[first_name])
        deadline = _server_now(rt) + 7.0
        courses = [rt.start("clock_course", {"deadline": deadline}) for _ in range(4)]
        longs = [rt.start("clock_long_step", {"seconds": 8.0}) for _ in range(3)]
        runs = courses + longs
        wait_until(lambda: _running_tasks(rt, longs) == len(longs), message="the long steps to be claimed")
        wait_until(lambda: all(rt.get(r.id).state == "cooling" for r in courses), message="the after timers")
        workers[second_name] = start_worker(second_name)
        wait_ready(workers[second_name])
        # Its start-up pass looked at the first worker's leases while they were live.
        assert _running_tasks(rt, longs) == len(longs), "the second worker took live leases"
        wait_until(lambda: all(rt.get(r.id).status not in ("running", "waiting") for r in runs), timeout=60,
                   message="every run to end")
        histories = {r.id: rt.history(r.id) for r in runs}
        finals = {r.id: rt.get(r.id) for r in runs}
        normal, skewed = workers["normal"], workers["skewed"]

        # No timer fires before its due time by the database's clock, nor much after it.
        with rt.db.read() as conn:
            fired = conn.execute(select(timers.c.run_id, timers.c.name, timers.c.due_at, timers.c.fired_at,
                                        timers.c.status)
                                 .where(timers.c.run_id.in_([r.id for r in courses]))).all()
        assert len(fired) == 2 * len(courses) and {t.status for t in fired} == {"fired"}, fired
        for timer in fired:
            assert timer.due_at <= timer.fired_at < timer.due_at + TIMER_LATENESS, timer
        for run in courses:
            assert finals[run.id].status == "succeeded", histories[run.id]
            due = {t.name: t.due_at for t in fired if t.run_id == run.id}
            assert due["deadline"] == deadline
            # The database server's own clock, read in the transaction that took each timer's event.
            assert due["cool_down"] <= finals[run.id].data["cooled_by_server_clock"]
            assert due["deadline"] <= finals[run.id].data["deadline_by_server_clock"]
            for entry in histories[run.id]:
                if entry.kind == "timer_fired":
                    assert 0 <= entry.detail["lag"] < TIMER_LATENESS and entry.at >= entry.detail["due_at"]

        # No live worker's lease is taken: every long step ran once, on the first worker, and succeeded.
        first_pid = workers[first_name].proc.pid
        for run in runs:
            lost = [h for h in histories[run.id] if h.kind == "step_failed" and h.detail.get("lost")]
            assert not lost, lost
        for run in longs:
            assert finals[run.id].status == "succeeded", histories[run.id]
            assert finals[run.id].data["worked_by"] == first_pid
            assert [h.detail["attempt"] for h in histories[run.id] if h.kind == "step_started"] == [1]

        # Every step starts as soon as its task is available, retries included; behind, the skewed
        # worker ran the first steps alone.
        for run in runs:
            history = histories[run.id]
            for started in (h for h in history if h.kind == "step_started"):
                lag = started.at - _available_at(rt, history, started)
                assert -START_LATENESS < lag < START_LATENESS, (started, lag)
        assert {finals[r.id].data["prepared_by"] for r in courses} == {first_pid}

        # The skewed worker says so, once, naming its host and the offset; the other says nothing.
        warnings = re.findall(r"WARNING .*CLOCK SKEW: the clock of host (\S+) is ([\d.]+) s (behind|ahead of)",
                              skewed.output())
        assert len(warnings) == 1, skewed.output()
        host, seconds, direction = warnings[0]
        assert host == socket.gethostname() and float(seconds) == pytest.approx(SHIFT, abs=0.05)
        assert direction == ("ahead of" if shift > 0 else "behind")
        assert "CLOCK SKEW" not in normal.output()
        metrics = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        offset = float(re.search(r"^interlock_clock_offset_seconds (\S+)$", metrics, re.M).group(1))
        assert offset == pytest.approx(-shift, abs=0.05)
    finally:
        for worker in workers.values():
            worker.stop()
        rt.close()
        if settings.broker_url.startswith("amqp"):
            _delete_rabbit_queues(settings.queue)


def _running_tasks(rt, runs) -> int:
    with rt.db.read() as conn:
        return conn.execute(select(func.count()).select_from(tasks).where(
            tasks.c.run_id.in_([r.id for r in runs]), tasks.c.status == "running")).scalar()
