"""The API when PostgreSQL drops its connections: a 503 problem to retry, then service as usual."""

from api import create_app

from .conftest import drop_engine_connections


def test_a_dropped_database_connection_is_a_503_to_retry(pg_interlock):
    app = create_app(interlock=pg_interlock)
    client = app.test_client()
    run = pg_interlock.start("test_pipeline")
    assert client.get(f"/api/runs/{run.id}").status_code == 200  # the pool now holds a connection

    assert drop_engine_connections(pg_interlock.settings.database_url) >= 1

    lost = client.get(f"/api/runs/{run.id}")
    assert lost.status_code == 503
    assert lost.headers["Retry-After"] == "1"
    assert lost.json["type"] == "urn:interlock:problem:database-unavailable"
    again = client.get(f"/api/runs/{run.id}")
    assert again.status_code == 200 and again.json["id"] == run.id
