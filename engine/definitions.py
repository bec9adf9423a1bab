"""How users declare workflows: a strict state machine plus what ``engine.specs`` declares
(steps, activities, child runs, timers, triggers).

Everything here is checked when the workflow class is created, so a mistake in a
definition fails at import with a :class:`DefinitionError`, not on the first run.
"""

import inspect
from datetime import timedelta

from statemachine import StateMachine
from statemachine.exceptions import InvalidDefinition
from statemachine.factory import StateMachineMetaclass

from . import search as search_fields
from .errors import DefinitionError
from .specs import (ACTIVITY_NAME, MAX_VISIBILITY_TIMEOUT, PARENT_CLOSE, ActivitySpec, ChildSpec,  # noqa: F401
                    MAX_LIMIT, Limit, MapSpec, Recheck, StepSpec, TimerSpec, TriggerSpec, activity, after,
                    at, child, map_, recheck, step, trigger)

RUN_STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")
FINAL_STATUSES = ("succeeded", "failed", "cancelled")


class WorkflowMeta(StateMachineMetaclass):
    def __init__(cls, name, bases, attrs):
        workflow_name = attrs.get("name", getattr(cls, "workflow_name", None))
        try:
            super().__init__(name, bases, attrs)
        except InvalidDefinition as exc:
            raise DefinitionError(f"{name}: {exc}") from exc
        if not cls.states:  # the abstract base
            return
        cls.workflow_name = workflow_name
        # python-statemachine overwrites ``name`` with the class name; keep the workflow's.
        cls.name = workflow_name
        cls._states_by_id = {state.id: state for state in cls.states_map.values()}
        _check_not_overwritten(cls, name, attrs)
        _check_callbacks(cls, name)
        _check_and_collect(cls, name)


def _check_not_overwritten(cls, class_name, attrs):
    """python-statemachine sets some class attributes itself (``prepare``, ``id``, ``states``...):
    a step, activity, timer or trigger declared under such a name would silently vanish."""
    for attr, value in attrs.items():
        declared = (isinstance(getattr(value, "_interlock_step", None), StepSpec)
                    or isinstance(value, (ActivitySpec, ChildSpec, MapSpec, TimerSpec, TriggerSpec)))
        if declared and vars(cls).get(attr) is not value:
            raise DefinitionError(f"{class_name}: {attr!r} is a name python-statemachine uses "
                                  "itself; give the step, activity, timer or trigger another name")


def _resolve(cls, ref, what) -> str:
    """The id of the state ``ref`` (a State, or a state id) names."""
    if isinstance(ref, str):
        if ref not in cls._states_by_id:
            raise DefinitionError(f"{cls.__name__}: {what} names unknown state {ref!r}")
        return ref
    # Identity, not equality: python-statemachine compares states by name and id, so a
    # state of another workflow with the same name would otherwise pass for one of ours.
    for state in cls.states_map.values():
        if state is ref:
            return state.id
    raise DefinitionError(f"{cls.__name__}: {what} uses state {ref!r}, which is not a state of this workflow")


def _only_event_leaving(cls, state_id) -> str | None:
    events = {e.id for t in cls._states_by_id[state_id].transitions for e in t.events}
    return events.pop() if len(events) == 1 else None


# Generic callback names python-statemachine looks up on every machine, model and listener.
_GENERIC_CALLBACKS = ("prepare_event", "before_transition", "on_transition", "after_transition",
                      "on_enter_state", "on_exit_state", "on_invoke_state")


def _callbacks_declared(cls):
    """(what, callable) for each callback the definition names: methods found by convention or
    by name, and callables given to states and transitions."""
    owners = [cls] + [entry for entry in getattr(cls, "listeners", []) or []]

    def named(name):
        for owner in owners:
            found = inspect.getattr_static(owner, name, None)
            if found is not None:
                yield name, found

    for name in _GENERIC_CALLBACKS:
        yield from named(name)
    for state in cls.states_map.values():
        for group in ("enter", "exit", "invoke"):
            for spec in getattr(state, group):
                yield from _spec_callables(spec, named, f"state {state.id} {group}")
        for transition in state.transitions:
            for group in ("validators", "cond", "before", "on", "after"):
                for spec in getattr(transition, group):
                    yield from _spec_callables(spec, named, f"transition {transition}")


def _spec_callables(spec, named, what):
    func = spec.func
    if isinstance(func, str):
        yield from named(func)
    elif isinstance(func, property):
        yield what, func.fget
    elif callable(func):
        yield what, func


def _found_on(cls, name) -> bool:
    owners = [cls] + list(getattr(cls, "listeners", []) or [])
    return any(inspect.getattr_static(owner, name, None) is not None for owner in owners)


def _check_callbacks(cls, class_name):
    """Refuse what cannot run inside a run's database transaction, at import, not at start."""
    for name, func in _callbacks_declared(cls):
        target = getattr(func, "__func__", func)
        if isinstance(target, (staticmethod, classmethod)):
            target = target.__func__
        if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
            raise DefinitionError(
                f"{class_name}: callback {name} is async; callbacks run synchronously inside the "
                "run's database transaction. Make it a plain function, or move the async work into "
                "a step (`@step(state)` on an `async def`), which runs in a worker")
    for state in cls.states_map.values():
        if any(not spec.is_convention or _found_on(cls, spec.func) for spec in state.invoke):
            raise DefinitionError(
                f"{class_name}: state {state.id!r} has an invoke callback; invoked work would run "
                "inside the run's transaction and be lost with the process. Use a step or an "
                "activity on that state instead")
    for state in cls.states_map.values():
        for history in getattr(state, "history", ()) or ():
            if not list(history.transitions):
                raise DefinitionError(
                    f"{class_name}: history state {history.id!r} of {state.id!r} has no default "
                    f"transition; entered before anything is remembered, python-statemachine would "
                    f"leave the run in no state at all. Add one: `{history.id}.to(<a child of {state.id}>)`")
    for event in cls._events:
        if event.delay:
            raise DefinitionError(
                f"{class_name}: event {event.id!r} has a delay; python-statemachine would sleep "
                "inside the run's transaction. Use a durable timer: after(duration, state, send=...)")


def _check_and_collect(cls, class_name):
    if not isinstance(cls.workflow_name, str) or not cls.workflow_name:
        raise DefinitionError(f"{class_name}: set `name = \"...\"` on the workflow class")
    if not isinstance(getattr(cls, "version", None), int) or cls.version < 1:
        raise DefinitionError(f"{class_name}: set `version` to an int >= 1")
    events = {e.id for e in cls._events}
    finals = {s.id for s in cls.states_map.values() if s.final}

    def check_event(ev, what):
        if ev is not None and ev not in events:
            raise DefinitionError(f"{class_name}: {what} sends unknown event {ev!r}")

    steps, activities, children, timers, triggers = {}, {}, {}, [], []
    seen = {}
    for klass in reversed(cls.__mro__):
        seen.update(vars(klass))
    for attr, value in seen.items():
        spec = getattr(value, "_interlock_step", None)
        if isinstance(spec, StepSpec):
            _bind_state(cls, class_name, spec, attr, finals, steps, "steps")
            check_event(spec.on_error, f"step {attr} on_error")
            check_event(spec.default, f"step {attr} default")
            if spec.default is None:
                spec.default = _only_event_leaving(cls, spec.state_id)
            spec.workflow = cls.workflow_name
            steps[spec.state_id] = spec
        elif isinstance(value, ActivitySpec):
            _collect_activity(cls, class_name, attr, value, finals, activities, check_event)
        elif isinstance(value, (ChildSpec, MapSpec)):
            value.name = attr
            _bind_state(cls, class_name, value, attr, finals, children, "children or maps")
            check_event(value.on_done, f"child {attr} on_done")
            check_event(value.on_error, f"child {attr} on_error")
            children[value.state_id] = value
        elif isinstance(value, TimerSpec):
            value.name = attr
            value.state_id = _resolve(cls, value.state, f"timer {attr}")
            if value.state_id in finals:
                raise DefinitionError(f"{class_name}: timer {attr} is on final state {value.state_id!r}")
            check_event(value.send, f"timer {attr}")
            timers.append(value)
        elif isinstance(value, TriggerSpec):
            value.name = attr
            value.state_ids = tuple(_resolve(cls, s, f"trigger {attr}") for s in value.states)
            check_event(value.send, f"trigger {attr}")
            triggers.append(value)

    for state_id, spec in children.items():
        if state_id in steps or state_id in activities:
            work = steps.get(state_id) or activities.get(state_id)
            raise DefinitionError(f"{class_name}: state {state_id!r} has both a {spec.kind} ({spec.name}) and a "
                                  f"{work.kind} ({work.name}); give it one or the other")
    both = sorted(set(steps) & set(activities))
    if both:
        raise DefinitionError(f"{class_name}: state {both[0]!r} has both a step ({steps[both[0]].name}) "
                              f"and an activity ({activities[both[0]].name}); give it one or the other")

    final_status = dict(getattr(cls, "final_status", {}) or {})
    for state_id, status in final_status.items():
        if state_id not in finals:
            raise DefinitionError(f"{class_name}: final_status names {state_id!r}, which is not a final state")
        if status not in FINAL_STATUSES:
            raise DefinitionError(f"{class_name}: final_status {status!r} is not one of {FINAL_STATUSES}")
    cls._retention_seconds = _check_retention(class_name, getattr(cls, "retention", None))
    cls._max_active = _check_max_active(cls, class_name, getattr(cls, "max_active", None))
    cls._steps = steps
    cls._activities = activities
    cls._children = children
    cls._timers = tuple(timers)
    cls._triggers = tuple(triggers)
    cls._final_status = final_status
    cls._search = search_fields.declared(cls, class_name)
    cls._event_ids = tuple(e.id for e in cls._events)


def _check_retention(class_name, retention) -> float | None:
    """Seconds a finished run is kept, from ``retention`` (a timedelta, or None for the default)."""
    if retention is None:
        return None
    if not isinstance(retention, timedelta) or retention <= timedelta(0):
        raise DefinitionError(f"{class_name}: retention must be a timedelta longer than 0 (how long finished "
                              f"runs are kept, e.g. timedelta(days=30)) or None for INTERLOCK_RETENTION, "
                              f"got {retention!r}")
    return retention.total_seconds()


def _check_max_active(cls, class_name, max_active) -> Limit | None:
    """At most this many runs admitted at once (engine/admission.py): an int, or ``Limit(n, key=...)``."""
    if max_active is None:
        return None
    if not isinstance(max_active, Limit):
        if isinstance(max_active, bool) or not isinstance(max_active, int) or not 1 <= max_active <= MAX_LIMIT:
            raise DefinitionError(f"{class_name}: max_active must be an int from 1 to {MAX_LIMIT} (runs admitted "
                                  f"at once), Limit(n, key=...) or None, got {max_active!r}")
        max_active = Limit(max_active)
    if max_active.name is not None:
        raise DefinitionError(f"{class_name}: max_active=Limit(...) takes no name: its slots are the workflow's")
    initial = cls.initial_state
    inside, seen = [initial], 0
    while seen < len(inside):  # the initial state and every state nested in it
        inside += list(getattr(inside[seen], "states", ()) or ())
        seen += 1
    for state in inside:
        if any(t.is_eventless for t in state.transitions):
            raise DefinitionError(f"{class_name}: with max_active, runs wait for a slot in the initial state "
                                  f"{initial.id!r}, which an eventless transition of {state.id!r} would leave at "
                                  "once; start with a state the run leaves on an event or a step")
    return max_active


def _bind_state(cls, class_name, spec, attr, finals, taken: dict, plural: str) -> None:
    """Resolve the state ``spec`` is declared on: not final, and not holding another of its kind."""
    spec.state_id = _resolve(cls, spec.state, f"{spec.kind} {attr}")
    if spec.state_id in finals:
        raise DefinitionError(f"{class_name}: {spec.kind} {attr} is on final state {spec.state_id!r}")
    if spec.state_id in taken:
        raise DefinitionError(f"{class_name}: state {spec.state_id!r} has two {plural} "
                              f"({taken[spec.state_id].name}, {spec.name or attr})")


def _collect_activity(cls, class_name, attr, spec, finals, activities, check_event):
    if spec.name is None:
        if not ACTIVITY_NAME.fullmatch(attr):
            raise DefinitionError(f"{class_name}: activity {attr} needs name=... (letters, digits, _.:-)")
        spec.name = attr
    _bind_state(cls, class_name, spec, attr, finals, activities, "activities")
    check_event(spec.on_error, f"activity {attr} on_error")
    check_event(spec.default, f"activity {attr} default")
    if spec.default is None:
        spec.default = _only_event_leaving(cls, spec.state_id)
    activities[spec.state_id] = spec


class Workflow(StateMachine, metaclass=WorkflowMeta):
    """Base class of every workflow: a strict python-statemachine ``StateMachine``.

    Invalid events raise, callback errors propagate (and roll back the transition's
    transaction), and nothing is silently ignored. Subclasses set ``name`` and ``version``.
    Callbacks may take ``run`` (the run: id, data, business_key…), ``db`` (the SQLAlchemy
    connection of the transition's transaction) and ``data`` (the event's data).
    """

    # Final states whose run status is not "succeeded": {"lost": "failed"}.
    final_status: dict = {}
    # Data fields to index for filtering runs: {"customer": str, "total": float} (engine/search.py).
    search: dict = {}
    _search: dict | None = None
    # Data used by `interlock run NAME` when no --data is given.
    demo_data: dict = {}
    # Events `interlock run` sends on behalf of the outside world: {state: event or (event, data)}.
    demo_events: dict = {}
    # How long finished runs are kept (then deleted with their history: engine/retention.py);
    # None: INTERLOCK_RETENTION, and with that unset, forever. timedelta.max keeps them forever.
    retention: timedelta | None = None
    # At most this many runs admitted at once (an int, or Limit(n, key=...) per key); the others
    # wait in the initial state, in arrival order (engine/admission.py). None: no limit.
    max_active = None
    _max_active = None

    @classmethod
    def step_for(cls, state_id) -> "StepSpec | ActivitySpec | None":
        """The work bound to the state: its step, or its activity (``spec.kind`` says which)."""
        return cls._steps.get(state_id) or cls._activities.get(state_id)

    @classmethod
    def child_for(cls, state_id) -> "ChildSpec | MapSpec | None":
        """The child run (``ChildSpec``) or the runs per item (``MapSpec``) the state starts."""
        return cls._children.get(state_id)

    @classmethod
    def activity_for(cls, state_id) -> ActivitySpec | None:
        return cls._activities.get(state_id)

    @classmethod
    def status_of_final(cls, state_id) -> str:
        return cls._final_status.get(state_id, "succeeded")

    @classmethod
    def retention_seconds(cls, default: float | None) -> float | None:
        """Seconds a finished run of this workflow is kept: its ``retention``, else ``default``."""
        return default if cls._retention_seconds is None else cls._retention_seconds
