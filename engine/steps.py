"""Running one step task: read it, call the user's function outside any transaction, apply the result.

A step that finishes quickly costs one write transaction: its result. The task is
claimed (queued -> running under a lease) only when the step is still running after
``CLAIM_AFTER`` seconds, which is well before the reconciler would send it again; a
claimed task whose worker dies is found by its expired lease. A duplicate delivery of a
task that is already claimed or done reads nothing and is dropped; two deliveries that
race before either claims both run the function (at-least-once), but only the first
result is applied: the attempt number is the fencing token checked under the run's lock.
"""

import asyncio
import copy
import inspect
import logging
import threading
import traceback
from dataclasses import dataclass

from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import bindparam, select, update

from . import hotsql
from . import machine as m
from . import metrics
from .definitions import Recheck
from .errors import InterlockError, WorkflowNotFound
from .explain import not_loaded
from .models import runs, tasks
from .operations import StepDone, StepFailed, StepResult
from .transitions import apply, check_data

log = logging.getLogger(__name__)
# A claimed task's lease is renewed only this long past its time limit, so a hung thread
# cannot hold a task forever.
LEASE_GRACE = 5.0


# The task a delivery names, if it may run now: queued, a step, and due (a second early is
# fine: a delayed message may arrive slightly before its time).
_RUNNABLE = hotsql.Statement(lambda _dialect, _keys: (
    select(tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.attempt,
           tasks.c.entry_seq, tasks.c.available_at, runs.c.workflow, runs.c.version,
           runs.c.data, runs.c.business_key)
    .join(runs, runs.c.id == tasks.c.run_id)
    .where(tasks.c.id == bindparam("b_task"), tasks.c.status == "queued", tasks.c.kind == "step",
           tasks.c.available_at <= bindparam("b_before"))))


@dataclass
class Attempt:
    attempt: int
    started_at: float
    renew_until: float
    claimed: bool = False
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
        """The queued task and its run, or None (a duplicate, stale or early delivery)."""
        now = self.rt.clock.now()
        with self.rt.db.read() as conn:
            found = hotsql.fetch(conn, _RUNNABLE, {"b_task": task_id, "b_before": now + 1.0})
        if not found:
            log.debug("task %s not runnable now (duplicate or stale delivery)", task_id)
            return None
        row = found[0]
        row["attempt"] += 1
        return self._begin(row, now, "broker")

    def _begin(self, row: dict, now: float, via: str):
        try:
            cls = self.rt.registry.get(row["workflow"], row["version"])
        except WorkflowNotFound:
            self._hand_back(row)
            return None
        metrics.observe_claim(row["workflow"], row["available_at"], via, now)
        spec = cls.step_for(row["state"])
        with self._lock:
            self.running[row["id"]] = Attempt(row["attempt"], now, now + spec.time_limit + LEASE_GRACE)
        return row, cls, spec, now

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
               "version": run["version"], "data": run["data"], "business_key": run["business_key"]}
        self._once(task["id"], lambda: self._begin(row, self.rt.clock.now(), "eager"), limit)

    def run(self, loaded, limit=None) -> None:
        """Call the step and hand its result over; the task is released once it is applied."""
        row, cls, spec, started_at = loaded
        original = row["data"]
        ctx = m.RunContext(id=row["run_id"], workflow=row["workflow"], version=row["version"],
                           data=copy.deepcopy(original), business_key=row["business_key"],
                           state=row["state"], attempt=row["attempt"], entered_seq=row["entry_seq"],
                           task_id=row["id"])
        try:
            value = _call(spec.func, _bare(cls, ctx), ctx, limit, spec.time_limit)
            result = to_result(value, spec, original, ctx.data)
        except (Exception, TimeLimitExceeded) as exc:
            self.fail(row, exc, traceback.format_exc(), started_at)
            return
        duration = self.rt.clock.now() - started_at
        self._hand_over(row, StepDone(row["id"], row["attempt"], result, started_at, duration))

    def fail(self, row, exc, tb, started_at) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.info("step %s of run %s failed (attempt %s): %s", row["name"], row["run_id"],
                 row["attempt"], error, extra={"run_id": row["run_id"], "task_id": row["id"]})
        self._hand_over(row, StepFailed(row["id"], row["attempt"], error, tb, started_at))

    def _hand_over(self, row, op) -> None:
        """Apply ``op`` through the group commit when a worker runs here, else right now."""
        with self._lock:
            attempt = self.running.get(row["id"])
            if attempt is not None:
                attempt.returned = True

        def done(outcome, error):
            if isinstance(error, InterlockError) and isinstance(op, StepDone):
                # The result was refused (event not allowed now, a callback raised): a failed attempt.
                self.fail(row, error, None, op.started_at)
                return
            self._release(row["id"])
            if error is not None:
                # Not applied (say the database is down): the task is still queued, and the
                # reconciler sends it again.
                log.warning("result of step %s of run %s not applied: %s", row["name"], row["run_id"],
                            error, extra={"run_id": row["run_id"], "task_id": row["id"]})

        batcher = self.rt.batcher
        if batcher is not None:
            batcher.submit(row["run_id"], op, done)
            return
        try:
            outcome = apply(self.rt, row["run_id"], op)
        except InterlockError as exc:
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
                claimed = conn.execute(update(tasks).where(
                    tasks.c.id == task_id, tasks.c.status == "queued",
                    tasks.c.attempt == attempt.attempt - 1,
                ).values(status="running", attempt=attempt.attempt, claimed_at=attempt.started_at,
                         lease_until=now + lease, updated_at=now)).rowcount
                attempt.claimed, attempt.renewed_at = True, now
                if claimed != 1:
                    # Done, superseded or taken by a twin delivery: nothing of ours to keep alive.
                    attempt.renew_until = 0.0
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
