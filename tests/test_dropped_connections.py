"""Transitions when PostgreSQL drops the engine's connections: retried once on a fresh one."""

from sqlalchemy import create_engine, text


def _drop_connections(url) -> int:
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
        )).scalar()
    admin.dispose()
    return killed


def test_a_transition_on_a_dropped_connection_is_retried_on_a_fresh_one(pg_interlock):
    run = pg_interlock.start("test_approval")
    assert _drop_connections(pg_interlock.settings.database_url) >= 1  # the pooled write connection
    moved = pg_interlock.send(run.id, "approve", {"by": "ops"})
    assert moved.state == "approved" and moved.data["by"] == "ops"
    assert [e.kind for e in pg_interlock.history(run.id)][-1] == "transition"

