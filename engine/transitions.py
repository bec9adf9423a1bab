"""The one path for every change to a run.

``apply`` locks the run, rebuilds its machine, performs one operation (start, event,
step result, step failure, timer, cancel, retry, data update), records history,
schedules the tasks and timers of entered states, cancels those of exited states,
writes the run, commits, and only then hands new tasks to the broker.

Tasks and timers carry the history seq at which their state was entered; a step
result or timer for an entry the run has left is recorded and ignored. That is what
turns at-least-once delivery into exactly-once transitions.
"""

import copy
import json
from dataclasses import dataclass, field

from sqlalchemy import Double, and_, bindparam, func, insert, or_, select, update
from statemachine.exceptions import TransitionNotAllowed

from . import admission, bindings, children, hotsql, limits, pauses, search, tracing
from . import machine as m
from .errors import (CallbackError, InterlockError, InvalidData, InvalidTransition, RunNotActive,
                     RunNotFound)
from .ids import new_id
from .models import history, runs, signals, tasks, timers
from .timeparse import parse_time

ACTIVE = ("running", "waiting")
OPEN_TASK = ("queued", "limited", "running")  # limited: waiting for a slot (engine/limits.py)
# Retries waiting longer than this are left to the reconciler instead of a delayed message.
MAX_BROKER_DELAY = 30.0
MAX_TRIGGER_CHAIN = 10


MAX_DATA_DEPTH = 32


def check_data(data, what="data") -> dict:
    """A JSON object every database stores and every page shows, or a typed error naming the problem."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidData(f"{what} must be a JSON object, got {type(data).__name__}", field=what)
    try:
        json.dumps(data, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise InvalidData(f"{what} is nested deeper than {MAX_DATA_DEPTH} levels", field=what) from None
    except (TypeError, ValueError, UnicodeEncodeError) as exc:
        raise InvalidData(f"{what} is not valid JSON text: {exc}", field=what) from None
    _check_nested(data, what, 1)
    return data


def _check_nested(value, what, depth):
    """Nesting a reader can follow, and string keys."""
    if depth > MAX_DATA_DEPTH:
        raise InvalidData(f"{what} is nested deeper than {MAX_DATA_DEPTH} levels", field=what)
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidData(f"{what} keys must be strings, got {key!r}", field=what)
            _check_nested(item, what, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_nested(item, what, depth + 1)


# Names python-statemachine's send() takes itself, or gives callbacks itself, and ours: event
# data keys with these names reach callbacks only inside ``data``.
_RESERVED_ARGUMENTS = frozenset({"delay", "send_id", "internal", "event", "event_data", "machine", "model",
                                 "transition", "state", "source", "target", "run", "db", "data"})


def event_arguments(data: dict) -> dict:
    """An event's data as keyword arguments for its callbacks, as python-statemachine passes them."""
    if not data or _RESERVED_ARGUMENTS.isdisjoint(data):
        return data
    return {key: value for key, value in data.items() if key not in _RESERVED_ARGUMENTS}


@dataclass
class Dispatch:
    task_id: str
    delay: float
    time_limit: float
    task: dict | None = None  # the task row as committed (a worker here may run it at once)
    priority: int = 0  # the run's: orders the message where the broker has priorities
    withheld: bool = False  # its task found no slot at the flush (engine/limits.py): not sent


@dataclass
class Outcome:
    run: dict
    history: list = field(default_factory=list)  # the rows appended, as dicts
    dispatch: list = field(default_factory=list)
    created: bool = False
    finished: bool = False  # the run ended (or failed) in this change
    related: list = field(default_factory=list)  # outcomes of runs this change started (children)
    signals: list = field(default_factory=list)  # (signal id, receiving run) written by this change


# Statements of the hot path, built once: building one costs more than running it.
_b = bindparam
# What a change writes to its run, by the bind names of one UPDATE (b_<column>).
_RUN_WRITES = ("status", "state", "configuration", "entries", "history_values", "data", "last_seq",
               "open_tasks", "open_timers", "updated_at", "finished_at", "paused_at")
_UPDATE_RUN = update(runs).where(runs.c.id == _b("b_id")).values(
    {name: _b("b_" + name, type_=runs.c[name].type) for name in _RUN_WRITES})
_CLOSE_TASKS = update(tasks).where(
    tasks.c.run_id == _b("b_run"), tasks.c.status.in_(OPEN_TASK),
    tasks.c.state.in_(_b("b_states", expanding=True)),
).values(status=_b("b_status"), updated_at=_b("b_now"), lease_until=None)
_CLOSE_ALL_TASKS = update(tasks).where(
    tasks.c.run_id == _b("b_run"), tasks.c.status.in_(OPEN_TASK),
).values(status=_b("b_status"), updated_at=_b("b_now"), lease_until=None)
_CLOSE_TASK = update(tasks).where(
    tasks.c.id == _b("b_task"), tasks.c.status.in_(OPEN_TASK),
).values(status=_b("b_status"), updated_at=_b("b_now"), lease_until=None)
_CANCEL_TIMERS = update(timers).where(
    timers.c.run_id == _b("b_run"), timers.c.status == "armed",
    timers.c.state.in_(_b("b_states", expanding=True))).values(status="cancelled")
_CANCEL_ALL_TIMERS = update(timers).where(
    timers.c.run_id == _b("b_run"), timers.c.status == "armed").values(status="cancelled")
_SUSPEND_TIMERS = update(timers).where(
    timers.c.run_id == _b("b_run"), timers.c.status == "armed").values(status="suspended")
_FIRE_TIMER = update(timers).where(timers.c.id == _b("b_timer")).values(status="fired", fired_at=_b("b_now"))
_FINISH_TASK = update(tasks).where(tasks.c.id == _b("b_task")).values(
    status=_b("b_status"), attempt=_b("b_attempt"), claimed_at=_b("b_started"),
    lease_until=None, updated_at=_b("b_now"),
    last_error=func.coalesce(_b("b_last_error", type_=tasks.c.last_error.type), tasks.c.last_error),
    available_at=func.coalesce(_b("b_available_at", type_=Double()), tasks.c.available_at),
    sent_at=_b("b_sent_at", type_=Double()), sent_by=_b("b_sent_by", type_=tasks.c.sent_by.type),
    sends=_b("b_sends", type_=tasks.c.sends.type))


def _inserting(table):
    return hotsql.Statement(lambda _dialect, keys: insert(table).values({k: _b(k) for k in keys}),
                            lambda keys: hotsql.Arrays.insert(table, keys))


def _fixed(statement, arrays: hotsql.Arrays):
    return hotsql.Statement(lambda _dialect, _keys: statement, lambda _keys: arrays)


_HOT_INSERT_RUN, _HOT_INSERT_HISTORY = _inserting(runs), _inserting(history)
_HOT_INSERT_TASKS, _HOT_INSERT_TIMERS = _inserting(tasks), _inserting(timers)
_HOT_INSERT_SIGNALS = _inserting(signals)
# The same three UPDATEs for a whole batch on PostgreSQL: one statement over arrays.
_HOT_UPDATE_RUN = _fixed(_UPDATE_RUN, hotsql.Arrays.update(
    runs, {"b_" + name: runs.c[name] for name in _RUN_WRITES}, key=("b_id", runs.c.id)))
_HOT_FINISH_TASK = _fixed(_FINISH_TASK, hotsql.Arrays(
    "UPDATE tasks SET status = u.b_status, attempt = u.b_attempt, claimed_at = u.b_started, "
    "lease_until = NULL, updated_at = u.b_now, last_error = coalesce(u.b_last_error, tasks.last_error), "
    "available_at = coalesce(u.b_available_at, tasks.available_at), sent_at = u.b_sent_at, "
    "sent_by = u.b_sent_by, sends = u.b_sends FROM :rows WHERE tasks.id = u.b_task",
    {"b_task": tasks.c.id, "b_status": tasks.c.status, "b_attempt": tasks.c.attempt,
     "b_started": tasks.c.claimed_at, "b_now": tasks.c.updated_at, "b_last_error": tasks.c.last_error,
     "b_available_at": tasks.c.available_at, "b_sent_at": tasks.c.sent_at, "b_sent_by": tasks.c.sent_by,
     "b_sends": tasks.c.sends}))
_HOT_FIRE_TIMER = _fixed(_FIRE_TIMER, hotsql.Arrays(
    "UPDATE timers SET status = 'fired', fired_at = u.b_now FROM :rows WHERE timers.id = u.b_timer",
    {"b_timer": timers.c.id, "b_now": timers.c.fired_at}))


class Writes:
    """Rows a transaction writes at its end, one statement per kind: a batch of changes to
    many runs costs the same few round trips as a change to one."""

    def __init__(self):
        self.run_inserts, self.run_updates, self.task_updates, self.timer_updates = [], [], [], []
        self.history, self.tasks, self.timers, self.signals = [], [], [], []
        self.search_deletes, self.search_inserts = [], []  # rows of run_search (engine/search.py)
        self.deferred: dict = {}  # an operation's own statements: {statement: [parameters, ...]}
        # Slots of concurrency limits (engine/limits.py), (change, task, spec, dispatch): taken at
        # the flush before the rows are written, a statement for the batch (PostgreSQL); and
        # (change, task id): given back after them, so that a waiter's row is there to be handed one.
        self.slot_takes, self.slot_gives = [], []

    def defer(self, statement, params: dict) -> None:
        """Run ``statement`` with ``params`` at the flush, with the others like it (one executemany)."""
        self.deferred.setdefault(statement, []).append(params)

    def _flush_deferred(self, conn):
        for statement, rows in self.deferred.items():
            conn.execute(statement, rows)
        self.deferred.clear()

    def flush(self, conn):
        if self.slot_takes:
            limits.take_pending(conn, self)
        self._flush_deferred(conn)
        with hotsql.pipelined(conn):
            self.write(conn)
        if self.slot_gives:
            limits.give_back_pending(conn, self)

    def write(self, conn):
        """``flush``'s statements, in a pipeline the caller holds (with statements of its own)."""
        for statement, rows in ((_HOT_INSERT_RUN, self.run_inserts), (_HOT_UPDATE_RUN, self.run_updates),
                                (_HOT_FINISH_TASK, self.task_updates), (_HOT_FIRE_TIMER, self.timer_updates),
                                (_HOT_INSERT_HISTORY, self.history),
                                (_HOT_INSERT_TASKS, self.tasks), (_HOT_INSERT_TIMERS, self.timers),
                                (_HOT_INSERT_SIGNALS, self.signals)):
            if rows:
                hotsql.execute_many(conn, statement, rows)
                rows.clear()
        if self.search_deletes or self.search_inserts:
            search.flush(conn, self)

    def flush_pending(self, conn):
        """Write the deferred task and timer updates now: an UPDATE by run or state follows."""
        self._flush_deferred(conn)
        for statement, rows in ((_HOT_FINISH_TASK, self.task_updates), (_HOT_FIRE_TIMER, self.timer_updates)):
            if rows:
                hotsql.execute_many(conn, statement, rows)
                rows.clear()


class Change:
    """One transaction's worth of change to one run."""

    def __init__(self, rt, conn, row: dict, cls, now: float, *, new: bool = False, task: dict | None = None,
                 writes: Writes | None = None):
        self.rt, self.conn, self.cls, self.now = rt, conn, cls, now
        self.writes = writes if writes is not None else Writes()
        self.row = row
        self.new = new
        self.task = task  # the task row the operation is about, read with the lock
        # A stored run's data was just decoded from JSON: callbacks may change it in place.
        data = copy.deepcopy(row["data"]) if new else row["data"]
        self.ctx = m.RunContext(id=row["id"], workflow=row["workflow"], version=row["version"],
                                data=data, business_key=row["business_key"], status=row["status"])
        self.ctx.db = conn
        # What the run's search fields hold as read (data may change in place): only fields that
        # differ at the end are written.
        self.search_before = search.values(cls._search, data) if cls._search is not None and not new else None
        # Ids of the active states; the machine is built only when a change needs one.
        self.configuration = list(row["configuration"])
        self.remembered = row.get("history_values") or {}  # of history pseudo-states
        self._machine = None
        self.entries = dict(row["entries"])
        self.seq = row["last_seq"]
        self.status = row["status"]
        self.finished_at = row["finished_at"]
        self.open_tasks = row["open_tasks"]
        self.open_timers = row["open_timers"]
        self.paused_at = row.get("paused_at")  # an operator paused the run (engine/pauses.py)
        self.admission_since = row.get("admission_since")  # waiting for a slot (engine/admission.py)
        self.history_rows: list[dict] = []
        self.new_tasks: list[dict] = []
        self.new_timers: list[dict] = []
        self.dispatch: list[Dispatch] = []
        self.woken: list[Dispatch] = []  # other runs' tasks handed a slot this change freed (engine/limits.py)
        self.related: list[Outcome] = []  # runs started by this change (children), already finished
        self.outcome: Outcome | None = None  # what finish() returned
        self.signals: list[tuple] = []  # (signal id, receiving run) for after the commit

    # -- history ---------------------------------------------------------------

    def record(self, kind, *, event=None, source=None, target=None, cause=None, data=None,
               detail=None, at=None) -> int:
        self.seq += 1
        self.history_rows.append({
            "run_id": self.row["id"], "seq": self.seq, "at": self.now if at is None else at,
            "kind": kind, "event": event, "source": source, "target": target, "cause": cause,
            "data": data or None, "detail": detail or None,
        })
        return self.seq

    # -- the machine -------------------------------------------------------------

    @property
    def machine(self):
        if self._machine is None:
            self._machine = m.restore(self.cls, self.ctx, self.configuration, self.remembered)
        return self._machine

    @machine.setter
    def machine(self, machine):
        self._machine = machine
        self._read_machine()

    def _read_machine(self):
        self.configuration = m.configuration(self._machine)
        if self._machine.history_values:
            self.remembered = m.remembered(self._machine)

    def leaf_ids(self) -> list[str]:
        return m.leaves(self._machine) if self._machine is not None else m.leaves_of(self.cls, self.configuration)

    def is_final(self) -> bool:
        # From the configuration even when the machine was built: a machine restored at a final
        # configuration says it is not terminated, and a run ended by a change that built one
        # after reaching its final state would stay "waiting" there.
        return m.is_final_at(self.cls, self.configuration)

    def accepted(self) -> list[str]:
        return m.accepted_events(self.machine)

    def enabled(self) -> list[str]:
        """Events accepted now with their guards holding (without event data), for error messages."""
        try:
            enabled = {e.id for e in self.machine.enabled_events(run=self.ctx, db=self.conn, data={})}
        except Exception:  # a guard that needs event data: fall back to the events declared here
            return self.accepted()
        return [e for e in self.accepted() if e in enabled]

    def leaves(self) -> str:
        return ",".join(self.leaf_ids())

    def send(self, event: str, data: dict, cause: str, detail=None, triggers: bool = True,
             merge: bool = False) -> int | None:
        """Send ``event`` with ``data`` (callbacks get its keys by name, and all of it as ``data``);
        raise InvalidTransition (nothing changed) or CallbackError.

        ``merge``: also merge ``data`` into the run's data (a step's or an activity's result);
        the data of an event sent from outside is the event's, as in python-statemachine.
        Returns the transition's history seq, or None when a workflow that allows events without
        transitions ignored it."""
        before, before_leaves = set(self.configuration), self.leaves()
        if event not in self.cls._event_ids:
            # Checked here: the machine would look the name up as any attribute ("configuration").
            if self.cls.allow_event_without_transition:
                return self._ignored(event, data, cause, "the workflow declares no such event")
            raise InvalidTransition(self.row["id"], event, self.leaf_ids(), self.enabled(),
                                    "the workflow declares no such event")
        if self.cls.allow_event_without_transition and event not in self.accepted():
            return self._ignored(event, data, cause, "no transition for it in the current state")
        data_before = copy.deepcopy(self.ctx.data) if triggers and self.cls._triggers else None
        self.ctx.entered.clear()
        self.ctx.exited.clear()
        if not self._shortcut(event):
            self._send_to_machine(event, data)
        if merge:
            self.ctx.data.update(data)
        seq = self.record("transition", event=event, source=before_leaves, target=self.leaves(),
                          cause=cause, data=data, detail=detail)
        after = set(self.configuration)
        entered = [s for s in dict.fromkeys(self.ctx.entered) if s in after]
        # Entries and exits as they happened: a self-transition re-enters its state (new timers,
        # a new step task), and a state re-entered without an exit (an internal self-transition
        # with enable_self_transition_entries) loses its old ones too; a state entered and left
        # within this macrostep leaves nothing behind.
        exited = [s for s in dict.fromkeys(self.ctx.exited) if s in before]
        exited += [s for s in entered if s in before and s not in exited]
        self.exit_states(exited)
        self.enter_states(entered, seq)
        if data_before is not None:
            self.fire_triggers(data_before)
        return seq

    def _ignored(self, event, data, cause, reason) -> None:
        self.record("ignored", event=event, cause=cause, data=data, detail={"reason": reason})
        return None

    def _shortcut(self, event) -> bool:
        """Take a transition no callback can observe without the machine (see ``m.shortcuts``)."""
        if self._machine is not None or len(self.configuration) != 1:
            return False
        found = m.shortcuts(self.cls).get((self.configuration[0], event))
        if found is None:
            return False
        target, reenters = found
        if reenters or target != self.configuration[0]:
            self.ctx.exited.append(self.configuration[0])
            self.ctx.entered.append(target)
        self.configuration = [target]
        return True

    def _send_to_machine(self, event, data) -> None:
        try:
            self.machine.send(event, **event_arguments(data), run=self.ctx, db=self.conn, data=data)
        except TransitionNotAllowed:
            reason = "a guard did not hold" if event in self.accepted() else None
            raise InvalidTransition(self.row["id"], event, self.leaf_ids(), self.enabled(), reason) from None
        except InterlockError:
            raise
        except Exception as exc:
            raise CallbackError(self.row["id"], event, exc) from exc
        finally:
            self._read_machine()

    def update_data(self, patch: dict, cause: str, record: bool = True):
        data_before = copy.deepcopy(self.ctx.data) if self.cls._triggers else None
        self.ctx.data.update(patch)
        if record:
            self.record("data_updated", cause=cause, data=patch)
        if data_before is not None:
            self.fire_triggers(data_before)

    def fail(self, detail: dict):
        """The run stops here until retried; its timers wait, suspended."""
        self.status, self.finished_at = "failed", self.now
        if self.open_timers:
            self.writes.flush_pending(self.conn)
            self.conn.execute(_SUSPEND_TIMERS, {"b_run": self.row["id"]})
        self.record("failed", cause="step", source=self.leaves(), detail=detail)

    def fire_triggers(self, data_before: dict):
        """Send the events of triggers whose field changed since ``data_before``.

        Rounds: the events a round sends may change data again, which the next round sees.
        """
        for _ in range(MAX_TRIGGER_CHAIN):
            due = self._due_triggers(data_before)
            if not due:
                return
            data_before = copy.deepcopy(self.ctx.data)
            for spec, old, new in due:
                if self.is_final():
                    return
                if spec.send not in self.accepted() or not self._in_trigger_states(spec):
                    continue
                try:
                    self.send(spec.send, {}, "trigger", triggers=False,
                              detail={"trigger": spec.name, "field": spec.field, "old": old, "new": new})
                except InvalidTransition:
                    continue

    def _in_trigger_states(self, spec) -> bool:
        return not spec.state_ids or bool(set(self.configuration).intersection(spec.state_ids))

    def _due_triggers(self, data_before) -> list:
        due = []
        for spec in self.cls._triggers:
            old, new = data_before.get(spec.field), self.ctx.data.get(spec.field)
            if old == new or not self._in_trigger_states(spec):
                continue
            if spec.when is None or spec.when(self.ctx, old, new):
                due.append((spec, old, new))
        return due

    # -- scheduling ----------------------------------------------------------------

    def enter_states(self, states, seq):
        for state in states:
            self.entries[state] = seq
            spec = self.cls.step_for(state)
            if spec is not None:
                self.add_task(state, seq, spec)
            for timer in self.cls._timers:
                if timer.state_id == state:
                    self.add_timer(state, seq, timer.name, "timer", timer.send, self.due_at(timer))
            if self.cls._children:
                spec = self.cls.child_for(state)
                if spec is not None:
                    children.entered(self, spec, seq)

    def due_at(self, timer) -> float:
        if timer.delay is not None:
            return self.now + timer.delay
        raw = self.ctx.data.get(timer.at_field)
        due = parse_time(raw)
        if due is None:
            raise InvalidData(f"timer {timer.name} needs a time in data field {timer.at_field!r}, "
                              f"got {raw!r}", field=timer.at_field)
        return due

    def add_task(self, state, seq, spec):
        row = {"id": new_id(self.now), "run_id": self.row["id"], "state": state, "entry_seq": seq,
               "name": spec.name, "kind": spec.kind, "status": "queued", "attempt": 0,
               "max_attempts": spec.max_attempts, "available_at": self.now, "sent_at": None,
               "sent_by": None, "sends": 0, "claimed_at": None, "lease_until": None, "token": None, "visibility_timeout": None,
               "last_error": None, "slot": None,
               "created_at": self.now, "updated_at": self.now}
        if tracing.ON:  # the span of this change: the step's attempts are its children
            row["trace_context"] = tracing.traceparent()
        self.schedule(row, 0.0, spec)
        self.new_tasks.append(row)
        self.open_tasks += 1

    def schedule(self, task: dict, delay: float, spec):
        """Mark the task sent and queue its dispatch, if this process can deliver it now.

        Activity tasks are never sent: external workers receive them from the tasks table. The
        task of a step with a concurrency limit first takes its slot, or waits for one (engine/limits.py)."""
        if spec.kind == "step" and spec.rate is not None and task.get("attempt"):
            self.writes.defer(limits.FORGET_RESERVATION, {"b_task": task["id"]})  # a retry reserves again
        admitted = True
        if spec.kind == "step" and spec.concurrency is not None and not self.held():
            admitted = limits.admit(self, task, spec)
            if admitted is False:  # waiting for a slot: sent when one is handed to it
                limits.mark_waiting(task, self.now)
                return
        task["available_at"] = self.now + delay
        dispatch = None
        if spec.kind == "step" and self.rt.dispatcher.delivers and delay <= MAX_BROKER_DELAY and not self.held():
            task["sent_at"], task["sent_by"], task["sends"] = self.now, self.rt.worker_id, 1
            dispatch = Dispatch(task["id"], delay, spec.time_limit, task, self.row.get("priority") or 0)
            self.dispatch.append(dispatch)
        else:
            task["sent_at"], task["sent_by"], task["sends"] = None, None, 0
        if admitted is None:  # its slot is taken at the flush, with the batch's others
            self.writes.slot_takes.append((self, task, spec, dispatch))

    def held(self) -> bool:
        """New steps wait: the run, or its workflow, is paused (engine/pauses.py)."""
        return self.paused_at is not None or self.rt.pauses.held(self.conn, self.cls.workflow_name, self.cls.version)

    def add_timer(self, state, seq, name, kind, event, due_at):
        self.open_timers += 1
        self.new_timers.append({"id": new_id(self.now), "run_id": self.row["id"], "state": state,
                                "entry_seq": seq, "name": name, "kind": kind, "event": event,
                                "due_at": due_at, "status": "armed", "created_at": self.now,
                                "fired_at": None})

    def exit_states(self, states):
        if not states:
            return
        if self.cls._children:
            children.leaving(self, states, f"left state(s) {', '.join(states)}")
        for state in states:
            self.entries.pop(state, None)
        gone = set(states)
        kept = [t for t in self.new_tasks if t["state"] not in gone]
        self.open_tasks -= len(self.new_tasks) - len(kept)
        self.dispatch = [d for d in self.dispatch if d.task_id in {t["id"] for t in kept}]
        self.new_tasks = kept
        timers_kept = [t for t in self.new_timers if t["state"] not in gone]
        self.open_timers -= len(self.new_timers) - len(timers_kept)
        self.new_timers = timers_kept
        # The counters include stored rows: none stored means no UPDATE to send.
        with_steps = [s for s in states if self.cls.step_for(s) is not None]
        if with_steps and self.open_tasks > len(self.new_tasks):
            self.close_tasks("superseded", states=with_steps)
        if self.open_timers > len(self.new_timers):
            self.writes.flush_pending(self.conn)
            self.open_timers -= self.conn.execute(
                _CANCEL_TIMERS, {"b_run": self.row["id"], "b_states": list(states)}).rowcount

    def finish_task(self, task: dict, status: str, started_at: float, *, last_error=None,
                    available_at=None, sent_at=None, sent_by=None, sends=None):
        """Close (or re-queue) an attempt's task: status, the attempt number, when it started."""
        self.writes.task_updates.append({
            "b_task": task["id"], "b_status": status, "b_attempt": task["attempt"], "b_started": started_at,
            "b_now": self.now, "b_last_error": last_error, "b_available_at": available_at,
            "b_sent_at": sent_at if status == "queued" else task["sent_at"],
            "b_sent_by": sent_by if status == "queued" else task["sent_by"],
            "b_sends": sends if status == "queued" else task["sends"]})
        if status not in OPEN_TASK:
            self.open_tasks -= 1
            spec = self.cls.step_for(task["state"])
            if spec is not None and getattr(spec, "concurrency", None) is not None:
                limits.release(self, task["id"])

    def fire_timer(self, timer_id):
        self.writes.timer_updates.append({"b_timer": timer_id, "b_now": self.now})
        self.open_timers -= 1

    def close_tasks(self, status, *, states=None, task_id=None):
        """Close open stored tasks: those of ``states``, the one ``task_id``, or all."""
        self.writes.flush_pending(self.conn)
        params = {"b_run": self.row["id"], "b_status": status, "b_now": self.now}
        if task_id is not None:
            statement, params["b_task"] = _CLOSE_TASK, task_id
        elif states is not None:
            statement, params["b_states"] = _CLOSE_TASKS, list(states)
        else:
            statement = _CLOSE_ALL_TASKS
        self.open_tasks -= self.conn.execute(statement, params).rowcount

    def cancel_everything(self, task_status):
        if self.open_tasks > len(self.new_tasks):
            self.close_tasks(task_status)
        if self.open_timers > len(self.new_timers):
            self.writes.flush_pending(self.conn)
            self.open_timers -= self.conn.execute(_CANCEL_ALL_TIMERS, {"b_run": self.row["id"]}).rowcount

    def signal(self, run_id, kind, payload, *, state=None, entry_seq=None) -> None:
        """Tell run ``run_id`` something in this transaction; it applies it with its own transition."""
        row = children.new_signal(self, run_id, kind, payload, state, entry_seq)
        self.writes.signals.append(row)
        self.signals.append((row["id"], run_id))

    def switch_version(self, cls, configuration, entries):
        """The run moves to another version of its workflow (engine/moving.py), in these states:
        what follows in this change, and the run from now on, is that version's."""
        self.cls, self.ctx.version = cls, cls.version
        self.row = {**self.row, "version": cls.version}
        self.configuration, self.entries, self._machine = list(configuration), dict(entries), None

    # -- commit ------------------------------------------------------------------

    def finish(self) -> Outcome:
        if not self.history_rows and not self.new:
            return Outcome(run=self.row)
        if self.status in ACTIVE:
            if self.is_final():
                leaf = m.final_leaf(self.cls, self.configuration)
                self.status, self.finished_at = self.cls.status_of_final(leaf), self.now
                self.cancel_everything("superseded")
            else:
                self.status = "running" if self.open_tasks > 0 else "waiting"
        finished = self.row["status"] in ACTIVE and self.status not in ACTIVE
        if finished:
            self.paused_at = None  # a step that ran on while paused ended it: nothing to resume
            children.finishing(self)
            if self.cls._max_active is not None and self.status != "failed":  # a failed run keeps its slot
                admission.ending(self)
        values = {"status": self.status, "state": self.leaves(),
                  "configuration": self.configuration, "entries": self.entries,
                  "history_values": self.remembered or None,
                  "data": self.ctx.data, "last_seq": self.seq, "open_tasks": self.open_tasks,
                  "open_timers": self.open_timers, "updated_at": self.now, "finished_at": self.finished_at,
                  "paused_at": self.paused_at}
        if self.new:
            self.writes.run_inserts.append({**self.row, **values})
        else:
            self.writes.run_updates.append({"b_id": self.row["id"], **{"b_" + k: v for k, v in values.items()}})
        if self.cls._search is not None:
            search.sync(self)
        bindings.sync(self, values["state"])
        self.writes.history.extend(self.history_rows)
        self.writes.tasks.extend(self.new_tasks)
        self.writes.timers.extend(self.new_timers)
        # Kept: the flush may still withhold a dispatch or add one (engine/limits.py).
        self.outcome = Outcome(run={**self.row, **values}, history=self.history_rows,
                               dispatch=self.dispatch + self.woken, created=self.new, finished=finished,
                               related=self.related, signals=self.signals)
        return self.outcome


_TASK_COLUMNS = [c.label("task__" + c.name) for c in tasks.c]


def _locking(statement, dialect, of, skip_locked=False):
    """FOR UPDATE where the database locks rows: on PostgreSQL of every table in ``of``, since a
    row joined but not locked is read as of the statement's snapshot (after waiting for the
    run's lock, a task would be its version from before the holder's change, and a stale
    attempt would pass the fence). MariaDB has no FOR UPDATE OF and locks every row read."""
    if dialect == "sqlite":
        return statement
    return statement.with_for_update(of=of if dialect == "postgresql" else None, skip_locked=skip_locked)


_LOCK_RUN = hotsql.Statement(lambda dialect, _keys: _locking(
    select(runs).where(runs.c.id == _b("b_run")), dialect, [runs]))
# The same, passing over a run another transaction holds (SQLite has one writer at a time anyway).
_LOCK_RUN_UNLESS_HELD = hotsql.Statement(lambda dialect, _keys: _locking(
    select(runs).where(runs.c.id == _b("b_run")), dialect, [runs], skip_locked=True))
_LOCK_RUN_WITH_TASK = hotsql.Statement(lambda dialect, _keys: _locking(
    select(runs, *_TASK_COLUMNS).join(tasks, tasks.c.run_id == runs.c.id)
    .where(runs.c.id == _b("b_run"), tasks.c.id == _b("b_task")), dialect, [runs, tasks]))
# One bind per task id (t0, t1, ...): compiled once per batch size.
_LOCK_RUNS_WITH_TASKS = hotsql.Statement(lambda dialect, keys: _locking(
    select(runs, *_TASK_COLUMNS).join(tasks, tasks.c.run_id == runs.c.id)
    .where(tasks.c.id.in_([_b(k) for k in keys])).order_by(runs.c.id), dialect, [runs, tasks]))


# Several workers fire timers at once: each takes runs the others have not locked. The timer
# is locked too: a run another batch fired and unlocked after this statement began is then
# read as it is now (its timer fired, so left out), not as the snapshot's armed row, which
# would fire a second time.
# Only runs of the (workflow, version) pairs this process loads are taken: a run of another
# workflow is never locked here, so it cannot fail the batch (a process that loads it fires it).
_DUE_TIMERS = hotsql.Statement(lambda dialect, keys: _locking(
    select(runs, *[c.label("timer__" + c.name) for c in timers.c]).join(timers, timers.c.run_id == runs.c.id)
    .where(timers.c.status == "armed", timers.c.due_at <= _b("b_now"), _of_loaded_binds(keys), pauses.not_held())
    .order_by(timers.c.due_at).limit(_b("b_limit")), dialect, [runs, timers], skip_locked=True))


def _loaded_binds(registry) -> dict:
    """The loaded workflows as binds: ``b_w<i>`` a name, ``b_w<i>_v<j>`` its versions."""
    binds = {}
    for i, name in enumerate(registry.names()):
        binds[f"b_w{i}"] = name
        for j, version in enumerate(registry.versions(name)):
            binds[f"b_w{i}_v{j}"] = version
    return binds


def _of_loaded_binds(keys):
    """The condition ``_loaded_binds`` fills in: one (workflow = name AND version IN ...) per name."""
    names = [k for k in keys if k.startswith("b_w") and "_v" not in k]
    return or_(*(and_(runs.c.workflow == _b(name), runs.c.version.in_(
        [_b(k) for k in keys if k.startswith(name + "_v")])) for name in names))


def lock_run(conn, run_id) -> dict:
    found = hotsql.fetch(conn, _LOCK_RUN, {"b_run": run_id})
    if not found:
        raise RunNotFound(run_id)
    return found[0]


_RUN_KEYS = [c.key for c in runs.c]


def _split(found, prefix="task__") -> tuple[dict, dict]:
    """(run, other) from a row of runs' columns and another table's, labelled ``<prefix><name>``."""
    row = {key: found.pop(key) for key in _RUN_KEYS}
    return row, {key[len(prefix):]: value for key, value in found.items()}


def lock_runs_with_tasks(conn, task_ids) -> dict:
    """task id -> (locked run, task) for a batch, locking runs in id order."""
    out = {}
    for found in hotsql.fetch(conn, _LOCK_RUNS_WITH_TASKS, {f"t{i}": t for i, t in enumerate(task_ids)}):
        row, task = _split(found)
        out[task["id"]] = (row, task)
    return out


def lock_run_with_task(conn, run_id, task_id) -> tuple[dict, dict | None]:
    """The locked run and one of its tasks, in one round trip (the step-result hot path)."""
    found = hotsql.fetch(conn, _LOCK_RUN_WITH_TASK, {"b_run": run_id, "b_task": task_id})
    if not found:
        return lock_run(conn, run_id), None
    return _split(found[0])


def apply(rt, run_id, op, *, session=None, after_commit=None, unless_held=False) -> Outcome | None:
    """Perform ``op`` on run ``run_id`` in one transaction (the caller's, given ``session``).

    Once committed, the outcome goes to ``after_commit`` (default: the runtime's, which
    sends its tasks and notifies watchers). ``unless_held``: if another transaction holds the
    run, do nothing and return None (for work the holder will see to)."""
    spans = tracing.spans() if tracing.ON else None
    if spans is None:
        return _apply(rt, run_id, op, session, after_commit, unless_held, None)
    try:
        outcome = _apply(rt, run_id, op, session, after_commit, unless_held, spans)
    except BaseException as exc:
        spans.end(exc)
        raise
    spans.end()
    return outcome


def _apply(rt, run_id, op, session, after_commit, unless_held, spans) -> Outcome | None:
    if session is not None:
        conn = session.connection()
        outcome = _perform(rt, conn, run_id, op, spans=spans)
        rt.after_session_commit(session, outcome)
        return outcome
    outcome = rt.db.transaction(lambda conn: _perform(rt, conn, run_id, op, unless_held, spans))
    if outcome is None:
        return None
    (after_commit or rt.after_commit)(outcome)
    return outcome


def _perform(rt, conn, run_id, op, unless_held=False, spans=None) -> Outcome | None:
    now = rt.clock.now()
    token = None
    if run_id is None:
        existing = op.existing(rt, conn)
        if existing is not None:
            return Outcome(run=existing)
        if spans is not None:  # current while the run is made: the run stores it
            token = spans.starting(op)
        try:
            change = op.begin(rt, conn, now)
        except BaseException:
            tracing.detach(token)
            raise
    else:
        task_id = getattr(op, "task_id", None)
        if task_id is not None:
            row, task = lock_run_with_task(conn, run_id, task_id)
        elif unless_held:
            found = hotsql.fetch(conn, _LOCK_RUN_UNLESS_HELD, {"b_run": run_id})
            if not found:
                return None  # held by another transaction (or gone)
            row, task = found[0], None
        else:
            row, task = lock_run(conn, run_id), None
        cls = rt.registry.get(row["workflow"], row["version"])
        change = Change(rt, conn, row, cls, now, task=task)
    if spans is not None:
        outcome = spans.perform(change, op, token)
    else:
        op.perform(change)
        outcome = change.finish()
    change.writes.flush(conn)
    return outcome


def apply_many(rt, items, after_commit=None) -> list:
    """Perform several step results on different runs in one transaction (a group commit).

    ``items`` are (run_id, op) with an op that has ``task_id``. Runs are locked in id
    order, so two batches never deadlock. Any error rolls the whole batch back: the
    caller then applies each item alone. After the commit, each outcome is dispatched.
    """
    spans = tracing.spans(batch=True) if tracing.ON else None

    def work(conn):
        found = lock_runs_with_tasks(conn, [op.task_id for _, op in items])
        locked = []
        for run_id, op in items:
            row, task = found.get(op.task_id, (None, None))
            if row is None or row["id"] != run_id:
                raise _NotInBatch(op.task_id)
            locked.append((row, task, op))
        return perform_locked(rt, conn, locked, spans)

    return _committed(rt, work, after_commit or rt.after_commit, spans)


def _committed(rt, work, after_commit, spans) -> list:
    """Run the transaction ``work``, then each outcome's after-commit work; the outcomes."""
    try:
        outcomes = rt.db.transaction(work)
    except BaseException as exc:
        if spans is not None:
            spans.end(exc)
        raise
    for outcome in outcomes:
        after_commit(outcome)
    if spans is not None:
        spans.end()
    return outcomes


def perform_locked(rt, conn, locked, spans=None) -> list:
    """Perform each (run row, task row or None, op) on runs this transaction has locked.

    ``spans``: the caller's (``tracing.Spans``), ended after its commit; without them each
    change's span ends when its rows are written."""
    now = rt.clock.now()
    writes, outcomes = Writes(), []
    own = tracing.spans(batch=True) if spans is None and tracing.ON else None
    traced = spans or own
    for row, task, op in locked:
        cls = rt.registry.get(row["workflow"], row["version"])
        change = Change(rt, conn, row, cls, now, task=task, writes=writes)
        if traced is not None:
            outcomes.append(traced.perform(change, op))
            continue
        op.perform(change)
        outcomes.append(change.finish())
    writes.flush(conn)
    if own is not None:
        own.end()
    return outcomes


def fire_due_timers(rt, make_op, limit: int) -> int:
    """Fire up to ``limit`` due timers (one per run, of workflows this process loads) in one
    transaction; how many were due."""
    loaded = _loaded_binds(rt.registry)
    if not loaded:
        return 0
    spans = tracing.spans(batch=True) if tracing.ON else None

    def work(conn):
        found = hotsql.fetch(conn, _DUE_TIMERS, {"b_now": rt.clock.now(), "b_limit": limit, **loaded})
        locked, seen = [], set()
        for mapping in found:
            row, timer = _split(mapping, "timer__")
            if row["id"] not in seen:  # a run's next due timer waits for the next pass
                seen.add(row["id"])
                locked.append((row, None, make_op(timer)))
        return perform_locked(rt, conn, locked, spans)

    return len(_committed(rt, work, rt.after_commit, spans))


class _NotInBatch(Exception):
    """A task of the batch was not found with its run: the batch is applied item by item."""


def require_active(change, action):
    if change.status not in ACTIVE:
        raise RunNotActive(change.row["id"], change.status, action)
