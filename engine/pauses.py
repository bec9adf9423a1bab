"""Pausing: a run, or a whole workflow, stops starting new work until it is resumed.

A paused run (``runs.paused_at``, set and cleared by the ``Pause`` and ``Resume`` operations
under the run's lock, with history rows) keeps its state: its steps are not sent (a message
already on its way is handed back unrun when it arrives), its timers do not fire (one that
came due fires on resume), the ends of its children wait, and events sent to it are refused
(or, sent with ``queue=True``, kept in order and applied on resume). A step already running
finishes, and its result is applied; the step that follows waits.

A paused workflow (a ``pauses`` row; version 0 stands for every version) holds the steps and
timers of all its runs the same way, without touching their rows; events and children's ends
still apply. Resuming it deletes the row: the reconcilers then send the held steps and fire the
due timers on their next pass. Each process reads the ``pauses`` table at most once a second
(``Pauses.held``), so a step committed in the instant a workflow is paused may still start
eagerly in the process that committed it; a worker receiving a step's message reads the table
itself (engine/steps.py), so nothing sent through the broker starts once the pause committed.
"""

import threading

from sqlalchemy import and_, delete, exists, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from .errors import InvalidData, WorkflowNotFound
from .models import pauses, runs, tasks

REFRESH = 1.0  # seconds a process trusts its copy of the pauses table


def workflow_paused_clause():
    """True for a run whose workflow (this version, or every version) is paused."""
    return exists(select(pauses.c.workflow).where(
        pauses.c.workflow == runs.c.workflow, pauses.c.version.in_((0, runs.c.version))).correlate(runs))


def not_held():
    """The condition a run must meet for its steps to be sent and its timers to fire."""
    return and_(runs.c.paused_at.is_(None), ~workflow_paused_clause())


class Pauses:
    """This process's copy of the ``pauses`` table, read at most every ``REFRESH`` seconds."""

    def __init__(self, rt):
        self.rt = rt
        self._lock = threading.Lock()
        self._paused: set = set()  # (workflow, version), version 0 for every version
        self._read_at = None

    def held(self, conn, workflow: str, version: int) -> bool:
        """Whether new work of this workflow version waits (read with ``conn`` when stale)."""
        now = self.rt.clock.now()
        if self._read_at is None or now - self._read_at > REFRESH:
            found = {(w, v) for w, v in conn.execute(select(pauses.c.workflow, pauses.c.version))}
            with self._lock:
                self._paused, self._read_at = found, now
        paused = self._paused
        return bool(paused) and ((workflow, 0) in paused or (workflow, version) in paused)

    def forget(self) -> None:
        """Read the table again next time (this process just changed it)."""
        self._read_at = None


def send_held(change) -> int:
    """On resume: send the run's steps held while it was paused (unless its workflow is paused
    too: then the reconcilers send them once that pause ends); how many."""
    if change.held() or not change.rt.dispatcher.delivers:
        return 0
    from .transitions import Dispatch

    change.writes.flush_pending(change.conn)
    held = change.conn.execute(select(tasks.c.id, tasks.c.state, tasks.c.available_at).where(
        tasks.c.run_id == change.row["id"], tasks.c.status == "queued", tasks.c.kind == "step",
        tasks.c.sent_at.is_(None))).all()
    for task_id, state, available_at in held:
        spec = change.cls.step_for(state)
        delay = max(0.0, available_at - change.now)
        if spec is None or delay > 0:
            continue  # a retry not yet due: the reconciler sends it when it is
        change.conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.sent_at.is_(None)).values(
            sent_at=change.now, sent_by=change.rt.worker_id, sends=tasks.c.sends + 1))
        change.dispatch.append(Dispatch(task_id, 0.0, spec.time_limit, priority=change.row.get("priority") or 0))
    return len(held)


def pause_workflow(rt, workflow: str, version: int | None = None, reason: str | None = None) -> dict:
    """Pause every run of ``workflow`` (of ``version``, else of every version); idempotent."""
    _check(rt, workflow, version)
    row = {"workflow": workflow, "version": version or 0, "reason": reason, "paused_at": rt.clock.now()}
    with rt.db.write() as conn:
        existing = conn.execute(select(pauses).where(pauses.c.workflow == workflow,
                                                     pauses.c.version == (version or 0))).mappings().first()
        if existing is not None:
            return _shown(existing)
        conn.execute(_insert_ignoring_duplicates(conn.dialect.name).values(**row))
    rt.pauses.forget()
    return _shown(row)


def resume_workflow(rt, workflow: str, version: int | None = None) -> bool:
    """Resume ``workflow`` (the pause of ``version``, else the one of every version); whether
    it was paused. Held steps are sent and due timers fire on the reconcilers' next pass."""
    _check(rt, workflow, version)
    with rt.db.write() as conn:
        gone = conn.execute(delete(pauses).where(pauses.c.workflow == workflow,
                                                 pauses.c.version == (version or 0))).rowcount
    rt.pauses.forget()
    return gone > 0


def paused_workflows(rt) -> list[dict]:
    with rt.db.read() as conn:
        return [_shown(row) for row in conn.execute(select(pauses).order_by(pauses.c.workflow, pauses.c.version))
                .mappings()]


def workflow_pause_of(conn, workflow: str, version: int) -> dict | None:
    """The pause that holds this workflow version, if any (for explain and the run's JSON)."""
    found = conn.execute(select(pauses).where(pauses.c.workflow == workflow, or_(
        pauses.c.version == 0, pauses.c.version == version)).order_by(pauses.c.version)).mappings().first()
    return _shown(found) if found else None


def _shown(row) -> dict:
    return {"workflow": row["workflow"], "version": row["version"] or None, "reason": row["reason"],
            "paused_at": row["paused_at"]}


def _check(rt, workflow, version) -> None:
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidData(f"version must be an integer >= 1, got {version!r}", field="version")
    if workflow not in rt.registry.names():
        raise WorkflowNotFound(workflow, version)
    if version is not None:
        rt.registry.get(workflow, version)  # WorkflowNotFound for a version not loaded


def _insert_ignoring_duplicates(dialect: str):
    """Two operators pausing at once: the second insert does nothing."""
    if dialect == "postgresql":
        return postgresql.insert(pauses).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(pauses).on_conflict_do_nothing()
    return mysql.insert(pauses).prefix_with("IGNORE")
