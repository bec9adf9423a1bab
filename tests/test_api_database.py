"""The API when PostgreSQL drops its connections: a 503 problem to retry, then service as usual."""

from sqlalchemy import create_engine, text

from api import create_app


def test_a_dropped_database_connection_is_a_503_to_retry(pg_interlock):
    app = create_app(interlock=pg_interlock)
    client = app.test_client()
    run = pg_interlock.start("test_pipeline")
    assert client.get(f"/api/runs/{run.id}").status_code == 200  # the pool now holds a connection

    admin = create_engine(pg_interlock.settings.database_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(text(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() AND application_name = ''"
        )).scalar()
    admin.dispose()
    assert killed >= 1

    lost = client.get(f"/api/runs/{run.id}")
    assert lost.status_code == 503
    assert lost.headers["Retry-After"] == "1"
    assert lost.json["type"] == "urn:interlock:problem:database-unavailable"
    again = client.get(f"/api/runs/{run.id}")
    assert again.status_code == 200 and again.json["id"] == run.id
