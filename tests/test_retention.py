"""Retention settings: INTERLOCK_RETENTION and a workflow's ``retention``."""

from datetime import timedelta

import pytest

from engine.config import Settings
from engine.errors import ConfigurationError, DefinitionError


# -- settings and definitions ----------------------------------------------------------------

@pytest.mark.parametrize("raw, seconds", [("30d", 30 * 86400.0), ("1h30m", 5400.0), ("3600", 3600.0),
                                          ("2w", 14 * 86400.0), ("0.5s", 0.5), ("none", None)])
def test_INTERLOCK_RETENTION_takes_seconds_or_units(raw, seconds):
    assert Settings.from_env({"INTERLOCK_RETENTION": raw}).retention == seconds


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "30x", "1h1h", "nan", "inf", "h"])
def test_a_malformed_INTERLOCK_RETENTION_is_refused(raw):
    with pytest.raises(ConfigurationError, match="INTERLOCK_RETENTION"):
        Settings.from_env({"INTERLOCK_RETENTION": raw})


@pytest.mark.parametrize("bad", [30, "30d", timedelta(0), timedelta(seconds=-1), True])
def test_a_bad_retention_fails_at_import(bad):
    from engine import State, Workflow

    with pytest.raises(DefinitionError, match="retention must be a timedelta"):
        class Bad(Workflow):
            name, version = "ret_bad", 1
            retention = bad
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)
