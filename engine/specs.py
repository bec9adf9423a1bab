"""What a workflow declares beside its states and events: steps, activities, child runs,
timers, triggers, and a step's "not yet" answer. Each builder checks its arguments, so a
mistake fails at import with a :class:`DefinitionError`."""

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, ClassVar

from statemachine import State

from .errors import DefinitionError


def _seconds(value, what) -> float:
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, (int, float)) or value < 0:
        raise DefinitionError(f"{what} must be a timedelta or a number of seconds >= 0, got {value!r}")
    return float(value)


def _state_ref(state) -> str | State:
    if isinstance(state, (str, State)):
        return state
    raise DefinitionError(f"expected a State or a state id, got {state!r}")


@dataclass(frozen=True)
class Limit:
    """At most ``n`` attempts running at once, across every worker: of the step it is given to
    (``step(concurrency=Limit(5))``, or just ``concurrency=5``), or of every step given a Limit
    of the same ``name``; with ``key``, ``n`` per key (``key(run) -> str``, say an account)."""

    n: int
    key: Callable | None = None
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or not 1 <= self.n <= MAX_LIMIT:
            raise DefinitionError(f"Limit(n) must be an int from 1 to {MAX_LIMIT}, got {self.n!r}")
        _check_key_and_name("Limit", self.key, self.name)


@dataclass(frozen=True)
class Rate:
    """At most ``n`` attempts started per ``per`` (a timedelta or seconds), evenly spaced (no
    burst), across every worker; shared by name and per key like ``Limit``."""

    n: int
    per: Any = 1.0
    key: Callable | None = None
    name: str | None = None

    def __post_init__(self):
        if isinstance(self.n, bool) or not isinstance(self.n, int) or self.n < 1:
            raise DefinitionError(f"Rate(n) must be an int >= 1, got {self.n!r}")
        object.__setattr__(self, "per", _seconds(self.per, "Rate(per)"))
        if self.per <= 0:
            raise DefinitionError("Rate(per) must be more than 0 seconds")
        _check_key_and_name("Rate", self.key, self.name)

    @property
    def interval(self) -> float:
        return self.per / self.n


MAX_LIMIT = 10_000  # slots of one limit key (each is a row)
LIMIT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")


def _check_key_and_name(what, key, name):
    if key is not None and not callable(key):
        raise DefinitionError(f"{what}(key=...) must be a function of the run")
    if name is not None and (not isinstance(name, str) or not LIMIT_NAME.fullmatch(name)):
        raise DefinitionError(f"{what}(name=...) must be 1-200 letters, digits or _.:-, got {name!r}")


@dataclass
class StepSpec:
    """Background work run by a worker when its state is entered."""

    kind: ClassVar[str] = "step"
    func: Callable
    state: Any
    retries: int = 3
    backoff: float = 1.0
    max_backoff: float = 300.0
    time_limit: float = 600.0
    on_error: str | None = None
    default: str | None = None
    name: str = ""
    state_id: str = ""
    concurrency: Limit | None = None
    rate: Rate | None = None
    workflow: str = ""  # set with the class: the default name of its limits

    @property
    def limited(self) -> bool:
        return self.concurrency is not None or self.rate is not None

    def limit_name(self, limit) -> str:
        return limit.name or f"{self.workflow}.{self.name}"

    def delay_before(self, attempt: int) -> float:
        """Backoff before attempt number ``attempt`` (the 2nd attempt waits ``backoff``)."""
        return min(self.max_backoff, self.backoff * 2 ** max(0, attempt - 2))

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def step(state, *, retries=3, backoff=timedelta(seconds=1), max_backoff=timedelta(minutes=5),
         time_limit=timedelta(minutes=10), on_error=None, default=None, concurrency=None, rate=None):
    """Declare the decorated method as the step of ``state``.

    The method runs in a worker, outside any transaction, as ``func(self, run)``.
    It returns the next event's name, ``(event, data)``, a data dict (then
    ``default`` is sent), ``recheck(...)``, or None (``default`` is sent).
    After ``retries`` failed retries the run takes ``on_error`` or fails.
    ``concurrency`` (an int, or ``Limit``) and ``rate`` (``Rate``) bound its attempts across
    every worker (engine/limits.py).
    """
    if not isinstance(retries, int) or retries < 0:
        raise DefinitionError(f"retries must be an int >= 0, got {retries!r}")
    if concurrency is not None and not isinstance(concurrency, Limit):
        concurrency = Limit(concurrency)
    if rate is not None and not isinstance(rate, Rate):
        raise DefinitionError(f"rate must be Rate(n, per=..., key=...), got {rate!r}")

    def mark(func):
        func._interlock_step = StepSpec(
            func=func, state=_state_ref(state), retries=retries,
            backoff=_seconds(backoff, "backoff"), max_backoff=_seconds(max_backoff, "max_backoff"),
            time_limit=_seconds(time_limit, "time_limit"), on_error=on_error, default=default,
            name=func.__name__, concurrency=concurrency, rate=rate,
        )
        return func

    return mark


ACTIVITY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
MAX_VISIBILITY_TIMEOUT = 12 * 3600.0


@dataclass
class ActivitySpec:
    """Work bound to a state that an external worker receives from the API, as from an SQS queue."""

    kind: ClassVar[str] = "activity"
    state: Any
    name: str | None = None
    retries: int = 3
    visibility_timeout: float = 30.0
    on_error: str | None = None
    default: str | None = None
    state_id: str = ""

    def delay_before(self, attempt: int) -> float:
        """An attempt lost to its visibility timeout can be received again at once."""
        return 0.0

    @property
    def max_attempts(self) -> int:
        return self.retries + 1


def activity(state, *, name=None, retries=3, visibility_timeout=timedelta(seconds=30), on_error=None,
             default=None) -> ActivitySpec:
    """Declare an activity: entering ``state`` queues a task for external workers.

    Workers receive tasks by ``name`` (default: the attribute's name), then complete them
    with an event (``default`` when they name none) and data, or fail them. A task not
    completed within ``visibility_timeout`` (workers may extend it by heartbeats) can be
    received again; after ``retries`` failed retries the run takes ``on_error`` or fails.
    """
    if name is not None and (not isinstance(name, str) or not ACTIVITY_NAME.fullmatch(name)):
        raise DefinitionError(f"activity name must be 1-200 letters, digits or _.:- (starting with a "
                              f"letter or digit), got {name!r}")
    if not isinstance(retries, int) or retries < 0:
        raise DefinitionError(f"retries must be an int >= 0, got {retries!r}")
    seconds = _seconds(visibility_timeout, "visibility_timeout")
    if not 0 < seconds <= MAX_VISIBILITY_TIMEOUT:
        raise DefinitionError(f"visibility_timeout must be more than 0 and at most 12 hours, got {seconds}s")
    return ActivitySpec(state=_state_ref(state), name=name, retries=retries, visibility_timeout=seconds,
                        on_error=on_error, default=default)


PARENT_CLOSE = ("cancel", "abandon")


@dataclass
class ChildSpec:
    """A child run of another workflow, started when its state is entered; the parent waits."""

    kind: ClassVar[str] = "child"
    state: Any
    workflow: str
    version: int | None = None
    data: Any = None  # a dict, or data(run) -> dict
    business_key: Callable | None = None  # business_key(run) -> str
    on_done: str | None = None
    on_error: str | None = None
    result: str | None = None  # the parent's data key that receives the child's final data
    parent_close: str = "cancel"
    name: str = ""
    state_id: str = ""

    def data_for(self, run) -> dict:
        return dict(self.data(run) if callable(self.data) else self.data or {})


def child(state, *, workflow: str, data=None, version=None, business_key=None, on_done=None, on_error=None,
          result=None, parent_close="cancel") -> ChildSpec:
    """Entering ``state`` starts a run of ``workflow`` (``version``: pinned, else the newest loaded)
    with ``data`` (a dict, or ``data(run)``); the parent waits in ``state`` holding nothing. When the
    child ends, the parent takes ``on_done`` (the child succeeded) or ``on_error`` (it failed or was
    cancelled), with the child's final data as the event's data (and under ``result`` in its own data).
    Leaving ``state`` first cancels the child, unless ``parent_close="abandon"``."""
    if not isinstance(workflow, str) or not workflow:
        raise DefinitionError("child() needs workflow=\"name\" of the workflow to start")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise DefinitionError(f"child() version must be an int >= 1, got {version!r}")
    if data is not None and not (callable(data) or isinstance(data, dict)):
        raise DefinitionError("child(data=...) must be a dict or a function of the run")
    if business_key is not None and not callable(business_key):
        raise DefinitionError("child(business_key=...) must be a function of the run")
    if parent_close not in PARENT_CLOSE:
        raise DefinitionError(f"child(parent_close=...) must be one of {PARENT_CLOSE}, got {parent_close!r}")
    if result is not None and (not isinstance(result, str) or not result):
        raise DefinitionError("child(result=...) must name a data key")
    return ChildSpec(state=_state_ref(state), workflow=workflow, version=version, data=data,
                     business_key=business_key, on_done=on_done, on_error=on_error, result=result,
                     parent_close=parent_close)


@dataclass
class TimerSpec:
    """An event sent after a duration in a state, or at a time read from the run's data."""

    state: Any
    send: str
    delay: float | None = None
    at_field: str | None = None
    name: str = ""
    state_id: str = ""


def after(duration, state, *, send) -> TimerSpec:
    return TimerSpec(state=_state_ref(state), send=send, delay=_seconds(duration, "duration"))


def at(data_field: str, state, *, send) -> TimerSpec:
    """Send ``send`` at the time stored in ``run.data[data_field]`` (ISO 8601 or epoch seconds)."""
    if not isinstance(data_field, str) or not data_field:
        raise DefinitionError("at() needs the name of a data field holding a time")
    return TimerSpec(state=_state_ref(state), send=send, at_field=data_field)


@dataclass
class TriggerSpec:
    """Send ``send`` when ``data[field]`` changes and ``when(run, old, new)`` holds."""

    field: str
    send: str
    when: Callable | None = None
    states: tuple = ()
    name: str = ""
    state_ids: tuple = ()


def trigger(data_field: str, *, send: str, when=None, states=()) -> TriggerSpec:
    if when is not None and not callable(when):
        raise DefinitionError("trigger(when=...) must be callable as when(run, old, new)")
    return TriggerSpec(field=data_field, send=send, when=when,
                       states=tuple(_state_ref(s) for s in states))


@dataclass(frozen=True)
class Recheck:
    """A step's answer "not yet": run the step again after ``delay`` seconds."""

    delay: float
    data: dict = field(default_factory=dict)


def recheck(after=timedelta(minutes=10), data=None) -> Recheck:
    return Recheck(delay=_seconds(after, "recheck delay"), data=dict(data or {}))


@dataclass
class MapSpec:
    """A child run per item of a list, started when its state is entered; the parent waits for all."""

    kind: ClassVar[str] = "map"
    state: Any
    items: Any  # a data key holding the list, or items(run) -> list
    workflow: str
    version: int | None = None
    data: Callable | None = None  # data(run, item) -> dict; default: the item if a dict, else {"item": item}
    business_key: Callable | None = None  # business_key(run, item) -> str
    max_concurrency: int | None = None
    tolerated_failures: float = 0  # a fraction (< 1) of the items, or a count (an int >= 1)
    on_done: str | None = None
    on_error: str | None = None
    results: str | None = None  # the parent's data key that receives the results, in item order
    parent_close: str = "cancel"
    name: str = ""
    state_id: str = ""

    def items_of(self, run) -> list:
        return self.items(run) if callable(self.items) else run.data.get(self.items)

    def data_for(self, run, item) -> dict:
        if self.data is not None:
            return dict(self.data(run, item))
        return dict(item) if isinstance(item, dict) else {"item": item}

    def too_many_failures(self, failed: int, total: int) -> bool:
        if isinstance(self.tolerated_failures, int):
            return failed > self.tolerated_failures
        return failed > self.tolerated_failures * total


def map_(state, *, items, workflow: str, data=None, version=None, business_key=None, max_concurrency=None,
         tolerated_failures=0, on_done=None, on_error=None, results=None, parent_close="cancel") -> MapSpec:
    """Entering ``state`` starts a run of ``workflow`` for each of ``items`` (a data key, or
    ``items(run)``), at most ``max_concurrency`` at a time; the parent waits in ``state``. When every
    item has ended it takes ``on_done``, with the results in item order under ``results`` in its
    data; as soon as more than ``tolerated_failures`` (a fraction of the items, or a count) have
    failed it takes ``on_error`` instead, cancelling the rest. ``retry`` of the parent re-runs only
    the failed items."""
    if not isinstance(workflow, str) or not workflow:
        raise DefinitionError("map_() needs workflow=\"name\" of the workflow to run per item")
    if not (callable(items) or (isinstance(items, str) and items)):
        raise DefinitionError("map_(items=...) must name a data key holding a list, or be a function of the run")
    if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
        raise DefinitionError(f"map_(max_concurrency=...) must be an int >= 1, got {max_concurrency!r}")
    if isinstance(tolerated_failures, bool) or not isinstance(tolerated_failures, (int, float)) \
            or tolerated_failures < 0 or (isinstance(tolerated_failures, float) and tolerated_failures >= 1):
        raise DefinitionError("map_(tolerated_failures=...) must be a fraction in [0, 1) or a count (an int >= 0), "
                              f"got {tolerated_failures!r}")
    for name, value in (("data", data), ("business_key", business_key)):
        if value is not None and not callable(value):
            raise DefinitionError(f"map_({name}=...) must be a function of (run, item)")
    if parent_close not in PARENT_CLOSE:
        raise DefinitionError(f"map_(parent_close=...) must be one of {PARENT_CLOSE}, got {parent_close!r}")
    if version is not None and (not isinstance(version, int) or version < 1):
        raise DefinitionError(f"map_() version must be an int >= 1, got {version!r}")
    return MapSpec(state=_state_ref(state), items=items, workflow=workflow, version=version, data=data,
                   business_key=business_key, max_concurrency=max_concurrency,
                   tolerated_failures=tolerated_failures, on_done=on_done, on_error=on_error, results=results,
                   parent_close=parent_close)
