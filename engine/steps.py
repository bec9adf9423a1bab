"""Running one step task: claim it, call the user's function outside any transaction, apply the result.

The claim is a conditional UPDATE (queued -> running, attempt + 1): a duplicate or
stale message finds nothing to claim and is dropped. The attempt number is the
fencing token that ``StepDone``/``StepFailed`` check under the run's lock.
"""

import copy
import logging
import threading
import time
import traceback

from dramatiq.middleware.time_limit import TimeLimitExceeded
from sqlalchemy import select, update

from . import machine as m
from . import metrics
from .definitions import Recheck
from .errors import InterlockError
from .models import runs, tasks
from .operations import StepDone, StepFailed, StepResult
from .transitions import apply, check_data

log = logging.getLogger(__name__)
# A claimed task's lease is renewed only this long past its time limit, so a hung thread
# cannot hold a task forever.
LEASE_GRACE = 5.0


class StepExecutor:
    def __init__(self, rt):
        self.rt = rt
        self._lock = threading.Lock()
        # task id -> time after which its lease is no longer renewed
        self.running: dict[str, float] = {}

    def execute(self, task_id: str) -> None:
        claimed = self.claim(task_id)
        if claimed is None:
            return
        try:
            self.run(claimed)
        finally:
            with self._lock:
                self.running.pop(task_id, None)

    def claim(self, task_id: str):
        rt, now = self.rt, time.time()
        with rt.db.write(rt.db.lease_engine) as conn:
            claimed = conn.execute(update(tasks).where(
                tasks.c.id == task_id, tasks.c.status == "queued", tasks.c.kind == "step",
                tasks.c.available_at <= now + 1.0,
            ).values(status="running", attempt=tasks.c.attempt + 1, claimed_at=now,
                     lease_until=now + rt.settings.lease_seconds, updated_at=now))
            if claimed.rowcount != 1:
                log.debug("task %s not claimable (duplicate or stale delivery)", task_id)
                return None
            row = conn.execute(
                select(tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.attempt,
                       tasks.c.entry_seq, tasks.c.available_at, runs.c.workflow, runs.c.version, runs.c.data,
                       runs.c.business_key)
                .join(runs, runs.c.id == tasks.c.run_id).where(tasks.c.id == task_id)
            ).mappings().one()
        metrics.observe_claim(row["workflow"], row["available_at"])
        cls = rt.registry.get(row["workflow"], row["version"])
        spec = cls.step_for(row["state"])
        with self._lock:
            self.running[task_id] = now + spec.time_limit + LEASE_GRACE
        return dict(row), cls, spec, now

    def run(self, claimed) -> None:
        row, cls, spec, started_at = claimed
        original = row["data"]
        ctx = m.RunContext(id=row["run_id"], workflow=row["workflow"], version=row["version"],
                           data=copy.deepcopy(original), business_key=row["business_key"],
                           state=row["state"], attempt=row["attempt"], entered_seq=row["entry_seq"])
        try:
            instance = m.restore(cls, ctx, [row["state"]])
            value = spec.func(instance, ctx)
            result = to_result(value, spec, original, ctx.data)
        except (Exception, TimeLimitExceeded) as exc:
            self.fail(row, exc, traceback.format_exc(), started_at)
            return
        duration = time.time() - started_at
        try:
            apply(self.rt, row["run_id"], StepDone(row["id"], row["attempt"], result, started_at, duration))
        except InterlockError as exc:
            # The result was refused (event not allowed now, a callback raised): a failed attempt.
            self.fail(row, exc, None, started_at)

    def fail(self, row, exc, tb, started_at) -> None:
        error = f"{type(exc).__name__}: {exc}"
        log.info("step %s of run %s failed (attempt %s): %s", row["name"], row["run_id"],
                 row["attempt"], error, extra={"run_id": row["run_id"], "task_id": row["id"]})
        apply(self.rt, row["run_id"], StepFailed(row["id"], row["attempt"], error, tb, started_at))

    def renew_leases(self) -> None:
        now = time.time()
        with self._lock:
            renewable = [tid for tid, until in self.running.items() if until > now]
        if not renewable:
            return
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(update(tasks).where(tasks.c.id.in_(renewable), tasks.c.status == "running")
                         .values(lease_until=now + self.rt.settings.lease_seconds))


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
