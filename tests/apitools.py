"""Helpers shared by the REST API tests: a real server, table dumps, problem documents."""

from contextlib import contextmanager

from sqlalchemy import select

from api import create_app
from api.serving import ThreadedServer
from engine.models import metadata

PROBLEM = "application/problem+json"
TYPE = "urn:interlock:problem:"


def app_for(rt, **config):
    return create_app(interlock=rt, config={"SECRET_KEY": "test-secret", "STREAM_KEEPALIVE_SECONDS": 0.2,
                                            **config})


@contextmanager
def running(app):
    """``app`` behind werkzeug's threaded server on a free port; yields its base URL."""
    server = ThreadedServer(app, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@contextmanager
def serving(rt, **config):
    """``create_app`` on ``rt`` behind a real server; yields its base URL."""
    with running(app_for(rt, **config)) as base:
        yield base


def dump(rt) -> dict:
    """Every row of every table (runs, history, tasks, timers, ...), to show that a request changed nothing."""
    with rt.db.read() as conn:
        return {table.name: sorted((dict(row._mapping) for row in conn.execute(select(table))), key=repr)
                for table in metadata.sorted_tables}


def problem(response, status: int, kind: str) -> dict:
    """Assert ``response`` is an RFC 9457 problem document of this status and type; return it."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["Content-Type"] == PROBLEM, response.headers["Content-Type"]
    body = response.json()
    assert body["type"] == TYPE + kind, body
    assert body["status"] == status and body["title"], body
    return body
