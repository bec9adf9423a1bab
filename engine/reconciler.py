"""The loop every worker runs: fire due timers, send the outbox, recover lost tasks, renew leases.

The broker only moves messages; this loop is what guarantees progress. It runs once at
start-up and then every ``poll_interval`` seconds. Several of them may run at once (one
per worker process): every action it takes is idempotent under the run's lock.
"""

import logging
import threading
import time

from sqlalchemy import and_, or_, select, update

from .errors import InterlockError
from .models import runs, tasks, timers
from .operations import StepFailed, TimerFired
from .transitions import apply, fire_due_timers

log = logging.getLogger(__name__)
BATCH = 500
TIMER_BATCH = 200
# Why a running task whose lease ended counts as a failed attempt, by task kind.
LOST_ERROR = {
    "step": "WorkerLost: the worker stopped renewing its lease (crashed or was killed)",
    "activity": "VisibilityTimeout: the activity worker did not complete, fail or heartbeat the task "
                "within its visibility timeout",
}


class Reconciler:
    def __init__(self, rt):
        self.rt = rt
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Reconciler":
        self._thread = threading.Thread(target=self._loop, name="interlock-reconciler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                busy = self.tick()
            except Exception:
                log.exception("reconciler pass failed; trying again")
                busy = False
            if not busy:
                self._stop.wait(self.rt.settings.poll_interval)

    def tick(self) -> bool:
        """One pass; True when it found a full batch of something (so go again at once)."""
        self.renew_leases()
        fired = self.fire_due_timers()
        sent = self.send_outbox()
        recovered = self.recover_lost_tasks()
        return fired >= TIMER_BATCH or max(sent, recovered) >= BATCH

    def renew_leases(self) -> None:
        self.rt.executor.keep_leases()

    def fire_due_timers(self) -> int:
        """Due timers in batches (one transaction each); a batch that fails goes one by one."""
        try:
            return fire_due_timers(self.rt, lambda t: TimerFired(t["id"], row=t), TIMER_BATCH)
        except Exception:
            log.warning("a batch of due timers failed; firing them one by one", exc_info=True)
        with self.rt.db.read() as conn:
            due = conn.execute(select(timers.c.id, timers.c.run_id).where(
                timers.c.status == "armed", timers.c.due_at <= time.time(),
            ).order_by(timers.c.due_at).limit(TIMER_BATCH)).all()
        for timer_id, run_id in due:
            try:
                apply(self.rt, run_id, TimerFired(timer_id))
            except InterlockError as exc:
                # Refused in a callback or by its data: record it as rejected instead of
                # retrying on every pass.
                try:
                    apply(self.rt, run_id, TimerFired(timer_id, error=str(exc)))
                except InterlockError:
                    log.exception("timer %s of run %s could not fire", timer_id, run_id)
        return len(due)

    def send_outbox(self) -> int:
        """Send tasks never sent (committed by a process without a broker) or sent but unclaimed."""
        if not self.rt.dispatcher.delivers:
            return 0
        now = time.time()
        stale = now - self.rt.settings.resend_after
        # Each re-send waits at least as long as the task had already waited when it was last
        # sent (R, 2R, 4R, …): behind a long queue, copies do not pile up faster than it drains.
        needs_send = and_(tasks.c.status == "queued", tasks.c.kind == "step", tasks.c.available_at <= now,
                          or_(tasks.c.sent_at.is_(None),
                              and_(tasks.c.sent_at < stale, tasks.c.available_at < stale,
                                   now - tasks.c.sent_at > tasks.c.sent_at - tasks.c.available_at)))
        with self.rt.db.read() as conn:
            pending = conn.execute(
                select(tasks.c.id, tasks.c.state, runs.c.workflow, runs.c.version)
                .join(runs, runs.c.id == tasks.c.run_id).where(needs_send).limit(BATCH)).all()
        if not pending:
            return 0
        taken = self._take(needs_send, [task_id for task_id, *_ in pending], now)
        sent = 0
        for task_id, state, workflow, version in pending:
            if task_id not in taken:
                continue  # another reconciler took it
            spec = self.rt.registry.get(workflow, version).step_for(state)
            self.rt.dispatcher.send(task_id, 0.0, spec.time_limit if spec else None)
            sent += 1
        if sent:
            log.info("sent %d task(s) from the outbox", sent)
        return len(pending)

    def _take(self, needs_send, task_ids, now) -> set:
        """Mark the tasks still needing a send as sent, in one transaction; the ids this one took."""
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            if conn.dialect.update_returning:
                return set(conn.execute(update(tasks).where(tasks.c.id.in_(task_ids), needs_send)
                                        .values(sent_at=now).returning(tasks.c.id)).scalars())
            return {task_id for task_id in task_ids
                    if conn.execute(update(tasks).where(tasks.c.id == task_id, needs_send)
                                    .values(sent_at=now)).rowcount == 1}

    def recover_lost_tasks(self) -> int:
        """Running tasks whose lease expired: their worker died (a step's) or let the visibility
        timeout pass (an activity's). Each counts as a failed attempt, and is queued again."""
        with self.rt.db.read() as conn:
            lost = conn.execute(select(tasks.c.id, tasks.c.run_id, tasks.c.attempt, tasks.c.claimed_at,
                                       tasks.c.kind).where(
                tasks.c.status == "running", tasks.c.lease_until < time.time()).limit(BATCH)).all()
        for task_id, run_id, attempt, claimed_at, kind in lost:
            log.warning("%s task %s of run %s lost its worker (lease expired); retrying", kind, task_id, run_id,
                        extra={"run_id": run_id, "task_id": task_id})
            apply(self.rt, run_id, StepFailed(task_id, attempt, LOST_ERROR.get(kind, LOST_ERROR["step"]), None,
                                              claimed_at, lost=True))
        return len(lost)
