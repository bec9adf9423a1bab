"""Rebuilding a workflow's state machine at a stored configuration.

Runs store state **ids** (always strings, unlike state values, which may be Enum members or
numbers): the active configuration, the entries tasks and timers are bound to, and the
history pseudo-states' memory. The machine is handed values; ids are converted at this edge.
"""

from statemachine.orderedset import OrderedSet

from .definitions import Workflow
from .errors import DefinitionError


class RunContext:
    """What callbacks and steps see of a run; also the machine's model.

    ``configuration`` is the machine's state field (state values); ``data`` is the run's JSON
    data, which callbacks may change (the change is saved with the transition).
    """

    def __init__(self, *, id, workflow, version, data, business_key=None, status=None,
                 configuration=None, state=None, attempt=None, entered_seq=None, task_id=None):
        self.id, self.workflow, self.version = id, workflow, version
        self.data = data
        self.business_key = business_key
        self.status = status
        self.configuration = configuration
        self.state = state  # a step's state
        self.attempt = attempt  # a step's attempt number, from 1
        self.task_id = task_id  # a step's task: the same for every attempt of one state entry
        self.entered_seq = entered_seq
        self.db = None  # the transaction's connection while a change runs callbacks
        # States entered and exited by the current send, in order (filled by the machine).
        self.entered: list = []
        self.exited: list = []

    # The machine calls these on its model for every state it enters or exits.
    def on_enter_state(self, state):
        self.entered.append(state.id)

    def on_exit_state(self, state):
        self.exited.append(state.id)

    def prepare_event(self, run=None, db=None, data=None):
        """python-statemachine merges this into every callback's arguments, including those of
        eventless transitions and of events a callback raises, which get no event arguments."""
        return {"run": self if run is None else run, "db": self.db if db is None else db,
                "data": {} if data is None else data}

    def __repr__(self):
        return f"RunContext(id={self.id!r}, workflow={self.workflow!r}, configuration={self.configuration!r})"


def state_of(cls: type[Workflow], key):
    """The state a stored key names: its id, or (runs stored before ids were) its value."""
    found = cls._states_by_id.get(key)
    if found is None and isinstance(key, str):
        found = cls.states_map.get(key)
    return found


def restore(cls: type[Workflow], ctx: RunContext, stored: list, history: dict | None = None) -> Workflow:
    """A machine at ``stored`` (the ids of every active state). Entry callbacks do not run.

    ``history`` is what the workflow's history pseudo-states remember ({history id: [state ids]})."""
    states = [state_of(cls, key) for key in stored]
    unknown = [key for key, state in zip(stored, states) if state is None]
    if unknown or not stored:
        raise DefinitionError(
            f"run {ctx.id} is in state(s) {unknown or stored} that workflow "
            f"{cls.workflow_name} v{cls.version} does not define")
    values = [state.value for state in states]
    ctx.configuration = values[0] if len(values) == 1 else OrderedSet(values)
    machine = cls(model=ctx, state_field="configuration")
    if history:
        for history_id, ids in history.items():
            remembered = [state_of(cls, key) for key in ids]
            if None not in remembered:
                machine.history_values[history_id] = remembered
    return machine


def create(cls: type[Workflow], ctx: RunContext, **kwargs) -> Workflow:
    """A new machine: enters the initial state, running its entry callbacks with ``kwargs``."""
    ctx.configuration = None
    return cls(model=ctx, state_field="configuration", **kwargs)


def configuration(machine: Workflow) -> list:
    return [state.id for state in machine.configuration]


def remembered(machine: Workflow) -> dict:
    """What the history pseudo-states remember, as stored: {history id: [state ids]}."""
    return {history_id: [state.id for state in states] for history_id, states in machine.history_values.items()}


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
    """The machine itself terminated (a top-level final state, or a top-level parallel state
    whose every region rests in a final state): a final child of a compound state is not the end."""
    return machine.is_terminated


def is_final_at(cls: type[Workflow], ids: list) -> bool:
    """``is_final`` from a stored configuration, without building the machine."""
    active = set(ids)
    states = [state_of(cls, key) for key in ids]
    return any(state.parent is None and (state.final or (state.parallel and _rests_final(state, active)))
               for state in states)


def _rests_final(state, active) -> bool:
    if state.parallel:
        return all(_rests_final(region, active) for region in state.states)
    return any(child.final and child.id in active for child in state.states)


def leaves_of(cls: type[Workflow], ids: list) -> list[str]:
    """The ids of the atomic states among stored configuration ``ids``."""
    return [state.id for state in (state_of(cls, key) for key in ids) if state.is_atomic]


def final_leaf(cls: type[Workflow], ids: list) -> str:
    """The final state a finished run rests in: the top-level one, else the first final leaf."""
    states = [state_of(cls, key) for key in ids]
    for state in states:
        if state.parent is None and state.final:
            return state.id
    return next((s.id for s in states if s.final and s.is_atomic), states[0].id)


# Our own hooks on RunContext: the only callbacks a shortcut may skip (it records entries itself).
_OWN_HOOKS = {"on_enter_state", "on_exit_state", "prepare_event"}
_SHORTCUTS: dict = {}


def shortcuts(cls: type[Workflow]) -> dict:
    """(state id, event) -> (target state id, re-enters) for a flat workflow with no callbacks.

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


def registered_callbacks(machine) -> list:
    """Every callback python-statemachine resolved for ``machine`` (from its class, model and
    listeners). It has no public listing: this reads its callbacks registry, whose shape
    pyproject.toml pins (python-statemachine 3.2.x) and tests/test_shortcuts.py checks."""
    return [callback for executor in machine._callbacks._registry.values() for callback in executor]


def _build_shortcuts(cls) -> dict | None:
    states = list(cls.states_map.values())
    if (any(hasattr(cls, hook) for hook in _OWN_HOOKS)
            or any(s.parent is not None or not s.is_atomic for s in states)):
        return None
    probe = restore(cls, RunContext(id="probe", workflow=cls.workflow_name, version=cls.version, data={}),
                    [cls.initial_state.id])
    if probe.active_listeners or any(callback.meta.func not in _OWN_HOOKS
                                     for callback in registered_callbacks(probe)):
        return None
    table, ambiguous = {}, set()
    for state in states:
        for transition in state.transitions:
            targets = transition.targets
            if transition.is_eventless or len(targets) != 1:
                return None
            # As python-statemachine decides whether a transition enters its target.
            reenters = (cls.enable_self_transition_entries or not transition.internal
                        or not transition.is_self)
            for event in transition.events:
                if event.delay or event.internal or event.id not in cls._event_ids:
                    return None
                key = (state.id, event.id)
                if key in table:
                    ambiguous.add(key)
                table[key] = (targets[0].id, reenters)
    for key in ambiguous:
        del table[key]
    return table
