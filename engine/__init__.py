"""Interlock: durable state-machine workflows.

Workflows are written with the names below; everything else is imported by module
(``engine.runtime.Interlock`` to run them, ``engine.testing`` to test them).
"""

from statemachine import State

from .bindings import bind
from .definitions import Workflow, activity, after, at, child, map_, recheck, step, trigger
from .errors import (BindingError, CallbackError, DefinitionError, InterlockError, InvalidData,
                     InvalidTransition, RunNotActive, RunNotFound, SchemaOutOfDate, StaleTaskToken,
                     StateColumnWritten, WorkflowNotFound)
from .runtime import Interlock
from .schedule_times import schedule
from .specs import Limit, Rate

__all__ = [
    # defining workflows
    "Workflow", "State", "step", "activity", "child", "map_", "after", "at", "trigger", "recheck",
    "schedule", "bind", "Limit", "Rate",
    # running them
    "Interlock",
    # errors
    "InterlockError", "DefinitionError", "WorkflowNotFound", "RunNotFound", "InvalidData",
    "InvalidTransition", "RunNotActive", "CallbackError", "SchemaOutOfDate", "StaleTaskToken",
    "BindingError", "StateColumnWritten",
]
