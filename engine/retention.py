"""Retention: finished runs older than their workflow's ``retention`` (or ``INTERLOCK_RETENTION``)
are deleted with everything that belongs to them, in small batches, by the reconciler.

A run is deleted when it is finished (succeeded, failed, cancelled) since before its cutoff,
its parent (if any) is not active, and it has no child runs left. Children go first: a parent
is deleted only once its children are, so no run ever points at a deleted parent, and a
finished run with an active descendant at any depth is kept (the active run's parent has a
child, its parent has a child, and so on up).

With it go its history, tasks (steps and activities), timers, search fields, the maps and map items it fanned
out, the signals it received and the ones it sent that were applied (a pending one waits for
its receiver). With ``INTERLOCK_ARCHIVE_DIR`` set, each batch is written to the archive
(engine/archive.py) and made durable before the delete commits.

Each batch is one transaction of at most ``BATCH`` runs (``SQLITE_BATCH`` on SQLite, whose one
writer holds every transition back while a batch runs). On PostgreSQL and MariaDB it locks its
candidates with ``FOR UPDATE SKIP LOCKED``: a run another transaction holds (a retry, a late
signal) is left for a later pass, and no transition waits behind a delete for a row it needs.
The conditions are read again once the rows are locked. The reconciler deletes one batch a
pass and at most one per ``poll_interval``, however busy its other duties keep it: a backlog is
worked off at a bounded rate, between the transitions rather than ahead of them.

The reconciler deletes only runs of the workflows (and versions) its process loads, with their
own retention; ``interlock runs purge`` deletes by a given time, whatever the workflow.
"""

import logging
from dataclasses import dataclass

from sqlalchemy import and_, delete, exists, func, select

from . import metrics
from .archive import Archive, line
from .definitions import FINAL_STATUSES
from .models import history, map_items, maps, run_search, runs, signals, tasks, timers

log = logging.getLogger(__name__)
BATCH = 500
# About 0.3 ms a run on SQLite (bench/retention.py): 100 hold the write lock some 30-50 ms.
SQLITE_BATCH = 100
# After a pass that found nothing to delete, the next looks this many seconds later.
LOOK_EVERY = 10.0
ACTIVE = ("running", "waiting")
ID_CHUNK = 500  # ids per IN list when walking a purge's parents


@dataclass(frozen=True)
class Group:
    """Runs of one workflow (one version, or all) finished before ``cutoff``."""

    workflow: str | None
    version: int | None
    cutoff: float

    def conditions(self, chosen: bool = False) -> list:
        """``chosen``: for runs already taken from the group by id (without the workflow, a planner
        would walk the group's index range rather than look the ids up)."""
        found = [runs.c.finished_at < self.cutoff, runs.c.status.in_(FINAL_STATUSES)]
        if chosen:
            return found
        if self.workflow is not None:
            found.append(runs.c.workflow == self.workflow)
        if self.version is not None:
            found.append(runs.c.version == self.version)
        return found


def _deletable(group: Group, chosen: bool = False) -> list:
    """``group``'s runs that may go now: parent not active, no child left."""
    child, parent = runs.alias("child"), runs.alias("parent")
    return [*group.conditions(chosen), ~exists().where(child.c.parent_id == runs.c.id),
            ~exists().where(parent.c.id == runs.c.parent_id, parent.c.status.in_(ACTIVE))]


def batch_size(rt) -> int:
    return SQLITE_BATCH if rt.db.dialect == "sqlite" else BATCH


def groups(rt, now: float) -> list[Group]:
    """One group per loaded workflow version with a retention, cut off at ``now`` less it."""
    found = []
    for name in rt.registry.names():
        for version in rt.registry.versions(name):
            seconds = rt.registry.get(name, version).retention_seconds(rt.settings.retention)
            if seconds is not None:
                found.append(Group(name, version, now - seconds))
    return found


def delete_batch(rt, group: Group, limit: int | None = None, now: float | None = None) -> int:
    """Delete up to ``limit`` of ``group``'s deletable runs (oldest finished first) in one
    transaction, archiving them first if an archive is set; how many were deleted."""
    now = rt.clock.now() if now is None else now
    limit = batch_size(rt) if limit is None else limit
    archive = Archive(rt.settings.archive_dir) if rt.settings.archive_dir else None

    # The walk of the index happens outside the transaction: on SQLite, outside the write lock,
    # and a pass with nothing to delete takes no lock at all.
    with rt.db.read() as conn:
        candidates = conn.execute(select(runs.c.id).where(*_deletable(group))
                                  .order_by(runs.c.finished_at).limit(limit)).scalars().all()
    if not candidates:
        return 0

    def work(conn):
        query = select(runs.c.id).where(runs.c.id.in_(candidates), *_deletable(group, chosen=True))
        if conn.dialect.name != "sqlite":  # SQLite: BEGIN IMMEDIATE, the one writer already
            query = query.with_for_update(of=runs if conn.dialect.name == "postgresql" else None,
                                          skip_locked=True)
        locked = conn.execute(query).scalars().all()
        if not locked:
            return 0
        # Read again once locked (each statement sees what committed before it): a run retried
        # or given a child since it was chosen stays.
        ids = conn.execute(select(runs.c.id).where(runs.c.id.in_(locked), *_deletable(group, chosen=True))
                           ).scalars().all()
        if not ids:
            return 0
        if archive is not None:
            archive.write(_lines(conn, ids, now), now)
        _delete(conn, ids)
        return len(ids)

    deleted = rt.db.transaction(work)
    if deleted:
        metrics.runs_deleted.labels(group.workflow).inc(deleted)
        log.info("deleted %d finished run(s) of %s%s", deleted, group.workflow or "any workflow",
                 f" v{group.version}" if group.version is not None else "",
                 extra={"workflow": group.workflow, "deleted": deleted})
    return deleted


def _lines(conn, ids, now) -> list[str]:
    rows = {r["id"]: r for r in conn.execute(select(runs).where(runs.c.id.in_(ids))).mappings()}
    entries = {run_id: [] for run_id in ids}
    for h in conn.execute(select(history).where(history.c.run_id.in_(ids))
                          .order_by(history.c.run_id, history.c.seq)).mappings():
        entries[h["run_id"]].append({k: v for k, v in h.items() if k != "run_id"})
    return [line(rows[run_id], entries[run_id], now) for run_id in ids]


def _delete(conn, ids) -> None:
    conn.execute(delete(history).where(history.c.run_id.in_(ids)))
    conn.execute(delete(tasks).where(tasks.c.run_id.in_(ids)))
    conn.execute(delete(timers).where(timers.c.run_id.in_(ids)))
    conn.execute(delete(signals).where(signals.c.run_id.in_(ids)))
    # Signals it sent and its receiver applied; a pending one is still its receiver's to apply.
    conn.execute(delete(signals).where(signals.c.source_id.in_(ids), signals.c.status != "pending"))
    conn.execute(delete(map_items).where(map_items.c.parent_id.in_(ids)))
    conn.execute(delete(maps).where(maps.c.parent_id.in_(ids)))
    conn.execute(delete(run_search).where(run_search.c.run_id.in_(ids)))
    conn.execute(delete(runs).where(runs.c.id.in_(ids)))


def delete_expired(rt, now: float | None = None, limit: int | None = None, start: int = 0) -> int:
    """Up to ``limit`` (default: a batch) runs past their retention, in transactions of at most a
    batch; the workflow versions taken in turn from ``start``. How many were deleted."""
    now = rt.clock.now() if now is None else now
    batch = batch_size(rt)
    limit = batch if limit is None else limit
    todo = groups(rt, now)
    deleted = 0
    for i in range(len(todo)):
        group = todo[(start + i) % len(todo)]
        while deleted < limit:
            want = min(batch, limit - deleted)
            got = delete_batch(rt, group, want, now)
            deleted += got
            if got < want:
                break
    return deleted


class Retention:
    """The reconciler's duty: a batch a pass while there is a backlog, at most one every
    ``poll_interval``; after a pass that found less, a look every ``LOOK_EVERY`` seconds (the
    selection is an index range per workflow version)."""

    def __init__(self, rt):
        self.rt = rt
        self._next_at: float | None = None
        self._start = 0

    def tick(self, now: float | None = None) -> int:
        now = self.rt.clock.now() if now is None else now
        if self._next_at is not None and now < self._next_at:
            return 0
        batch = batch_size(self.rt)
        try:
            deleted = delete_expired(self.rt, now, batch, self._start)
        except Exception:  # an archive directory not writable, a lost connection: later, not every pass
            log.warning("deleting runs past their retention failed; trying again in %g s", LOOK_EVERY,
                        exc_info=True)
            self._next_at = now + LOOK_EVERY
            return 0
        self._start += 1
        self._next_at = now + (self.rt.settings.poll_interval if deleted >= batch else LOOK_EVERY)
        return deleted


# -- by hand -------------------------------------------------------------------------------

def purge(rt, finished_before: float, workflow: str | None = None, now: float | None = None) -> int:
    """Delete every run finished before ``finished_before`` (of ``workflow``, or any) that may
    go: children first, so rounds repeat until one deletes nothing. How many were deleted."""
    with rt.db.read() as conn:
        pairs = _versions(conn, workflow)
    total = 0
    while True:
        deleted = 0
        for name, version in pairs:
            group = Group(name, version, finished_before)
            while (got := delete_batch(rt, group, None, now)) > 0:
                deleted += got
        total += deleted
        if deleted == 0:
            return total


def _versions(conn, workflow) -> list[tuple]:
    """The (workflow, version) pairs that have finished runs: one walk of the retention index,
    which holds the finished runs only (the predicate is what lets the planner use it)."""
    query = (select(runs.c.workflow, runs.c.version).where(runs.c.finished_at.is_not(None)).distinct()
             .order_by(runs.c.workflow, runs.c.version))
    if workflow is not None:
        query = query.where(runs.c.workflow == workflow)
    return [tuple(row) for row in conn.execute(query)]


def count_purge(rt, finished_before: float, workflow: str | None = None) -> int:
    """How many runs ``purge`` would delete now: those finished before the time whose parent is
    not active and whose descendants would all go too."""
    group = Group(workflow, None, finished_before)
    parent = runs.alias("parent")
    eligible = [*group.conditions(), ~exists().where(parent.c.id == runs.c.parent_id, parent.c.status.in_(ACTIVE))]
    with rt.db.read() as conn:
        total = conn.execute(select(func.count()).select_from(runs).where(*eligible)).scalar()
        # Eligible runs with a child that is not: kept, and so are their eligible ancestors.
        child = runs.alias("child")
        kept_child = and_(child.c.parent_id == runs.c.id, ~and_(*_as(eligible, child)))
        blocked = set(conn.execute(select(runs.c.id).where(*eligible, exists().where(kept_child))).scalars())
        level = blocked
        while level:
            parents = set()
            for chunk in _chunks(sorted(level)):
                parents |= set(conn.execute(select(runs.c.parent_id).where(
                    runs.c.id.in_(chunk), runs.c.parent_id.is_not(None))).scalars())
            level = set()
            for chunk in _chunks(sorted(parents - blocked)):
                level |= set(conn.execute(select(runs.c.id).where(runs.c.id.in_(chunk), *eligible)).scalars())
            blocked |= level
    return total - len(blocked)


def _as(conditions, alias) -> list:
    """``conditions`` on ``runs`` rewritten for ``alias`` of it."""
    from sqlalchemy.sql.util import ClauseAdapter

    adapter = ClauseAdapter(alias)
    return [adapter.traverse(c) for c in conditions]


def _chunks(items):
    for i in range(0, len(items), ID_CHUNK):
        yield items[i:i + ID_CHUNK]
