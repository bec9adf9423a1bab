"""Fixtures parametrized by backend: SQLite + in-memory broker, PostgreSQL + Redis, PostgreSQL + RabbitMQ.

A backend whose server is down is skipped, except when CI is set: then the test fails.
"""

import os
import socket
import time
import uuid

import pytest
from sqlalchemy import create_engine, text

from engine.config import Settings
from engine.db import Database
from engine.models import metadata
from engine.runtime import Interlock

CI = bool(os.environ.get("CI"))
PG_ADMIN_URL = os.environ.get("INTERLOCK_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("INTERLOCK_TEST_REDIS", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("INTERLOCK_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
TEST_WORKFLOWS = "workflows,tests.workflows"

BACKENDS = {
    "sqlite-memory": ("sqlite", "memory"),
    "postgres-redis": ("postgresql", "redis"),
    "postgres-rabbitmq": ("postgresql", "rabbitmq"),
}


def _reachable(host, port) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def require_server(name, host, port):
    if _reachable(host, port):
        return
    if CI:
        pytest.fail(f"{name} is not reachable on {host}:{port} and CI is set")
    pytest.skip(f"{name} is not running on {host}:{port}")


def wait_until(predicate, timeout=10.0, interval=0.02, message="condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def pg_database_url():
    """A PostgreSQL database for this test session, migrated to head once."""
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"interlock_test_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    Database(url).upgrade()
    yield url
    with admin.connect() as conn:
        conn.execute(text(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
            "AND pid <> pg_backend_pid()"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def drop_engine_connections(url) -> int:
    """Have PostgreSQL terminate the engine's pooled connections (not psql's or this one)."""
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
        )).scalar()
    admin.dispose()
    return killed


def empty_tables(url):
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in reversed(metadata.sorted_tables):
            conn.execute(table.delete())
    engine.dispose()


def database_url(kind, request, tmp_path):
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'interlock.db'}"
        Database(url).upgrade()
        return url
    url = request.getfixturevalue("pg_database_url")
    empty_tables(url)
    return url


def broker_url(kind):
    if kind == "memory":
        return "memory://"
    if kind == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        return REDIS_URL
    require_server("RabbitMQ", "127.0.0.1", 5672)
    return AMQP_URL


@pytest.fixture(params=list(BACKENDS))
def backend(request):
    return request.param


@pytest.fixture
def settings(backend, request, tmp_path):
    db_kind, broker_kind = BACKENDS[backend]
    return Settings(database_url=database_url(db_kind, request, tmp_path),
                    broker_url=broker_url(broker_kind), workflows=TEST_WORKFLOWS,
                    queue=f"interlock_test_{uuid.uuid4().hex[:12]}", lease_seconds=3.0,
                    resend_after=2.0, poll_interval=0.05)


@pytest.fixture
def sqlite_settings(tmp_path):
    url = f"sqlite:///{tmp_path / 'interlock.db'}"
    Database(url).upgrade()
    return Settings(database_url=url, broker_url="memory://", workflows=TEST_WORKFLOWS,
                    queue="interlock_test", lease_seconds=3.0, resend_after=2.0, poll_interval=0.05)


@pytest.fixture
def pg_settings(request):
    url = request.getfixturevalue("pg_database_url")
    empty_tables(url)
    return Settings(database_url=url, broker_url="memory://", workflows=TEST_WORKFLOWS,
                    queue="interlock_test", lease_seconds=3.0, resend_after=2.0, poll_interval=0.05)


def _runtime(settings):
    rt = Interlock(settings)
    yield rt
    rt.close()
    if settings.broker_url.startswith("amqp"):
        _delete_rabbit_queues(settings.queue)


def _delete_rabbit_queues(queue):
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = conn.channel()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        channel.queue_delete(name)
    conn.close()


@pytest.fixture
def interlock(settings):
    """An engine on the parametrized backend (no worker running: call ``interlock.worker()``)."""
    yield from _runtime(settings)


@pytest.fixture
def sqlite_interlock(sqlite_settings):
    yield from _runtime(sqlite_settings)


@pytest.fixture
def pg_interlock(pg_settings):
    yield from _runtime(pg_settings)
