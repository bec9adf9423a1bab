"""Rebuilding a workflow's state machine at a stored configuration."""

from statemachine.orderedset import OrderedSet

from .definitions import Workflow
from .errors import DefinitionError


class RunContext:
    """What callbacks and steps see of a run; also the machine's model.

    ``configuration`` is the machine's state field; ``data`` is the run's JSON data,
    which callbacks may change (the change is saved with the transition).
    """

    def __init__(self, *, id, workflow, version, data, business_key=None, status=None,
                 configuration=None, state=None, attempt=None, entered_seq=None):
        self.id, self.workflow, self.version = id, workflow, version
        self.data = data
        self.business_key = business_key
        self.status = status
        self.configuration = configuration
        self.state = state  # a step's state
        self.attempt = attempt  # a step's attempt number, from 1
        self.entered_seq = entered_seq
        # States entered and exited by the current send, in order (filled by the machine).
        self.entered: list = []
        self.exited: list = []

    # The machine calls these on its model for every state it enters or exits.
    def on_enter_state(self, state):
        self.entered.append(state.value)

    def on_exit_state(self, state):
        self.exited.append(state.value)

    def __repr__(self):
        return f"RunContext(id={self.id!r}, workflow={self.workflow!r}, configuration={self.configuration!r})"


def restore(cls: type[Workflow], ctx: RunContext, stored: list) -> Workflow:
    """A machine at ``stored`` (every active state). Entry callbacks do not run."""
    unknown = [value for value in stored if value not in cls.states_map]
    if unknown or not stored:
        raise DefinitionError(
            f"run {ctx.id} is in state(s) {unknown or stored} that workflow "
            f"{cls.workflow_name} v{cls.version} does not define")
    ctx.configuration = stored[0] if len(stored) == 1 else OrderedSet(stored)
    return cls(model=ctx, state_field="configuration")


def create(cls: type[Workflow], ctx: RunContext, **kwargs) -> Workflow:
    """A new machine: enters the initial state, running its entry callbacks with ``kwargs``."""
    ctx.configuration = None
    return cls(model=ctx, state_field="configuration", **kwargs)


def configuration(machine: Workflow) -> list:
    return list(machine.configuration_values)


def leaves(machine: Workflow) -> list[str]:
    return [s.id for s in machine.configuration if s.is_atomic]


def accepted_events(machine: Workflow) -> list[str]:
    """Events the run accepts now, before guards; internal statechart events left out."""
    seen = []
    for event in machine.allowed_events:
        if event.id not in seen and not event.id.startswith(("done.", "error.")):
            seen.append(event.id)
    return seen


def is_final(machine: Workflow) -> bool:
    return machine.is_terminated or all(s.final for s in machine.configuration if s.is_atomic)


def leaves_of(cls: type[Workflow], values: list) -> list[str]:
    """The ids of the atomic states among stored configuration ``values``."""
    states = cls.states_map
    return [states[v].id for v in values if states[v].is_atomic]


def is_final_at(cls: type[Workflow], values: list) -> bool:
    states = cls.states_map
    return all(states[v].final for v in values if states[v].is_atomic)


# Our own hooks on RunContext: the only callbacks a shortcut may skip (it records entries itself).
_OWN_HOOKS = {"on_enter_state", "on_exit_state"}
_SHORTCUTS: dict = {}


def shortcuts(cls: type[Workflow]) -> dict:
    """(state value, event) -> (target state, re-enters) for a flat workflow with no callbacks.

    Such a transition needs no machine: no guard, action, entry or exit callback can run,
    so its outcome is known from the definition alone. A workflow with any callback,
    listener, compound or parallel state, eventless or delayed transition gets none, and
    every change to its runs goes through python-statemachine.
    """
    table = _plain_table(cls)
    return {} if table is None else table


def is_plain(cls: type[Workflow]) -> bool:
    """True when no callback can observe this workflow's transitions (see ``shortcuts``)."""
    return _plain_table(cls) is not None


def _plain_table(cls) -> dict | None:
    if cls not in _SHORTCUTS:
        _SHORTCUTS[cls] = _build_shortcuts(cls)
    return _SHORTCUTS[cls]


def _build_shortcuts(cls) -> dict | None:
    states = list(cls.states_map.values())
    if (cls._class_listeners or any(hasattr(cls, hook) for hook in _OWN_HOOKS)
            or any(s.parent is not None or not s.is_atomic for s in states)):
        return None
    probe = restore(cls, RunContext(id="probe", workflow=cls.workflow_name, version=cls.version, data={}),
                    [cls.initial_state.value])
    for executor in probe._callbacks._registry.values():
        if any(callback.meta.func not in _OWN_HOOKS for callback in executor):
            return None
    table, ambiguous = {}, set()
    for state in states:
        for transition in state.transitions:
            targets = transition.targets
            if transition.is_eventless or len(targets) != 1:
                return None
            for event in transition.events:
                if event.delay or event.internal or event.id not in cls._event_ids:
                    return None
                key = (state.value, event.id)
                if key in table:
                    ambiguous.add(key)
                table[key] = (targets[0], not transition.internal)
    for key in ambiguous:
        del table[key]
    return table
