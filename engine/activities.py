"""Activities: work done by external workers that receive tasks over the API, as from an SQS queue.

Entering a state with an activity queues a task row (kind ``activity``) that is never sent
to the broker. ``receive`` claims queued tasks of one activity name (``SKIP LOCKED`` on
PostgreSQL and MariaDB, the write lock on SQLite, so two receivers never get the same
task), each with a fresh random token and a lease of ``visibility_timeout`` seconds; with
``wait_time_seconds`` it long-polls. The worker extends the lease with ``heartbeat``, then
``complete``s or ``fail``s the task by its token: both are checked under the run's lock and
go through ``transitions.apply`` as ``StepDone`` / ``StepFailed``. A stale, unknown or
repeated token raises :class:`StaleTaskToken` and changes nothing.

A lease that ends unanswered is recovered by the reconciler like a lost step: the attempt
counts as failed and the task can be received again at once; after its last attempt the
run takes the activity's ``on_error`` event, or fails. A task its worker failed can be
received again when the attempt's visibility timeout ends (as an SQS message its consumer
did not delete).
"""

import secrets
import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from sqlalchemy import func, select, update

from .definitions import ACTIVITY_NAME, MAX_VISIBILITY_TIMEOUT, ActivitySpec
from .errors import InvalidData, StaleTaskToken, WorkflowNotFound
from .models import runs, tasks
from .operations import StepDone, StepFailed, StepResult
from .queries import Run
from .timeparse import iso
from .transitions import ACTIVE, apply, check_data

MAX_MESSAGES = 10
MAX_WAIT_SECONDS = 20.0
DEFAULT_VISIBILITY_TIMEOUT = 30.0
# A long poll looks at the table at least this often, whatever it is told.
RECHECK_SECONDS = 1.0
MAX_ERROR_CHARS = 4000


@dataclass(frozen=True)
class ActivityTask:
    """One received attempt of an activity task: what a worker needs to do it and answer."""

    token: str
    run_id: str
    workflow: str
    version: int
    state: str
    activity: str
    data: dict
    business_key: str | None
    attempt: int
    max_attempts: int
    visibility_timeout: float
    lease_until: float

    def to_dict(self) -> dict:
        return {**asdict(self), "lease_until": iso(self.lease_until)}


# -- receiving -----------------------------------------------------------------------

def receive(rt, name: str, max_messages: int = 1, wait_time_seconds: float = 0.0,
            visibility_timeout: float | None = None) -> list[ActivityTask]:
    """Claim up to ``max_messages`` queued tasks of activity ``name``.

    With nothing to claim, wait up to ``wait_time_seconds`` for some: woken when a change
    is committed in this process (or announced by the notifier), and looking again at
    least every second. ``visibility_timeout`` defaults to the activity's declared one.
    """
    _check_name(name)
    if isinstance(max_messages, bool) or not isinstance(max_messages, int) or not 1 <= max_messages <= MAX_MESSAGES:
        raise InvalidData(f"max_messages must be an int from 1 to {MAX_MESSAGES}", field="max_messages")
    if not _number(wait_time_seconds) or not 0 <= wait_time_seconds <= MAX_WAIT_SECONDS:
        raise InvalidData(f"wait_time_seconds must be from 0 to {MAX_WAIT_SECONDS:g}", field="wait_time_seconds")
    visibility_timeout = _check_timeout(visibility_timeout)
    deadline = time.monotonic() + wait_time_seconds
    wakeup = _wakeup(rt)
    with wakeup.waiting(wait_time_seconds > 0):
        while True:
            seen = wakeup.generation
            claimed, next_at = _claim(rt, name, max_messages, visibility_timeout)
            left = deadline - time.monotonic()
            if claimed or left <= 0:
                return claimed
            pause = min(RECHECK_SECONDS, left)
            if next_at is not None:
                pause = min(pause, max(0.0, next_at - rt.clock.now()))
            wakeup.wait(seen, pause)


def _claim(rt, name, limit, visibility_timeout) -> tuple[list[ActivityTask], float | None]:
    """Claimed tasks, or ([], when the next queued one becomes available, if any)."""
    queued = (tasks.c.kind == "activity", tasks.c.name == name, tasks.c.status == "queued")
    now = rt.clock.now()
    # A read first: an empty queue costs no write transaction (SQLite's lock is the database's).
    with rt.db.read() as conn:
        next_at = conn.execute(select(func.min(tasks.c.available_at)).where(*queued)).scalar()
    if next_at is None or next_at > now:
        return [], next_at
    with rt.db.write(rt.db.lease_engine) as conn:
        query = (select(tasks.c.id).where(*queued, tasks.c.available_at <= now)
                 .order_by(tasks.c.available_at, tasks.c.id).limit(limit))
        if rt.db.locks_rows:
            query = query.with_for_update(skip_locked=True)
        ids = conn.execute(query).scalars().all()
        if not ids:
            return [], None
        rows = conn.execute(
            select(tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.attempt,
                   tasks.c.max_attempts, runs.c.workflow, runs.c.version, runs.c.data, runs.c.business_key)
            .join(runs, runs.c.id == tasks.c.run_id).where(tasks.c.id.in_(ids))).mappings().all()
        order = {task_id: i for i, task_id in enumerate(ids)}
        claimed = []
        for row in sorted(rows, key=lambda r: order[r["id"]]):
            seconds = visibility_timeout or _declared_timeout(rt, row)
            token = secrets.token_urlsafe(32)
            taken = conn.execute(update(tasks).where(tasks.c.id == row["id"], tasks.c.status == "queued").values(
                status="running", attempt=tasks.c.attempt + 1, token=token, claimed_at=now,
                lease_until=now + seconds, visibility_timeout=seconds, updated_at=now)).rowcount
            if taken != 1:
                continue
            claimed.append(ActivityTask(
                token=token, run_id=row["run_id"], workflow=row["workflow"], version=row["version"],
                state=row["state"], activity=row["name"], data=row["data"], business_key=row["business_key"],
                attempt=row["attempt"] + 1, max_attempts=row["max_attempts"], visibility_timeout=seconds,
                lease_until=now + seconds))
    return claimed, None


def _declared_timeout(rt, row) -> float:
    try:
        spec = rt.registry.get(row["workflow"], row["version"]).step_for(row["state"])
    except WorkflowNotFound:
        spec = None  # this process does not load that workflow: the receiver still gets its task
    return spec.visibility_timeout if isinstance(spec, ActivitySpec) else DEFAULT_VISIBILITY_TIMEOUT


class _Wakeup:
    """Wakes waiting receivers after a change that left a run with open tasks (a new activity
    task is one). Subscribed to the runtime's notifier only while someone waits."""

    def __init__(self, notifier):
        self.notifier = notifier
        self.generation = 0
        self._cond = threading.Condition()
        self._subscription = threading.Lock()
        self._waiting = 0

    def _changed(self, _run_id, _last_seq, status) -> None:
        if status != "running":
            return
        with self._cond:
            self.generation += 1
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> None:
        with self._cond:
            if self.generation == seen:
                self._cond.wait(timeout)

    @contextmanager
    def waiting(self, will_wait: bool):
        if not will_wait:
            yield
            return
        with self._subscription:
            self._waiting += 1
            if self._waiting == 1:
                self.notifier.subscribe(self._changed)
        try:
            yield
        finally:
            with self._subscription:
                self._waiting -= 1
                if self._waiting == 0:
                    self.notifier.unsubscribe(self._changed)


_wakeups: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_wakeups_lock = threading.Lock()


def _wakeup(rt) -> _Wakeup:
    with _wakeups_lock:
        found = _wakeups.get(rt)
        if found is None or found.notifier is not rt.notifier:
            found = _wakeups[rt] = _Wakeup(rt.notifier)
        return found


# -- answering by token ----------------------------------------------------------------

def heartbeat(rt, token: str, visibility_timeout: float | None = None) -> dict:
    """Extend the lease: the task stays invisible for ``visibility_timeout`` seconds from now
    (default: the attempt's current visibility timeout)."""
    visibility_timeout = _check_timeout(visibility_timeout)
    _check_token_shape(token)
    now = rt.clock.now()
    with rt.db.write(rt.db.lease_engine) as conn:
        query = select(tasks).where(tasks.c.token == token, tasks.c.kind == "activity")
        if rt.db.locks_rows:
            query = query.with_for_update()
        row = conn.execute(query).mappings().first()
        stale = _stale(row, now)
        if stale is not None:
            raise stale
        seconds = visibility_timeout or row["visibility_timeout"] or DEFAULT_VISIBILITY_TIMEOUT
        conn.execute(update(tasks).where(tasks.c.id == row["id"], tasks.c.status == "running").values(
            lease_until=now + seconds, visibility_timeout=seconds, updated_at=now))
    return {"lease_until": now + seconds, "visibility_timeout": seconds}


def complete(rt, token: str, event: str | None = None, data=None) -> Run:
    """Finish the attempt: send ``event`` (default: the activity's) with ``data`` to its run.

    An event the run does not accept now raises InvalidTransition and changes nothing:
    the attempt stays running, so the worker may still fail it.
    """
    if event is not None and (not isinstance(event, str) or not event):
        raise InvalidData("event must be a non-empty string", field="event")
    data = check_data(data)
    return Run.from_row(apply(rt, _run_of(rt, token), CompleteActivity(token, event, data)).run)


def fail(rt, token: str, error: str, traceback: str | None = None) -> Run:
    """Record the attempt as failed; the task is received again when its visibility timeout
    ends, or after its last attempt the run takes ``on_error`` or fails."""
    if not isinstance(error, str) or not error:
        raise InvalidData("error must be a non-empty string", field="error")
    op = FailActivity(token, error[:MAX_ERROR_CHARS], traceback)
    return Run.from_row(apply(rt, _run_of(rt, token), op).run)


@dataclass
class CompleteActivity:
    token: str
    event: str | None
    data: dict

    def perform(self, change):
        task = _held(change, self.token)
        spec = change.cls.step_for(task["state"])
        event = self.event or (spec.default if spec is not None else None)
        if event is None:
            raise InvalidData(f"activity {task['name']} needs an event: state {task['state']!r} has no single "
                              "event to default to", field="event")
        StepDone(task["id"], task["attempt"], StepResult(event, self.data), task["claimed_at"],
                 change.now - task["claimed_at"]).perform(change)


@dataclass
class FailActivity:
    token: str
    error: str
    traceback: str | None = None

    def perform(self, change):
        task = _held(change, self.token)
        StepFailed(task["id"], task["attempt"], self.error, self.traceback, task["claimed_at"],
                   retry_in=max(0.0, task["lease_until"] - change.now)).perform(change)


def _run_of(rt, token) -> str:
    _check_token_shape(token)
    with rt.db.read() as conn:
        run_id = conn.execute(select(tasks.c.run_id).where(
            tasks.c.token == token, tasks.c.kind == "activity")).scalar()
    if run_id is None:
        raise _stale(None, 0.0)
    return run_id


def _held(change, token) -> dict:
    """The task this token names, checked under the run's lock; StaleTaskToken otherwise."""
    row = change.conn.execute(select(tasks).where(
        tasks.c.token == token, tasks.c.kind == "activity", tasks.c.run_id == change.row["id"])).mappings().first()
    stale = _stale(row, change.now)
    if stale is None and (change.status not in ACTIVE or change.entries.get(row["state"]) != row["entry_seq"]):
        stale = StaleTaskToken("superseded", f"run {change.row['id']} left state {row['state']!r}; "
                                             "the task's result is no longer wanted")
    if stale is not None:
        raise stale
    return dict(row)


_OVER = {
    "queued": "this attempt is over (failed, or its visibility timeout ended); the task waits to be "
              "received again",
    "succeeded": "the task was already completed",
    "failed": "the task already failed its last attempt",
    "superseded": "the run left the task's state; its result is no longer wanted",
    "cancelled": "the run was cancelled",
}


def _stale(row, now) -> StaleTaskToken | None:
    if row is None:
        return StaleTaskToken("unknown", "no activity task has this token")
    if row["status"] == "running":
        if row["lease_until"] is not None and row["lease_until"] < now:
            return StaleTaskToken("expired", f"the task's visibility timeout ended {now - row['lease_until']:.3f}s "
                                             "ago; it will be received again")
        return None
    return StaleTaskToken(row["status"], _OVER.get(row["status"], f"the task is {row['status']}"))


# -- checks ------------------------------------------------------------------------------

def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_name(name):
    if not isinstance(name, str) or not ACTIVITY_NAME.fullmatch(name):
        raise InvalidData("activity name must be 1-200 letters, digits or _.:-", field="name")


def _check_timeout(value) -> float | None:
    if value is None:
        return None
    if not _number(value) or not 0 < value <= MAX_VISIBILITY_TIMEOUT:
        raise InvalidData("visibility_timeout must be more than 0 and at most 43200 seconds",
                          field="visibility_timeout")
    return float(value)


def _check_token_shape(token):
    if not isinstance(token, str) or not 1 <= len(token) <= 64:
        raise StaleTaskToken("unknown", "no activity task has this token")
