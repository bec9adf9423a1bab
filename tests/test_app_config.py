"""``create_app`` from a config dict: INTERLOCK_* strings are read like environment variables."""

import pytest

from api import create_app
from engine.errors import ConfigurationError

from .apitools import PROBLEM
from .conftest import TEST_WORKFLOWS


@pytest.fixture
def app_from(sqlite_settings, monkeypatch):
    """``create_app`` on a dict config over the SQLite test database; closes what it made."""
    for name in ("MAX_BODY_BYTES", "POLL_INTERVAL", "WORKER_THREADS", "API_TOKENS"):
        monkeypatch.delenv(f"INTERLOCK_{name}", raising=False)
    made = []

    def build(**config):
        app = create_app({"INTERLOCK_DATABASE_URL": sqlite_settings.database_url,
                          "INTERLOCK_WORKFLOWS": TEST_WORKFLOWS, "SECRET_KEY": "x", **config})
        made.append(app)
        return app

    yield build
    for app in made:
        app.extensions["interlock"].close()


def test_string_values_in_a_config_dict_are_converted_like_environment_variables(app_from):
    app = app_from(INTERLOCK_MAX_BODY_BYTES="100", INTERLOCK_POLL_INTERVAL="0.5", INTERLOCK_WORKER_THREADS="3")
    client = app.test_client()
    over = client.post("/api/workflows/test_counter/runs", json={"data": {"x": "y" * 100}})
    assert over.status_code == 413 and over.content_type == PROBLEM and over.json["max_body_bytes"] == 100
    assert client.post("/api/workflows/test_counter/runs", json={}).status_code == 201
    settings = app.extensions["interlock"].settings
    assert (settings.max_body_bytes, settings.poll_interval, settings.worker_threads) == (100, 0.5, 3)


def test_a_config_dict_wins_over_the_environment_and_numbers_are_taken_too(app_from, monkeypatch):
    monkeypatch.setenv("INTERLOCK_MAX_BODY_BYTES", "50")
    assert app_from(INTERLOCK_MAX_BODY_BYTES=200).extensions["interlock"].settings.max_body_bytes == 200
    assert app_from(INTERLOCK_MAX_BODY_BYTES=None).extensions["interlock"].settings.max_body_bytes == 50


@pytest.mark.parametrize("key, value", [("INTERLOCK_MAX_BODY_BYTES", "lots"), ("INTERLOCK_MAX_BODY_BYTES", "1.5"),
                                        ("INTERLOCK_POLL_INTERVAL", "soon"), ("INTERLOCK_POLL_INTERVAL", "nan"),
                                        ("INTERLOCK_RESEND_AFTER", "inf"), ("INTERLOCK_LEASE_SECONDS", "-1"),
                                        ("INTERLOCK_WORKER_THREADS", "-2"), ("INTERLOCK_BATCH_SHARE", "0"),
                                        ("INTERLOCK_BATCH_SHARE", "1.5"), ("INTERLOCK_BATCH_SHARE", "half")])
def test_a_bad_value_is_a_configuration_error_when_the_app_is_made(app_from, key, value):
    with pytest.raises(ConfigurationError, match=key):
        app_from(**{key: value})


def test_an_unknown_interlock_key_is_a_configuration_error(app_from):
    with pytest.raises(ConfigurationError, match="INTERLOCK_POLL_INTERVALL"):
        app_from(INTERLOCK_POLL_INTERVALL="1")
