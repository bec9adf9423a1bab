"""``Interlock``: the engine's Python API over one database, one broker and the loaded workflows."""

import logging

import dramatiq
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import bindings, children, maps, metrics, pauses, schedules
from . import operations as ops
from . import queries
from . import search as search_fields
from .batching import Batcher
from .clock import Clock
from .broker import Dispatcher, build_broker, is_in_memory, time_limit_monitor
from .config import Settings
from .db import Database
from .eager import EagerSteps
from .errors import InvalidData
from .notify import Notifier
from .reconciler import Reconciler
from .registry import Registry
from .steps import StepExecutor
from .transitions import apply, check_data
from .workers import Presence, unsent, warn_of_unloaded_versions

log = logging.getLogger(__name__)
_PENDING = "interlock_pending"


def _check_key(value, name):
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > 255 or "\x00" in value:
        raise InvalidData(f"{name} must be a non-empty string of at most 255 characters, without NUL",
                          field=name)
    return value


def _check_priority(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not -1000 <= value <= 1000:
        raise InvalidData(f"priority must be an integer from -1000 to 1000, got {value!r}", field="priority")
    return value


def _check_event(name):
    if not isinstance(name, str) or not name:
        raise InvalidData("event must be a non-empty string", field="event")
    return name


def _dispatch_pending(session) -> None:
    """After a Session's commit: what ``start``/``send(session=...)`` committed in it goes out
    (a SAVEPOINT released is not the commit: it waits for the transaction's)."""
    if session.in_nested_transaction():
        return
    for rt, outcome in session.info.pop(_PENDING, ()):
        rt.after_commit(outcome)


def _drop_pending(session) -> None:
    session.info.pop(_PENDING, None)


# Listening on the Session class once costs a dict lookup per commit; listening on each session
# per transaction cost a third of a millisecond.
event.listen(Session, "after_commit", _dispatch_pending)
event.listen(Session, "after_rollback", _drop_pending)


class Interlock:
    """Start, drive and inspect runs. Every change goes through ``transitions.apply``."""

    def __init__(self, settings: Settings | None = None, *, registry: Registry | None = None,
                 check_schema: bool = True):
        self.settings = settings or Settings.from_env()
        self.db = Database(self.settings.database_url)
        if check_schema:
            self.db.check_schema()
        # Every durable time is the database server's: see engine/clock.py.
        self.clock = Clock(warn_over=self.settings.clock_skew_warn)
        self.keep_clock()
        self.registry = registry or Registry().load_modules(self.settings.workflow_modules)
        self.broker = build_broker(self.settings.broker_url, self.clock, self.settings.broker_priorities)
        self.executor = StepExecutor(self)
        self.dispatcher = Dispatcher(self.broker, self.settings.queue, self.executor.execute)
        self.notifier = Notifier(self.db, now=self.clock.now)
        self.pauses = pauses.Pauses(self)
        self._worker: "Worker | None" = None
        self._booted = False
        # Step results go through it while a worker runs in this process (group commit).
        self.batcher: Batcher | None = None
        self.eager: EagerSteps | None = None
        # The id of this process's row in ``workers`` while a worker runs here: the sender of
        # the tasks it commits (None: tasks are re-sent only by the long safety interval).
        self.worker_id: str | None = None
        bindings.attach_all(self)  # models bound in the workflows modules (engine/bindings.py)

    def keep_clock(self) -> None:
        """Measure the clock's offset to the database's if the last measurement is old (every
        30 s: the reconciler and the API call this); a failure keeps the last offset."""
        if not self.clock.is_stale():
            return
        try:
            with self.db.read() as conn:
                self.clock.measure(conn)
        except Exception as exc:
            log.warning("could not measure the clock offset to the database (%s); keeping %.3f s",
                        exc, self.clock.offset)

    # -- after a commit ------------------------------------------------------------

    def after_commit(self, outcome, signals: list | None = None) -> None:
        """Send the committed tasks, wake watchers, deliver the signals written (or, given
        ``signals``, add them to it: the caller delivers a batch's together)."""
        if self.eager is not None and outcome.dispatch:  # a worker runs here: its eager threads may take them
            outcome.dispatch = [d for d in outcome.dispatch
                                if d.delay or d.task is None or not self.eager.offer(d, outcome.run)]
        for item in outcome.dispatch:
            if not self.dispatcher.send(item.task_id, item.delay, item.time_limit, item.priority):
                unsent(self, item.task_id)
        if outcome.history:
            run = outcome.run
            self.notifier.publish(run["id"], run["last_seq"], run["status"])
            metrics.observe(outcome)
        for related in outcome.related:  # child runs started in the same transaction
            self.after_commit(related, signals)
        if outcome.signals:
            if signals is None:
                children.deliver(self, outcome.signals)
            else:
                signals.extend(outcome.signals)

    def after_session_commit(self, session, outcome) -> None:
        """Dispatch only once the caller's transaction commits; forget it if it rolls back."""
        session.info.setdefault(_PENDING, []).append((self, outcome))

    def session(self, **kwargs) -> Session:
        """A Session for your own writes that ``start``/``send(session=...)`` join.

        On SQLite its transactions take the write lock when they begin, so a worker's commit
        in between cannot make the run's update fail with "database is locked".
        """
        return Session(self.db.write_engine, **kwargs)

    def bind(self, model, *, workflow: str, **options) -> bindings.Binding:
        """Bind ``model``'s rows to ``workflow`` in this process (``engine.bindings.Binding``):
        their flushes start, drive and cancel its runs, and its transitions write ``state_column``.

        Workers in other processes write the state column only for bindings their workflows
        modules declare: declare it there (``engine.bind(...)`` at module level) instead. The
        model's table must already be in this Interlock's database."""
        self.registry.get(workflow)
        binding = bindings.Binding(model, workflow=workflow, **options)
        try:
            binding.attach(self, strict=True)
            self.registry.add_binding(binding)
        except Exception:
            binding.forget()
            raise
        return binding

    # -- changing runs -------------------------------------------------------------

    def start(self, workflow: str, data=None, *, business_key=None, idempotency_key=None,
              version=None, session=None, priority: int = 0) -> queries.Run:
        """Start a run; with ``idempotency_key``, a repeat returns the first run unchanged.
        ``priority``: higher first where its steps wait for a slot (engine/limits.py)."""
        return self.start_run(workflow, data, business_key=business_key, idempotency_key=idempotency_key,
                              version=version, session=session, priority=priority)[0]

    def start_run(self, workflow: str, data=None, *, business_key=None, idempotency_key=None,
                  version=None, session=None, priority: int = 0) -> tuple[queries.Run, bool]:
        """Like ``start``, also saying whether the run was created (False: an idempotent repeat)."""
        cls = self.registry.get(workflow, version)
        op = ops.Start(cls, check_data(data), _check_key(business_key, "business_key"),
                       _check_key(idempotency_key, "idempotency_key"), priority=_check_priority(priority))
        try:
            outcome = apply(self, None, op, session=session)
        except IntegrityError:
            # Another start with the same idempotency key committed first.
            if idempotency_key is None or session is not None:
                raise
            with self.db.read() as conn:
                existing = op.existing(self, conn)
            if existing is None:
                raise
            return queries.Run.from_row(existing), False
        return queries.Run.from_row(outcome.run), outcome.created

    def send(self, run_id: str, event_name: str, data=None, *, session=None, cause="event",
             queue: bool = False) -> queries.Run:
        """Send an event; to a paused run, refused (``RunPaused``) unless ``queue``: then it is
        kept, and applied in order when the run is resumed."""
        op = ops.SendEvent(_check_event(event_name), check_data(data), cause, queue=bool(queue))
        return queries.Run.from_row(apply(self, run_id, op, session=session).run)

    def update_data(self, run_id: str, patch, *, session=None) -> queries.Run:
        op = ops.UpdateData(check_data(patch, "patch"))
        return queries.Run.from_row(apply(self, run_id, op, session=session).run)

    def cancel(self, run_id: str, reason: str | None = None) -> queries.Run:
        return queries.Run.from_row(apply(self, run_id, ops.Cancel(reason)).run)

    def retry(self, run_id: str) -> queries.Run:
        return queries.Run.from_row(apply(self, run_id, ops.Retry()).run)

    # -- pausing (engine/pauses.py) ------------------------------------------------------

    def pause(self, run_id: str, reason: str | None = None) -> queries.Run:
        """Pause an active run: its steps are not started and its timers do not fire until
        ``resume``; pausing a paused run changes nothing."""
        return queries.Run.from_row(apply(self, run_id, ops.Pause(reason)).run)

    def resume(self, run_id: str) -> queries.Run:
        return queries.Run.from_row(apply(self, run_id, ops.Resume()).run)

    def set_priority(self, run_id: str, priority: int) -> queries.Run:
        """Change a run's priority: its steps waiting for a slot move in the queue at once."""
        outcome = apply(self, run_id, ops.SetPriority(_check_priority(priority)))
        return queries.Run.from_row(outcome.run)

    def pause_workflow(self, workflow: str, version: int | None = None, reason: str | None = None) -> dict:
        """Pause every run of a workflow (of one version, else of all) without touching them."""
        return pauses.pause_workflow(self, workflow, version, reason)

    def resume_workflow(self, workflow: str, version: int | None = None) -> bool:
        return pauses.resume_workflow(self, workflow, version)

    def paused_workflows(self) -> list[dict]:
        return pauses.paused_workflows(self)

    # -- reading ---------------------------------------------------------------------

    def get(self, run_id: str) -> queries.Run:
        with self.db.read() as conn:
            return queries.get_run(conn, run_id)

    def history(self, run_id: str, after: int = 0, limit: int | None = None) -> list[queries.HistoryEntry]:
        with self.db.read() as conn:
            queries.get_run(conn, run_id)
            return queries.get_history(conn, run_id, after, limit)

    def list_runs(self, *, search=None, **filters) -> queries.Page:
        """Runs newest first; filters: workflow, version, status, state, business_key,
        created_after, created_before, cursor, limit, id_prefix, and ``search`` on the search
        fields workflows declare: ``{"customer": "ACME", "total": [(">=", 10), ("<", 100)]}``
        (operators =, >, >=, <, <=, prefix). InvalidSearch for a filter the loaded workflows
        cannot answer."""
        if search:
            filters["search"] = self.search_conditions(search, filters.get("workflow"))
        with self.db.read() as conn:
            return queries.list_runs(conn, **filters)

    def search_conditions(self, search: dict, workflow: str | None = None) -> list:
        """``search`` filters checked against the loaded workflows (engine/search.py)."""
        return search_fields.conditions(self.registry, search, workflow)

    def children(self, run_id: str, **filters) -> queries.Page:
        """The run's child runs, newest first; filters: status, workflow, state (the parent's
        state that started them), cursor (the previous page's ``next``), limit."""
        with self.db.read() as conn:
            return queries.list_children(conn, run_id, **filters)

    def map_items(self, run_id: str, name: str, **page) -> dict:
        """A page of a run's map ``name``: its counters and items in item order, each with its
        status, child run and result; page: entry_seq, after (the previous page's ``next``), limit."""
        with self.db.read() as conn:
            return maps.items_page(conn, run_id, name, **page)

    # -- working ---------------------------------------------------------------------

    def worker(self, threads: int | None = None) -> "Worker":
        """The step worker, reconciler and timers of this process (start() it, or use ``with``)."""
        if self._worker is None:
            self._worker = Worker(self, threads or self.settings.worker_threads)
        return self._worker

    def close(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        bindings.detach_all(self)
        self.notifier.close()
        self.broker.close()
        self.db.dispose()


class Worker:
    """A Dramatiq worker on the runtime's broker plus the reconciler loop."""

    def __init__(self, rt: Interlock, threads: int):
        self.rt, self.threads = rt, threads
        self._dramatiq: dramatiq.Worker | None = None
        self.reconciler: Reconciler | None = None

    def start(self) -> "Worker":
        if self._dramatiq is not None:
            return self
        broker = self.rt.broker
        self.rt.dispatcher.check_queue()
        self.presence = Presence(self.rt)
        self.presence.register()
        self.rt.worker_id = self.presence.id
        warn_of_unloaded_versions(self.rt)
        if is_in_memory(broker):
            # Sends from this process now reach a worker.
            self.rt.dispatcher.delivers = True
        if not self.rt._booted:
            broker.emit_after("process_boot")  # starts the TimeLimit monitor (once per process)
            self.rt._booted = True
        self._dramatiq = dramatiq.Worker(broker, worker_threads=self.threads, worker_timeout=100)
        # The default prefetch (2 x threads) starves threads that finish fast on Redis.
        self._dramatiq.queue_prefetch = max(64, self.threads * 2)
        self.rt.batcher = Batcher(self.rt).start()
        if self.rt.settings.eager_threads:
            self.rt.eager = EagerSteps(self.rt.executor, self.rt.settings.eager_threads,
                                       time_limit_monitor(broker)).start()
        self._dramatiq.start()
        schedules.sync_declared(self.rt)  # the code's schedules, before the first pass fires them
        self.reconciler = Reconciler(self.rt, self.presence)
        self.reconciler.tick()  # recovery at start-up, before new work piles on
        self.reconciler.start()
        return self

    def stop(self) -> None:
        if self._dramatiq is None:
            return
        self.reconciler.stop()
        self._dramatiq.stop(timeout=10_000)
        clean = True
        if self.rt.eager is not None:
            for dispatch in self.rt.eager.stop():
                clean &= self.rt.dispatcher.send(dispatch.task_id, 0.0, dispatch.time_limit, dispatch.priority)
            clean &= not self.rt.eager.busy()
            self.rt.eager = None
        self.rt.batcher.stop()
        self.rt.batcher = None
        self.rt.worker_id = None
        try:
            self.presence.stopped(clean)
        except Exception:  # noqa: BLE001 - then it looks dead, and its tasks are sent again
            log.warning("could not mark worker %s stopped", self.presence.id, exc_info=True)
        # Dramatiq leaves the stopped worker's hook on the broker; a later worker adds its own.
        broker = self.rt.broker
        broker.middleware = [m for m in broker.middleware if getattr(m, "worker", None) is not self._dramatiq]
        self._dramatiq = None
        if self.rt._worker is self:
            self.rt._worker = None
        if is_in_memory(self.rt.broker):
            self.rt.dispatcher.delivers = False

    def __enter__(self) -> "Worker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
