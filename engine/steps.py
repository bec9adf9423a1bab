"""Running one step task: read it, call the user's function outside any transaction, apply the result.

A step that finishes quickly costs one write transaction: its result. The task is
claimed (queued -> running under a lease) only when the step is still running after
``claim_after`` seconds; a claimed task whose worker dies is found by its expired lease.

A delivery that may race another copy of its message claims before it runs the function:
one of a task sent more than once, one of a retry (the failed attempt's own message can come
back beside the retry's: its acknowledgement may be lost with the broker connection), or one
that waited since it was sent longer than half the safety re-send interval (the reconciler
re-sends a live sender's task only after that
whole interval, by when a lazily run first copy has long claimed it). Of two copies that
claim, one wins and the other is dropped unrun; a delivery that finds the task claimed or
done is dropped. The attempt number and the claim's start time are the fencing token
checked under the run's lock: a late or twin result is recorded as ``ignored``.
"""

import asyncio
import copy
import inspect
import logging
import threading
import time
import traceback
from dataclasses import dataclass

from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import DBAPIError

from . import hotsql, limits, pauses, step_logs, tracing
from . import machine as m
from . import metrics
from .definitions import Recheck
from .errors import InterlockError, WorkflowNotFound
from .explain import not_loaded
from .models import runs, tasks
from .operations import StepDone, StepFailed, StepResult
from .transitions import MAX_BROKER_DELAY, apply, check_data
from .workers import unsent

log = logging.getLogger(__name__)
# A claimed task's lease is renewed only this long past its time limit, so a hung thread
# cannot hold a task forever.
LEASE_GRACE = 5.0
# A delayed message may arrive this much before its time and still run.
EARLY_SLACK = 1.0
# Seconds before a delivery whose database read or claim failed is delivered again.
RETRY_DELIVERY = 1.0
# A result the database refused to commit (connection lost, server down) is applied again,
# this many times, 1 s, 2 s, ... apart, instead of running the step again.
RESULT_TRIES = 10


# The task a delivery names, if queued and a step (one not yet due is sent again with its delay).
_RUNNABLE = hotsql.Statement(lambda _dialect, _keys: (
    select(tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.attempt,
           tasks.c.entry_seq, tasks.c.available_at, tasks.c.sent_at, tasks.c.sends, tasks.c.slot, runs.c.workflow,
           runs.c.version, runs.c.data, runs.c.business_key, runs.c.paused_at, runs.c.priority,
           pauses.workflow_paused_clause().label("workflow_paused"),
           tasks.c.trace_context.label("task_trace_context"), runs.c.trace_context)
    .join(runs, runs.c.id == tasks.c.run_id)
    .where(tasks.c.id == bindparam("b_task"), tasks.c.status == "queued", tasks.c.kind == "step")))
# queued -> running under a lease, for the attempt after the stored one; claimed_at is the
# attempt's start time, which tells its result from a twin delivery's.
_CLAIM = update(tasks).where(
    tasks.c.id == bindparam("b_task"), tasks.c.status == "queued", tasks.c.attempt == bindparam("b_previous"),
).values(status="running", attempt=bindparam("b_attempt"), claimed_at=bindparam("b_started"),
         lease_until=bindparam("b_lease_until"), updated_at=bindparam("b_now"))


@dataclass
class Attempt:
    attempt: int
    started_at: float
    renew_until: float
    claimed: bool = False  # a claim was tried (it may have found the task taken)
    renewed_at: float = 0.0
    returned: bool = False  # the function returned; its result waits to be applied


class StepExecutor:
    def __init__(self, rt):
        self.rt = rt
        self._lock = threading.Lock()
        self.running: dict[str, Attempt | None] = {}  # None: being read
        self.claim_after = min(1.0, rt.settings.resend_after / 4)
        self._warned: set = set()  # runs whose unloaded workflow was reported

    def execute(self, task_id: str) -> None:
        """Run a delivered task (the actor)."""
        self._once(task_id, lambda: self.load(task_id))

    def _once(self, task_id: str, begin, limit=None) -> None:
        """Run the task ``begin()`` loads, unless this process already runs it (a twin delivery:
        the first one runs it). The task stays ours until its result is applied."""
        with self._lock:
            if task_id in self.running:
                return
            self.running[task_id] = None
        handed_over = False
        try:
            loaded = begin()
            if loaded is not None:
                self.run(loaded, limit)
                handed_over = True
        finally:
            if not handed_over:
                self._release(task_id)

    def _release(self, task_id: str) -> None:
        with self._lock:
            self.running.pop(task_id, None)

    def load(self, task_id: str):
        """The queued task and its run, or None (a duplicate or stale delivery, or an early
        one, sent again with its delay)."""
        now = self.rt.clock.now()
        try:
            found = self.rt.db.query(lambda conn: hotsql.fetch(conn, _RUNNABLE, {"b_task": task_id}))
        except DBAPIError:
            self._deliver_later(task_id, None)
            return None
        if not found:
            log.debug("task %s not runnable now (duplicate or stale delivery)", task_id)
            return None
        row = found[0]
        if row["paused_at"] is not None or row["workflow_paused"]:
            self._hold(row)
            return None
        if row["available_at"] > now + EARLY_SLACK:
            self._send_early_again(row, now)
            return None
        row["attempt"] += 1
        waited = now - max(row["sent_at"] or now, row["available_at"])
        claim = row["sends"] > 1 or row["attempt"] > 1 or waited > self.rt.settings.resend_after / 2
        return self._begin(row, now, "broker", claim)

    def _begin(self, row: dict, now: float, via: str, claim: bool = False):
        try:
            cls = self.rt.registry.get(row["workflow"], row["version"])
        except WorkflowNotFound:
            self._hand_back(row)
            return None
        spec = cls.step_for(row["state"])
        if spec.limited and via == "broker" and not limits.runs_now(self.rt, row, spec):
            log.debug("task %s waits for a slot of %s", row["id"], spec.limit_name(spec.concurrency))
            return None
        if spec.rate is not None:
            start = limits.reserve(self.rt, row, spec, now)
            if start - now > limits.RATE_LEAD:  # back just before its start, holding no thread meanwhile
                self.rt.dispatcher.send(row["id"], start - now - limits.RATE_LEAD, spec.time_limit, row["priority"])
                return None
            if start > now:
                time.sleep(start - now)
                now = self.rt.clock.now()
        attempt = Attempt(row["attempt"], now, now + spec.time_limit + LEASE_GRACE)
        if claim:
            try:
                with self.rt.db.write(self.rt.db.lease_engine) as conn:
                    won = self._claim(conn, row["id"], attempt, now)
            except DBAPIError:
                self._deliver_later(row["id"], spec.time_limit)
                return None
            if not won:
                log.debug("task %s claimed by another delivery: dropped unrun", row["id"])
                return None
        metrics.observe_claim(row["workflow"], row["available_at"], via, now)
        row["via"] = via
        with self._lock:
            self.running[row["id"]] = attempt
        return row, cls, spec, now

    def _claim(self, conn, task_id: str, attempt: Attempt, now: float) -> bool:
        """Claim the task for ``attempt`` (True) unless done, superseded or taken by a twin."""
        won = conn.execute(_CLAIM, {"b_task": task_id, "b_previous": attempt.attempt - 1,
                                    "b_attempt": attempt.attempt, "b_started": attempt.started_at,
                                    "b_lease_until": now + self.rt.settings.lease_seconds,
                                    "b_now": now}).rowcount == 1
        attempt.claimed, attempt.renewed_at = True, now
        if not won:
            attempt.renew_until = 0.0  # nothing of ours to keep alive
        return won

    def _deliver_later(self, task_id: str, time_limit) -> None:
        """The database could not be read or written: this message comes back in a moment
        (the same single copy; no database write needed)."""
        log.warning("task %s could not be read or claimed (database unreachable); delivering it again in %g s",
                    task_id, RETRY_DELIVERY, extra={"task_id": task_id})
        self.rt.dispatcher.send(task_id, RETRY_DELIVERY, time_limit)

    def _send_early_again(self, row: dict, now: float) -> None:
        """A delivery before the task is due (a twin of an earlier attempt's message, or a
        clock ahead): sent again with the time left, and counted as a send, so that each copy
        claims before it runs. Longer waits are left to the reconciler, as any long retry is."""
        try:
            spec = self.rt.registry.get(row["workflow"], row["version"]).step_for(row["state"])
        except WorkflowNotFound:
            self._hand_back({**row, "attempt": row["attempt"] + 1})
            return
        delay = row["available_at"] - now
        later = delay <= MAX_BROKER_DELAY and self.rt.dispatcher.delivers
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(update(tasks).where(
                tasks.c.id == row["id"], tasks.c.status == "queued", tasks.c.attempt == row["attempt"],
            ).values({"sent_at": now, "sent_by": self.rt.worker_id, "sends": tasks.c.sends + 1} if later
                     else {"sent_at": None}))
        if later and not self.rt.dispatcher.send(row["id"], delay, spec.time_limit, row["priority"]):
            unsent(self.rt, row["id"])

    def _hold(self, row: dict) -> None:
        """The run (or its workflow) is paused: the task is marked unsent, unrun; resuming sends it."""
        log.debug("task %s held: its run or workflow is paused", row["id"])
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(update(tasks).where(
                tasks.c.id == row["id"], tasks.c.status == "queued", tasks.c.attempt == row["attempt"],
            ).values(sent_at=None))

    def _hand_back(self, row: dict) -> None:
        """A task of a workflow this process has not loaded (workers with different
        INTERLOCK_WORKFLOWS share a queue): marked unsent, so that the reconciler of a process
        that loads it sends it again on its next pass, instead of after a re-send backoff."""
        with self.rt.db.write() as conn:
            conn.execute(update(tasks).where(
                tasks.c.id == row["id"], tasks.c.status == "queued", tasks.c.attempt == row["attempt"] - 1,
            ).values(sent_at=None))
        if row["run_id"] not in self._warned:
            if len(self._warned) < 10_000:
                self._warned.add(row["run_id"])
            log.warning("step %s of run %s handed back: %s", row["name"], row["run_id"],
                        not_loaded(self.rt, row["workflow"], row["version"]),
                        extra={"run_id": row["run_id"], "task_id": row["id"]})

    def execute_committed(self, task: dict, run: dict, limit=None) -> None:
        """Run a task this process has just committed, from the committed rows (no read).

        ``limit``: (Dramatiq's time-limit monitor, this thread's id, seconds), for a thread
        Dramatiq does not time itself."""
        row = {"id": task["id"], "run_id": run["id"], "state": task["state"], "name": task["name"],
               "attempt": task["attempt"] + 1, "entry_seq": task["entry_seq"],
               "available_at": task["available_at"], "workflow": run["workflow"],
               "version": run["version"], "data": run["data"], "business_key": run["business_key"],
               "task_trace_context": task.get("trace_context"), "trace_context": run.get("trace_context")}
        self._once(task["id"], lambda: self._begin(row, self.rt.clock.now(), "eager", row["attempt"] > 1), limit)

    def run(self, loaded, limit=None) -> None:
        """Call the step and hand its result over; the task is released once it is applied."""
        row, cls, spec, started_at = loaded
        original = row["data"]
        ctx = m.RunContext(id=row["run_id"], workflow=row["workflow"], version=row["version"],
                           data=copy.deepcopy(original), business_key=row["business_key"],
                           state=row["state"], attempt=row["attempt"], entered_seq=row["entry_seq"],
                           task_id=row["id"])
        traced = tracing.attempt(row, row.get("via", "eager")) if tracing.ON else None
        with step_logs.capture() as logged:
            try:
                value = _call(spec.func, _bare(cls, ctx), ctx, limit, spec.time_limit)
                result = to_result(value, spec, original, ctx.data)
            except (Exception, TimeLimitExceeded) as exc:
                failure = exc, traceback.format_exc()
            else:
                failure = None
        span = None
        if failure is not None:  # said while the attempt's span and log context are current
            self._log_failure(row, failure[0])
        if traced is not None:  # the attempt's span ends; the change applying its result is its child
            span = traced.done("failed" if failure else "recheck" if result.recheck is not None else "succeeded",
                               failure[0] if failure else None)
        if failure is not None:
            self.fail(row, *failure, started_at, logs=logged.result(), trace=span, logged=True)
            return
        duration = self.rt.clock.now() - started_at
        self._hand_over(row, StepDone(row["id"], row["attempt"], result, started_at, duration, logs=logged.result(),
                                      trace=span))

    def fail(self, row, exc, tb, started_at, logs=None, trace=None, logged=False) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if not logged:
            self._log_failure(row, exc)
        self._hand_over(row, StepFailed(row["id"], row["attempt"], error, tb, started_at, logs=logs, trace=trace))

    def _log_failure(self, row, exc) -> None:
        log.info("step %s of run %s failed (attempt %s): %s: %s", row["name"], row["run_id"], row["attempt"],
                 type(exc).__name__, exc, extra={"run_id": row["run_id"], "task_id": row["id"]})

    def _hand_over(self, row, op, tries: int = 1) -> None:
        """Apply ``op`` through the group commit when a worker runs here, else right now."""
        with self._lock:
            attempt = self.running.get(row["id"])
            if attempt is not None:
                attempt.returned = True

        def done(outcome, error):
            if isinstance(error, InterlockError) and isinstance(op, StepDone):
                # The result was refused (event not allowed now, a callback raised): a failed attempt.
                self.fail(row, error, None, op.started_at, logs=op.logs, trace=op.trace)
                return
            if error is not None and not isinstance(error, InterlockError) and tries < RESULT_TRIES:
                # Not applied (say the database is down): the function ran, so its result is
                # applied again later, rather than the step run again (the fence still decides).
                log.warning("result of step %s of run %s not applied (%s); trying again in %d s", row["name"],
                            row["run_id"], error, tries, extra={"run_id": row["run_id"], "task_id": row["id"]})
                timer = threading.Timer(tries, self._hand_over, (row, op, tries + 1))
                timer.daemon = True
                timer.start()
                return
            self._release(row["id"])
            if error is not None:
                # Given up: the task is still queued, and the reconciler sends it again.
                log.warning("result of step %s of run %s not applied: %s", row["name"], row["run_id"],
                            error, extra={"run_id": row["run_id"], "task_id": row["id"]})

        batcher = self.rt.batcher
        if batcher is not None:
            batcher.submit(row["run_id"], op, done)
            return
        try:
            outcome = apply(self.rt, row["run_id"], op)
        except (InterlockError, DBAPIError) as exc:
            done(None, exc)
            return
        except BaseException:
            self._release(row["id"])
            raise
        done(outcome, None)

    def keep_leases(self) -> None:
        """Claim the steps running longer than ``claim_after``; renew the claimed ones' leases."""
        now, lease = self.rt.clock.now(), self.rt.settings.lease_seconds
        with self._lock:
            current = [(tid, a) for tid, a in self.running.items() if a is not None]
        to_claim = [(tid, a) for tid, a in current
                    if not a.claimed and not a.returned and now - a.started_at >= self.claim_after]
        to_renew = [tid for tid, a in current
                    if a.claimed and now - a.renewed_at >= lease / 3 and now < a.renew_until]
        if not to_claim and not to_renew:
            return
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            for task_id, attempt in to_claim:
                self._claim(conn, task_id, attempt, now)
            if to_renew:
                conn.execute(update(tasks).where(tasks.c.id.in_(to_renew), tasks.c.status == "running")
                             .values(lease_until=now + lease))
                for task_id, attempt in current:
                    if task_id in to_renew:
                        attempt.renewed_at = now


def _call(func, instance, ctx, limit, time_limit):
    if limit is None:
        return _completed(func(instance, ctx), time_limit)
    monitor, ident, seconds = limit
    monitor.add_timeout(ident, seconds * 1000)
    try:
        return _completed(func(instance, ctx), time_limit)
    finally:
        monitor.remove_timeout(ident)


def _completed(value, time_limit: float):
    """An ``async def`` step's value: its coroutine run to the end on a loop of this thread's
    own, under the step's time limit (Dramatiq's limit cannot interrupt a loop waiting in select)."""
    if not inspect.iscoroutine(value):
        return value
    return asyncio.run(_limited(value, time_limit))


async def _limited(coroutine, time_limit: float):
    limit = asyncio.timeout(time_limit)
    try:
        async with limit:
            return await coroutine
    except TimeoutError:
        if limit.expired():  # ours, not one the step raised itself
            raise TimeLimitExceeded(f"the step ran past its time limit of {time_limit:g} s") from None
        raise


def _bare(cls, ctx):
    """The workflow object a step gets as ``self``: its methods and ``self.model`` (the run),
    without building a state machine (a step sends nothing: it returns the next event)."""
    instance = cls.__new__(cls)
    instance.__dict__["model"] = ctx
    return instance


def to_result(value, spec, original: dict, data: dict) -> StepResult:
    """Read a step's return value; top-level data keys the step changed are saved too."""
    changed = {k: v for k, v in data.items() if k not in original or original[k] != v}
    if isinstance(value, Recheck):
        return StepResult(None, check_data({**changed, **value.data}, "step data"), value.delay)
    event, extra = None, {}
    if value is None:
        event = spec.default
    elif isinstance(value, str):
        event = value
    elif isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        event, extra = value
    elif isinstance(value, dict):
        event, extra = spec.default, value
    else:
        raise TypeError(f"step {spec.name} returned {value!r}: return an event name, (event, data), "
                        "a data dict, recheck(...) or None")
    if event is None:
        raise TypeError(f"step {spec.name} returned no event, and state {spec.state_id!r} "
                        "has no single event to default to (set step(default=...))")
    return StepResult(event, check_data({**changed, **extra}, "step data"))
