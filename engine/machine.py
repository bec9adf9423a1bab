"""Rebuilding a workflow's state machine at a stored configuration.

Runs store state **ids** (always strings, unlike state values, which may be Enum members or
numbers): the active configuration, the entries tasks and timers are bound to, and the
history pseudo-states' memory. The machine is handed values; ids are converted at this edge.
"""

from statemachine.engines.sync import SyncEngine
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
        # The data of the start while a reused machine enters its initial state (``create_lease``:
        # python-statemachine's public ``activate_initial_state`` takes no arguments).
        self.start_data = None

    # The machine calls these on its model for every state it enters or exits.
    def on_enter_state(self, state):
        self.entered.append(state.id)

    def on_exit_state(self, state):
        self.exited.append(state.id)

    def prepare_event(self, run=None, db=None, data=None):
        """python-statemachine merges this into every callback's arguments, including those of
        eventless transitions and of events a callback raises, which get no event arguments."""
        if data is None:
            data = {} if self.start_data is None else self.start_data
        return {"run": self if run is None else run, "db": self.db if db is None else db, "data": data}

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


# -- machines kept for the next change ----------------------------------------------------------
#
# Building a python-statemachine instance (resolving every callback of the class against the
# machine and its model) costs more than the transition it then takes. A change borrows a machine
# of its workflow class that an earlier change gave back, and puts it at its own run as
# ``restore`` does a new one: the model (a RunContext) gets this change's fields and nothing
# else, the configuration is written to the model, the history memory replaced. A machine goes
# back only in the state every new one starts in: not terminated, no callback raised through it,
# no attribute of its own set or rebound by a callback, no listener added. Anything else, and it
# is dropped. Classes with class-level listeners that python-statemachine instantiates per
# machine (``listeners = [SomeClass]``) build a new machine every time: such a listener is state
# of its own, set up per instance. tests/test_differential.py compares every change made this way
# with a machine built for it alone.

POOL_SIZE = 16  # idle machines kept per workflow class (about one per worker thread)
_POOLS: dict = {}
_REUSABLE: dict = {}


class Lease:
    """A machine lent to one change, and its model (the change's RunContext from then on)."""

    __slots__ = ("cls", "machine", "ctx", "spoiled", "_shape", "_listeners")

    def __init__(self, cls, machine, ctx):
        self.cls, self.machine, self.ctx = cls, machine, ctx
        self.spoiled = False  # a callback raised through it: dropped, not given back
        self._shape = tuple(vars(machine).items())
        self._listeners = len(machine.active_listeners)

    def as_built(self) -> bool:
        """Nothing the next change could see is left on the machine by this one."""
        if self.spoiled or len(self.machine.active_listeners) != self._listeners:
            return False
        now = vars(self.machine)
        if len(now) != len(self._shape) or not all(now.get(key, _MISSING) is value for key, value in self._shape):
            return False
        return not self.machine.is_terminated or _revive(self.machine)


_MISSING = object()


def _revive(machine) -> bool:
    """Make a machine that terminated (its run ended) ready to serve a new run's start.

    python-statemachine has no public way to do it: a terminated engine only keeps
    ``running = False``, with both event queues drained by the processing loop that ended it
    (the engine's attributes read here are pinned by pyproject.toml's python-statemachine range
    and checked by tests/test_shortcuts.py). Anything else, and the machine is dropped."""
    engine = getattr(machine, "_engine", None)
    if (type(engine) is not SyncEngine or engine.running or getattr(engine, "_root_parallel_final_pending", 0) is not None
            or not engine.external_queue.is_empty() or not engine.internal_queue.is_empty()):
        return False
    engine.running = True
    return True


def reusable(cls: type[Workflow]) -> bool:
    """Whether machines of ``cls`` may serve several changes (see above)."""
    found = _REUSABLE.get(cls)
    if found is None:
        declared = [entry for klass in cls.__mro__ for entry in (vars(klass).get("listeners") or ())]
        found = _REUSABLE[cls] = not any(callable(entry) for entry in declared)
    return found


def _borrow(cls, ctx) -> Lease | None:
    pool = _POOLS.get(cls)
    if not pool:
        return None
    try:
        lease = pool.pop()
    except IndexError:  # another thread took the last one
        return None
    model = lease.ctx
    fields = vars(model)
    fields.clear()
    fields.update(vars(ctx))
    lease.spoiled = False
    return lease


def restore_lease(cls: type[Workflow], ctx: RunContext, stored: list, history: dict | None = None) -> Lease:
    """``restore``, on a machine an earlier change gave back when there is one. The lease's
    ``ctx`` is the run's context from now on (the given one, or the reused model holding its fields)."""
    lease = _borrow(cls, ctx) if reusable(cls) else None
    if lease is None:
        return Lease(cls, restore(cls, ctx, stored, history), ctx)
    model, machine = lease.ctx, lease.machine
    states = [state_of(cls, key) for key in stored]
    if not stored or None in states:
        restore(cls, ctx, stored, history)  # raises the same DefinitionError
    values = [state.value for state in states]
    model.configuration = values[0] if len(values) == 1 else OrderedSet(values)
    remembered = machine.history_values
    remembered.clear()
    if history:
        for history_id, ids in history.items():
            found = [state_of(cls, key) for key in ids]
            if None not in found:
                remembered[history_id] = found
    return lease


def create_lease(cls: type[Workflow], ctx: RunContext, **kwargs) -> Lease:
    """``create``, on a machine an earlier change gave back when there is one: the initial state
    is entered with ``activate_initial_state``, as the constructor does."""
    lease = _borrow(cls, ctx) if reusable(cls) else None
    if lease is None:
        return Lease(cls, create(cls, ctx, **kwargs), ctx)
    model = lease.ctx
    model.configuration = None
    lease.machine.history_values.clear()
    # What the constructor passes the initial entry (run, db, data), the model's prepare_event
    # supplies: run is the model, db the change's connection, data the start's.
    assert kwargs.get("run") is ctx and kwargs.get("db") is ctx.db and set(kwargs) <= {"run", "db", "data"}
    model.start_data = kwargs.get("data", {})
    try:
        lease.machine.activate_initial_state()
    finally:
        model.start_data = None
    return lease


def give_back(lease: Lease) -> None:
    """Keep the machine for the next change of its class, if it is as a new one would be."""
    if not reusable(lease.cls) or not lease.as_built():
        return
    pool = _POOLS.setdefault(lease.cls, [])
    if len(pool) < POOL_SIZE:
        pool.append(lease)


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
