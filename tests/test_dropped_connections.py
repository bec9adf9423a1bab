"""Transitions when PostgreSQL drops the engine's connections: retried once on a fresh one."""

from .conftest import drop_engine_connections


def test_a_transition_on_a_dropped_connection_is_retried_on_a_fresh_one(pg_interlock):
    run = pg_interlock.start("test_approval")
    assert drop_engine_connections(pg_interlock.settings.database_url) >= 1  # the pooled write connection
    moved = pg_interlock.send(run.id, "approve", {"by": "ops"})
    assert moved.state == "approved"
    assert [e.data for e in pg_interlock.history(run.id) if e.kind == "transition"] == [{"by": "ops"}]
    assert [e.kind for e in pg_interlock.history(run.id)][-1] == "transition"
