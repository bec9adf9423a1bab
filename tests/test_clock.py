"""One clock for every durable time: the database server's, as each process measures its offset to it."""

import logging
import time

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import create_engine, text

from engine.clock import Clock
from engine.runtime import Interlock

SERVER_NOW = text("SELECT extract(epoch from clock_timestamp())")


@pytest.fixture
def pg_engine(pg_database_url):
    engine = create_engine(pg_database_url)
    yield engine
    engine.dispose()


@pytest.mark.parametrize("shift", [-8.0, 0.0, 100.0])
def test_offset_to_postgresql_is_measured_within_a_few_milliseconds(pg_engine, shift):
    clock = Clock(local=lambda: time.time() + shift)
    offset = clock.measure(pg_engine)
    assert offset == pytest.approx(-shift, abs=0.005)
    assert clock.error < 0.005
    with pg_engine.connect() as conn:
        before = clock.now()
        server = float(conn.execute(SERVER_NOW).scalar())
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
    assert "8.0" in warnings[0] and "ahead of" in warnings[0] and "127.0.0.1" in warnings[0]
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

