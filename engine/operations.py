"""The operations ``transitions.apply`` performs: each changes one run inside its transaction."""

from dataclasses import dataclass, field

from sqlalchemy import bindparam, select, update

from . import admission, children, maps, moving, pauses, tracing
from . import machine as m
from .errors import (CallbackError, InterlockError, InvalidTransition, MigrationRefused, RunNotActive,
                     RunPaused)
from .ids import new_id
from .models import limit_waiters, migration_runs, runs, tasks, timers
from .transitions import ACTIVE, Change, require_active


@dataclass
class Start:
    cls: type
    data: dict
    business_key: str | None = None
    idempotency_key: str | None = None
    parent: tuple | None = None  # (parent run id, its state, its entry seq) for a child run
    priority: int = 0  # higher first, where runs wait for a slot (engine/limits.py)

    def existing(self, rt, conn):
        if self.idempotency_key is None:
            return None
        row = conn.execute(select(runs).where(
            runs.c.workflow == self.cls.workflow_name,
            runs.c.idempotency_key == self.idempotency_key)).mappings().first()
        return dict(row) if row else None

    def begin(self, rt, conn, now, writes=None) -> Change:
        row = {"id": new_id(now), "workflow": self.cls.workflow_name, "version": self.cls.version,
               "status": "running", "state": "", "configuration": [], "entries": {}, "history_values": None,
               "data": self.data, "business_key": self.business_key,
               "idempotency_key": self.idempotency_key, "last_seq": 0, "open_tasks": 0, "open_timers": 0,
               "created_at": now, "updated_at": now, "finished_at": None,
               "parent_id": None, "parent_state": None, "parent_seq": None, "paused_at": None,
               "priority": self.priority, "admission_since": None}
        if self.parent is not None:
            row["parent_id"], row["parent_state"], row["parent_seq"] = self.parent
        if tracing.ON:  # the start's span (a child run: its parent's change's): the run's trace
            row["trace_context"] = tracing.traceparent()
        return Change(rt, conn, row, self.cls, now, new=True, writes=writes)

    def perform(self, change: Change):
        if m.is_plain(self.cls):  # no entry callback can run: the initial state is all there is
            change.configuration = [self.cls.initial_state.id]
        else:
            try:
                change.machine = m.create(self.cls, change.ctx, run=change.ctx, db=change.conn,
                                          data=self.data)
            except InterlockError:
                raise
            except Exception as exc:
                raise CallbackError(change.row["id"], "start", exc) from exc
        seq = change.record("started", target=change.leaves(), cause="start", data=self.data,
                            detail={"workflow": self.cls.workflow_name, "version": self.cls.version,
                                    "business_key": self.business_key})
        if self.cls._max_active is not None and not admission.start(change, seq):
            return  # held: its states are entered when it is admitted (engine/admission.py)
        change.enter_states(list(change.configuration), seq)


@dataclass
class SendEvent:
    event: str
    data: dict
    cause: str = "event"
    queue: bool = False  # a paused run keeps the event, and applies it on resume

    def perform(self, change: Change):
        if change.status not in ACTIVE and change.cls.allow_event_without_transition:
            return  # as python-statemachine, such a workflow ignores events once it has ended
        require_active(change, f"take event {self.event!r}")
        if change.paused_at is not None:
            if not self.queue:
                raise RunPaused(change.row["id"], f"take event {self.event!r}")
            change.signal(change.row["id"], "event", {"event": self.event, "data": self.data, "cause": self.cause})
            change.record("event_queued", event=self.event, cause=self.cause, data=self.data,
                          detail={"reason": "the run is paused: applied when it is resumed"})
            return
        if change.admission_since is not None:  # waiting for a slot: applied once admitted
            if self.event not in change.cls._event_ids and not change.cls.allow_event_without_transition:
                raise InvalidTransition(change.row["id"], self.event, change.leaf_ids(), change.accepted(),
                                        "the workflow declares no such event")
            admission.queue(change, "event", {"event": self.event, "data": self.data, "cause": self.cause},
                            f"event {self.event!r}")
            return
        change.send(self.event, self.data, self.cause)


@dataclass
class UpdateData:
    patch: dict
    cause: str = "data"

    def perform(self, change: Change):
        require_active(change, "update its data")
        if change.paused_at is not None:  # its triggers would move the run
            raise RunPaused(change.row["id"], "update its data")
        if change.admission_since is not None:  # its triggers would move the run: applied once admitted
            admission.queue(change, admission.QUEUED_DATA, {"patch": self.patch, "cause": self.cause}, "the update")
            return
        change.update_data(self.patch, self.cause)


@dataclass
class StepResult:
    """What a step returned: an event (with data), or a recheck after ``recheck`` seconds."""

    event: str | None
    data: dict = field(default_factory=dict)
    recheck: float | None = None


# Why a result is ignored when another delivery of the same attempt claimed the task.
LEASE_HELD_ELSEWHERE = "another worker holds the lease"


def _load_task(change: Change, task_id, attempt, started_at) -> dict | None:
    """The task if this attempt's result still counts; else records why it is ignored.

    An attempt counts while the task is ``running`` under that attempt number and claimed by
    this attempt, or still ``queued`` just before it (a short step finishes before it is ever
    claimed). Two deliveries of one task take the same attempt number; a claim records its
    holder's start time (``claimed_at``), so while one holds the lease the other's result is
    ignored, whichever finishes first.
    """
    row = change.task
    if row is None or row["id"] != task_id:
        found = change.conn.execute(select(tasks).where(tasks.c.id == task_id)).mappings().first()
        row = dict(found) if found else None
    reason = None
    if row is None or row["run_id"] != change.row["id"]:
        reason = "unknown task"
    elif not ((row["status"] == "running" and row["attempt"] == attempt)
              or (row["status"] == "queued" and row["attempt"] == attempt - 1)):
        reason = f"task is {row['status']} (attempt {row['attempt']}), result was for attempt {attempt}"
    elif row["status"] == "running" and row["claimed_at"] != started_at:
        reason = LEASE_HELD_ELSEWHERE
    elif change.status not in ACTIVE or change.entries.get(row["state"]) != row["entry_seq"]:
        reason = (f"run is {change.status}" if change.status not in ACTIVE
                  else f"run left state {row['state']!r} before the step finished")
        change.close_tasks("superseded", task_id=task_id)
    if reason is None:
        return {**row, "attempt": attempt}
    change.record("ignored", cause="step", at=started_at,
                  detail={"task": task_id, "attempt": attempt, "reason": reason})
    return None


def _started(change, task, started_at):
    change.record("step_started", cause="step", at=started_at,
                  detail={"task": task["id"], "step": task["name"], "state": task["state"],
                          "attempt": task["attempt"]})


@dataclass
class StepDone:
    task_id: str
    attempt: int
    result: StepResult
    started_at: float
    duration: float
    logs: list | None = None  # what the step logged during the attempt (engine/step_logs.py)
    trace: object = field(default=None, repr=False, compare=False)  # the attempt's span context

    def perform(self, change: Change):
        task = _load_task(change, self.task_id, self.attempt, self.started_at)
        if task is None:
            return
        _started(change, task, self.started_at)
        change.finish_task(task, "succeeded", self.started_at)
        detail = {"task": task["id"], "step": task["name"], "attempt": task["attempt"],
                  "duration": round(self.duration, 6)}
        if self.logs:
            detail["logs"] = self.logs
        if self.result.recheck is not None:
            due = change.now + self.result.recheck
            change.record("step_rechecked", cause="step", data=self.result.data,
                          detail={**detail, "recheck_in": self.result.recheck})
            change.add_timer(task["state"], task["entry_seq"], task["name"], "recheck", None, due)
            if self.result.data:
                change.update_data(self.result.data, "step", record=False)
            return
        change.record("step_succeeded", cause="step", event=self.result.event,
                      data=self.result.data, detail=detail)
        change.send(self.result.event, self.result.data, "step", detail={"task": task["id"]}, merge=True)


@dataclass
class StepFailed:
    task_id: str
    attempt: int
    error: str
    traceback: str | None
    started_at: float
    lost: bool = False
    # Seconds until the retry, instead of the spec's backoff (an activity failed by its worker
    # is received again when its visibility timeout ends).
    retry_in: float | None = None
    logs: list | None = None  # what the step logged during the attempt (engine/step_logs.py)
    trace: object = field(default=None, repr=False, compare=False)  # the attempt's span context

    def perform(self, change: Change):
        task = _load_task(change, self.task_id, self.attempt, self.started_at)
        if task is None:
            return
        _started(change, task, self.started_at)
        spec = change.cls.step_for(task["state"])
        detail = {"task": task["id"], "step": task["name"], "attempt": task["attempt"],
                  "duration": round(change.now - self.started_at, 6),
                  "error": self.error, "traceback": self.traceback, "lost": self.lost or None}
        if self.logs:
            detail["logs"] = self.logs
        if task["attempt"] < task["max_attempts"]:
            delay = spec.delay_before(task["attempt"] + 1) if self.retry_in is None else self.retry_in
            change.record("step_failed", cause="step", detail={**detail, "retry_in": delay})
            change.schedule(task, delay, spec)
            waits = task["status"] == "limited"  # for a slot (engine/limits.py)
            change.finish_task(task, "limited" if waits else "queued", self.started_at, last_error=self.error,
                               available_at=task["available_at"], sent_at=task["sent_at"],
                               sent_by=task["sent_by"], sends=task["sends"])
            return
        change.record("step_failed", cause="step", detail={**detail, "final": True})
        change.finish_task(task, "failed", self.started_at, last_error=self.error)
        if spec.on_error:
            try:
                change.send(spec.on_error, {}, "step_error", detail={"task": task["id"], "error": self.error})
                return
            except InvalidTransition as exc:
                detail["on_error"] = str(exc)
        change.fail({"task": task["id"], "step": task["name"], "error": self.error,
                     "on_error": detail.get("on_error")})


@dataclass
class TimerFired:
    timer_id: str
    # Set when a first try failed in a callback: record the failure instead of retrying forever.
    error: str | None = None
    # The timer row, when the caller read it with the run's lock (a batch of due timers).
    row: dict | None = None

    def perform(self, change: Change):
        timer = self.row
        if timer is None:
            found = change.conn.execute(select(timers).where(timers.c.id == self.timer_id)).mappings().first()
            timer = dict(found) if found else None
        if timer is None or timer["status"] != "armed":
            return
        if change.held():  # paused since the timer was read as due: it fires on resume
            return
        change.fire_timer(timer["id"])
        detail = {"timer": timer["name"], "timer_id": timer["id"], "kind": timer["kind"],
                  "due_at": timer["due_at"], "lag": round(change.now - timer["due_at"], 6)}
        if change.status not in ACTIVE or change.entries.get(timer["state"]) != timer["entry_seq"]:
            change.record("ignored", cause="timer", event=timer["event"],
                          detail={**detail, "reason": "state entry already left"})
            return
        if timer["kind"] == "recheck":
            change.record("timer_fired", cause="timer", detail=detail)
            change.add_task(timer["state"], timer["entry_seq"], change.cls.step_for(timer["state"]))
            return
        change.record("timer_fired", cause="timer", event=timer["event"], detail=detail)
        if self.error is not None:
            change.record("event_rejected", cause="timer", event=timer["event"],
                          detail={"timer": timer["name"], "error": self.error})
            return
        try:
            change.send(timer["event"], {}, "timer", detail={"timer": timer["name"]})
        except InvalidTransition as exc:
            change.record("event_rejected", cause="timer", event=timer["event"],
                          detail={"timer": timer["name"], "error": str(exc)})


@dataclass
class Cancel:
    reason: str | None = None

    def perform(self, change: Change):
        require_active(change, "be cancelled")
        if change.cls._children:
            children.leaving(change, list(change.configuration), "was cancelled")
        change.cancel_everything("cancelled")
        change.status, change.finished_at, change.paused_at = "cancelled", change.now, None
        change.record("cancelled", cause="cancel", source=change.leaves(),
                      detail={"reason": self.reason} if self.reason else None)


@dataclass
class Retry:
    def perform(self, change: Change):
        if change.status != "failed":
            raise RunNotActive(change.row["id"], change.status, "be retried (only failed runs can)")
        if change.cls._children and maps.retry_failed(change):
            return
        failed = change.conn.execute(select(tasks).where(
            tasks.c.run_id == change.row["id"], tasks.c.status == "failed",
        ).order_by(tasks.c.updated_at.desc())).mappings().all()
        task = next((t for t in failed if change.entries.get(t.state) == t.entry_seq), None)
        if task is None:
            raise RunNotActive(change.row["id"], change.status, "be retried: no failed step to run again")
        change.conn.execute(update(timers).where(
            timers.c.run_id == change.row["id"], timers.c.status == "suspended").values(status="armed"))
        change.status, change.finished_at = "running", None
        change.record("retried", cause="retry", detail={"step": task.name, "state": task.state,
                                                        "failed_task": task.id})
        change.add_task(task.state, task.entry_seq, change.cls.step_for(task.state))



@dataclass
class Pause:
    """Stop starting new work: no step is sent and no timer fires until ``Resume``."""

    reason: str | None = None

    def perform(self, change: Change):
        require_active(change, "be paused")
        if change.paused_at is not None:
            return  # already paused: nothing changes
        change.paused_at = change.now
        change.record("paused", cause="operator", source=change.leaves(),
                      detail={"reason": self.reason} if self.reason else None)


@dataclass
class Resume:
    """Go on: the held steps are sent, due timers fire (the reconciler's next pass), and the
    events queued meanwhile and the children's ends are applied, in the order they came."""

    def perform(self, change: Change):
        if change.paused_at is None:
            return  # not paused: nothing changes
        change.paused_at = None
        change.record("resumed", cause="operator", source=change.leaves())
        if change.status in ACTIVE:
            pauses.send_held(change)
        # Right after the commit, the run applies what waited (each signal in order, and one
        # that raises in a callback is refused alone).
        change.signals.append((None, change.row["id"]))


@dataclass
class Migrate:
    """Move the run to another version of its workflow, as migration plan ``plan`` (its row)
    judged it (engine/moving.py), if it is still where the plan saw it."""

    plan: dict
    # A chunk of runs read together (``prefetch``): {"planned": {run id: row}, "rows": {run id: (tasks, timers)}}.
    prefetched: dict | None = None

    def prefetch(self, conn, run_ids: list) -> dict:
        """What ``check`` reads of each run, for these locked runs at once (a batch's chunk)."""
        planned = {row.run_id: row for row in conn.execute(
            select(migration_runs.c.run_id, migration_runs.c.last_seq, migration_runs.c.shape,
                   migration_runs.c.outcome).where(
                migration_runs.c.plan_id == self.plan["id"], migration_runs.c.run_id.in_(run_ids),
                migration_runs.c.run_id >= min(run_ids), migration_runs.c.run_id <= max(run_ids)))}
        return {"planned": planned, "rows": moving.read(conn, run_ids)}

    def check(self, change: Change) -> tuple | None:
        """Why the run does not move now, as (batch item outcome, reason), or None (it moves).

        ``skipped``: not the plan's to move (ended, not in the plan, judged impossible);
        ``refused``: it changed since the plan (its history went on, or what it waits on)."""
        plan, run_id = self.plan, change.row["id"]
        known = self.prefetched if self.prefetched is not None else self.prefetch(change.conn, [run_id])
        planned = known["planned"].get(run_id)
        if planned is None:
            return "skipped", f"the run is not in plan {plan['id']}"
        if change.row["version"] != plan["from_version"]:
            return "skipped", f"the run is on version {change.row['version']} now, not {plan['from_version']}"
        if change.status not in moving.MOVABLE:
            return "skipped", f"the run is {change.status}"
        shape = plan["shapes"][planned.shape]
        if planned.outcome == moving.IMPOSSIBLE:
            return "skipped", shape["reason"]
        if change.seq != planned.last_seq:
            return "refused", (f"the run moved on since the plan (history entry {change.seq}, "
                               f"planned at {planned.last_seq})")
        new_cls = change.rt.registry.get(plan["workflow"], plan["to_version"])
        self._rows = known["rows"][run_id]
        self._verdict = moving.judge(moving.situation(change.row, *self._rows), change.cls, new_cls,
                                     plan["mapping"])
        if self._verdict.shown() != shape:
            why = self._verdict.reason or "; ".join(self._verdict.changes) or "nothing to change"
            return "refused", f"what the run waits on changed since the plan (now {self._verdict.outcome}: {why})"
        self._new_cls, self._checked = new_cls, run_id
        return None

    def perform(self, change: Change):
        if getattr(self, "_checked", None) != change.row["id"]:  # not checked by a batch item just now
            checked = self.check(change)
            if checked is not None:
                raise MigrationRefused(change.row["id"], checked[1])
        moving.move(change, self._verdict, self._new_cls, *self._rows, self.plan)


_SET_PRIORITY = update(runs).where(runs.c.id == bindparam("b_id")).values(priority=bindparam("b_priority"))
_WAITER_PRIORITY = update(limit_waiters).where(limit_waiters.c.run_id == bindparam("b_id")).values(
    priority=bindparam("b_priority"))


@dataclass
class SetPriority:
    """A run's priority: higher first where its steps wait for a slot (engine/limits.py)."""

    priority: int

    def perform(self, change: Change):
        require_active(change, "change its priority")
        before = change.row.get("priority") or 0
        if before == self.priority:
            return
        params = {"b_id": change.row["id"], "b_priority": self.priority}
        change.writes.defer(_SET_PRIORITY, params)
        change.writes.defer(_WAITER_PRIORITY, params)
        if change.admission_since is not None:  # its place in its workflow's queue
            change.writes.defer(admission.WAITER_PRIORITY, params)
        change.row = {**change.row, "priority": self.priority}
        change.record("priority_changed", cause="operator", detail={"from": before, "to": self.priority})
