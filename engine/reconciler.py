"""The loop every worker runs: fire due timers, send the outbox, recover lost tasks, renew leases,
deliver signals between runs (a child telling its parent it ended), fire due schedule ticks,
delete runs past their retention, work a chunk of a bulk action (engine/batch_work.py).

The broker only moves messages; this loop is what guarantees progress. It runs once at
start-up and then every ``poll_interval`` seconds. Several of them may run at once (one
per worker process): every action it takes is idempotent under the run's lock.

Each duty takes only runs of the workflows (and versions) this process has loaded: a run of
another one is left to a process that loads it, and reported once, as a warning.
"""

import logging
import threading
import time

from sqlalchemy import and_, not_, or_, select, update

from . import admission, batch_work, children, limits, pauses, retention, schedules
from .errors import InterlockError
from .explain import not_loaded
from .models import runs, tasks, timers
from .operations import StepFailed, TimerFired
from .queries import of_loaded_workflows
from .transitions import apply, fire_due_timers
from .workers import sender_gone, unsent

log = logging.getLogger(__name__)
BATCH = 500
TIMER_BATCH = 200
# Chunks of bulk actions a pass works one after another, for up to this long: the other duties'
# queries are not paid again for each chunk, and wait at most this long.
BATCH_SECONDS = 1.0
# Runs of workflows not loaded here are looked for every UNLOADED_EVERY passes, among the first
# UNLOADED_SCAN due timers or tasks of each duty (a bounded index walk, whatever the table size).
UNLOADED_EVERY = 10
UNLOADED_SCAN = 1000
UNLOADED_BATCH = 100
MAX_REPORTED = 10_000  # run ids remembered as reported
# Why a running task whose lease ended counts as a failed attempt, by task kind.
LOST_ERROR = {
    "step": "WorkerLost: the worker stopped renewing its lease (crashed or was killed)",
    "activity": "VisibilityTimeout: the activity worker did not complete, fail or heartbeat the task "
                "within its visibility timeout",
}


class Reconciler:
    def __init__(self, rt, presence=None):
        self.rt = rt
        self.presence = presence  # this process's row in ``workers``, beaten here
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reported: dict[str, None] = {}  # runs already reported as not loaded here, oldest first
        self._reporting = threading.Lock()
        self._passes = 0
        self.retention = retention.Retention(rt)
        self._batches_after = 0.0  # monotonic time before which no chunk of a bulk action is worked

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
        self.rt.keep_clock()
        self.renew_leases()
        if self.presence is not None:
            self.presence.beat()
        fired = self.fire_due_timers()
        sent = self.send_outbox()
        recovered = self.recover_lost_tasks()
        delivered = children.deliver_pending(self.rt)
        scheduled = schedules.fire_due(self.rt)
        batched = self.work_batches()
        limits.reclaim(self.rt)
        admission.reclaim(self.rt)
        # Last, one batch a pass and paced by itself: a backlog of old runs is never a reason to
        # go again at once, so it delays neither the duties above nor the transitions.
        self.retention.tick()
        busy = (fired >= TIMER_BATCH or max(sent, recovered) >= BATCH or delivered >= children.BATCH
                or scheduled >= schedules.BATCH or batched > 0)
        with self._reporting:
            look, self._passes = self._passes % UNLOADED_EVERY == 0, self._passes + 1
        if look and not busy:  # through a backlog, the runs this process can move come first
            self.report_unloaded()
        return busy

    def work_batches(self) -> int:
        """Chunks of bulk actions for up to BATCH_SECONDS, then none for a while: they take at most
        ``INTERLOCK_BATCH_SHARE`` of this process's time (the runs' own work goes on meanwhile)."""
        now = time.monotonic()
        if now < self._batches_after:
            return 0
        read = batch_work.work_for(self.rt, BATCH_SECONDS)
        took = time.monotonic() - now
        if read:
            self._batches_after = now + took / self.rt.settings.batch_share
        return read

    def renew_leases(self) -> None:
        self.rt.executor.keep_leases()

    def fire_due_timers(self) -> int:
        """Due timers in batches (one transaction each); a batch that fails goes one by one."""
        try:
            return fire_due_timers(self.rt, lambda t: TimerFired(t["id"], row=t), TIMER_BATCH)
        except Exception:
            log.warning("a batch of due timers failed; firing them one by one", exc_info=True)
        with self.rt.db.read() as conn:
            due = conn.execute(select(timers.c.id, timers.c.run_id).join(runs, runs.c.id == timers.c.run_id).where(
                timers.c.status == "armed", timers.c.due_at <= self.rt.clock.now(), of_loaded_workflows(self.rt.registry),
                pauses.not_held(),
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
        """Send the tasks whose message may be lost (see ``_needs_send``)."""
        if not self.rt.dispatcher.delivers:
            return 0
        now = self.rt.clock.now()
        needs_send = self._needs_send(now)
        # Only tasks of workflows loaded here: their time limit is known, and a process that
        # lacks the workflow would only hand its task to the broker for any worker to fail it.
        with self.rt.db.read() as conn:
            pending = conn.execute(
                select(tasks.c.id, tasks.c.state, runs.c.workflow, runs.c.version, runs.c.priority,
                       tasks.c.available_at)
                .join(runs, runs.c.id == tasks.c.run_id)
                .where(needs_send, of_loaded_workflows(self.rt.registry), pauses.not_held()).limit(BATCH)).all()
        if not pending:
            return 0
        taken = self._take(needs_send, [task_id for task_id, *_ in pending], now)
        sent = 0
        for task_id, state, workflow, version, priority, available_at in pending:
            if task_id not in taken:
                continue  # another reconciler took it
            spec = self.rt.registry.get(workflow, version).step_for(state)
            # A copy sent again after waiting goes up a level per AGING seconds waited: behind a
            # steady stream of higher priorities (RabbitMQ delivers strictly by level), not forever.
            aged = priority + int(max(0.0, now - available_at) / limits.AGING)
            if self.rt.dispatcher.send(task_id, 0.0, spec.time_limit if spec else None, aged):
                sent += 1
            else:
                unsent(self.rt, task_id)
        if sent:
            log.info("sent %d task(s) from the outbox", sent)
        return len(pending)

    def _needs_send(self, now):
        """A queued step task, due, whose message may be lost: never sent (or its send failed,
        or the broker restarted since: both mark it unsent), or sent by a worker process that
        died (before publishing it, or while running it eagerly), or unclaimed for the long
        safety interval ``resend_after``. Waiting behind a backlog is none of these."""
        settings = self.rt.settings
        stale = now - settings.resend_after
        # Each safety re-send waits at least as long as the task had already waited when it was
        # last sent (R, 2R, 4R, …): behind a long queue, copies do not pile up faster than it drains.
        return and_(tasks.c.status == "queued", tasks.c.kind == "step", tasks.c.available_at <= now,
                    or_(tasks.c.sent_at.is_(None),
                        sender_gone(now, settings.lease_seconds, self.rt.worker_id),
                        and_(tasks.c.sent_at < stale, tasks.c.available_at < stale,
                             now - tasks.c.sent_at > tasks.c.sent_at - tasks.c.available_at)))

    def _take(self, needs_send, task_ids, now) -> set:
        """Mark the tasks still needing a send as sent, in one transaction; the ids this one took."""
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            # A task sent more than once claims before it runs (steps.py): two copies never both run.
            sent = {"sent_at": now, "sent_by": self.rt.worker_id, "sends": tasks.c.sends + 1}
            if conn.dialect.update_returning:
                return set(conn.execute(update(tasks).where(tasks.c.id.in_(task_ids), needs_send)
                                        .values(sent).returning(tasks.c.id)).scalars())
            return {task_id for task_id in task_ids
                    if conn.execute(update(tasks).where(tasks.c.id == task_id, needs_send)
                                    .values(sent)).rowcount == 1}

    def recover_lost_tasks(self) -> int:
        """Running tasks whose lease expired: their worker died (a step's) or let the visibility
        timeout pass (an activity's). Each counts as a failed attempt, and is queued again.
        Only of workflows loaded here: the retry policy is the workflow's."""
        # The lost tasks, then their runs by id, in two statements: joined (or the tasks in a
        # subquery), with no table statistics (autovacuum off) PostgreSQL walked every run of the
        # loaded workflows on each pass, 1-2 s at 100,000 runs; most passes find no lost task.
        with self.rt.db.read() as conn:
            found = conn.execute(select(tasks.c.id, tasks.c.run_id, tasks.c.attempt, tasks.c.claimed_at,
                                        tasks.c.kind).where(tasks.c.status == "running",
                                                            tasks.c.lease_until < self.rt.clock.now())
                                 .limit(UNLOADED_SCAN)).all()
            of_run = {run_id: (workflow, version) for run_id, workflow, version in conn.execute(
                select(runs.c.id, runs.c.workflow, runs.c.version).where(
                    runs.c.id.in_(sorted({row.run_id for row in found}))))} if found else {}
        registry = self.rt.registry
        loaded = {(name, version) for name in registry.names() for version in registry.versions(name)}
        lost = [row for row in found if of_run.get(row.run_id) in loaded][:BATCH]
        for task_id, run_id, attempt, claimed_at, kind in lost:
            log.warning("%s task %s of run %s lost its worker (lease expired); retrying", kind, task_id, run_id,
                        extra={"run_id": run_id, "task_id": task_id})
            apply(self.rt, run_id, StepFailed(task_id, attempt, LOST_ERROR.get(kind, LOST_ERROR["step"]), None,
                                              claimed_at, lost=True))
        return len(lost)

    def report_unloaded(self) -> int:
        """Warn once per run about runs with a due timer, a step to send or a lost task whose
        workflow (version) this process has not loaded, so no duty here takes them."""
        now = self.rt.clock.now()
        waiting = {
            "a due timer": select(timers.c.run_id).where(timers.c.status == "armed", timers.c.due_at <= now)
            .order_by(timers.c.due_at),
            "a lost task": select(tasks.c.run_id).where(tasks.c.status == "running", tasks.c.lease_until < now),
        }
        if self.rt.dispatcher.delivers:
            waiting["a step to send"] = select(tasks.c.run_id).where(self._needs_send(now))
        other = not_(of_loaded_workflows(self.rt.registry))
        found: dict[str, tuple] = {}
        with self.rt.db.read() as conn:
            for what, run_ids in waiting.items():
                # The LIMIT inside keeps the planner on the index: no scan of all runs for the NOT.
                scanned = run_ids.limit(UNLOADED_SCAN).subquery()
                query = (select(runs.c.id, runs.c.workflow, runs.c.version)
                         .join(scanned, scanned.c.run_id == runs.c.id).where(other).limit(UNLOADED_BATCH))
                for run_id, workflow, version in conn.execute(query):
                    found.setdefault(run_id, (workflow, version, []))[2].append(what)
        with self._reporting:
            new = [(run_id, *facts) for run_id, facts in found.items() if run_id not in self._reported]
            for run_id, *_ in new:
                self._reported[run_id] = None
            while len(self._reported) > MAX_REPORTED:
                del self._reported[next(iter(self._reported))]
        for run_id, workflow, version, what in new:
            log.warning("run %s has %s, skipped: %s", run_id, " and ".join(dict.fromkeys(what)),
                        not_loaded(self.rt, workflow, version), extra={"run_id": run_id})
        return len(new)
