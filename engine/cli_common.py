"""What the ``interlock`` commands share: reading arguments, loading workflow modules, opening the engine."""

import json
import logging
import os
import sys

import click

from .config import Settings
from .db import Database
from .registry import Registry, WorkflowModuleError
from .timeparse import parse_time

log = logging.getLogger("interlock")


def json_arg(value, what="--data"):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


def time_arg(value, what):
    if value is None:
        return None
    parsed = parse_time(value)
    if parsed is None:
        raise click.BadParameter("expected an ISO 8601 time", param_hint=what)
    return parsed


class WorkflowModulesFailed(click.ClickException):
    exit_code = 2


def _current_directory_first():
    """Workflow modules are looked up in the current directory first, for every command."""
    cwd = os.getcwd()
    sys.path[:] = [cwd] + [p for p in sys.path if p not in ("", cwd)]


def _loading_workflows(load):
    _current_directory_first()
    try:
        return load()
    except WorkflowModuleError as exc:
        raise WorkflowModulesFailed(str(exc)) from None


def load_registry(settings: Settings) -> Registry:
    return _loading_workflows(lambda: Registry().load_modules(settings.workflow_modules))


def _upgrade_sqlite(settings: Settings):
    db = Database(settings.database_url)
    try:
        before = db.current_revision()
        db.upgrade()
        after = db.current_revision()
    finally:
        db.dispose()
    if after != before:
        log.info("database %s migrated from %s to %s", settings.database_url, before or "empty", after)


def open_runtime(settings: Settings, *, upgrade_sqlite=False):
    from .runtime import Interlock

    if upgrade_sqlite and settings.is_sqlite:
        _upgrade_sqlite(settings)
    return _loading_workflows(lambda: Interlock(settings))
