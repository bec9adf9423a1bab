"""Working bulk actions (engine/batches.py): the reconciler's duty.

A batch is **planned** into chunks, ``INTERLOCK_BATCH_CHUNK`` runs each, newest first: a row of
``batch_chunks`` per chunk, its id range ``lo <= runs.id <= hi``. Planning reads the filter's run
ids ``PLAN_PAGE`` chunks at a time below ``batches.planned``, then writes them in a short
transaction fenced by ``planned`` (a second planner of the same page writes nothing); the
page that comes out short sets ``planned_at``. Each chunk is **leased** apart (``owner``, ``lease_until``): several
reconcilers work one batch at once, and a dead worker's chunk is taken over once its lease has
expired. A pass takes one chunk (of its own, free, or expired; otherwise it plans the next
page, keeping the page's first chunk), reads the runs of its range that the filter selects now
and acts on each through ``transitions.apply``:

- each run's change and its ``batch_items`` row are written in one transaction, the item read
  first under the run's lock: a run already handled by this batch (a chunk worked again after
  a crash, or by a worker whose lease ran out meanwhile) is left alone;
- cancel, pause and resume do a whole chunk in one transaction (the runs locked in id order,
  as group commit locks them); a chunk in which one run refuses, and every send and retry, go
  one transaction per run;
- a refused run (an event it does not take now, a paused run, a callback that raised) gets an
  item ``refused`` with the error, a run the action does not apply to (already ended, already
  paused, not failed) one ``skipped``, and the batch goes on;
- then, in a short transaction of its own fenced by the chunk's owner, the chunk is marked done
  and the batch's counters grow by the items in the chunk's id range (so they equal the items
  once the batch is done); ``batches.cursor`` is the lowest id above which every chunk is
  done, and the last chunk done of a batch planned to its end ends the batch.

Every statement reads a bounded range of an index, whatever the planner knows: the chunk's runs
and items by id range, not "the next N below a cursor" (with no table statistics PostgreSQL
read every remaining run for that, and every item of the batch for ``run_id IN (...)``).
"""

import logging
import time
import uuid
from dataclasses import dataclass, field

from sqlalchemy import and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from . import hotsql, migration_plans, queries
from . import operations as ops
from .batches import list_filters
from .errors import InterlockError, RunNotFound
from .models import batch_chunks, batch_items, batches, runs
from .transitions import ACTIVE, apply, perform_locked

log = logging.getLogger(__name__)
CHUNKED = ("cancel", "pause", "resume", "migrate")  # one transaction per chunk; the others one per run
PLAN_PAGE = 50  # chunks one planning step cuts
_OWNER = uuid.uuid4().hex  # a process that runs no worker (no worker id) works batches as this


def operation(action: str, args: dict, rt=None):
    if action == "migrate":
        return ops.Migrate(migration_plans.ready(rt, args["plan"]))
    if action == "cancel":
        return ops.Cancel(args.get("reason"))
    if action == "pause":
        return ops.Pause(args.get("reason"))
    if action == "resume":
        return ops.Resume()
    if action == "retry":
        return ops.Retry()
    return ops.SendEvent(args["event"], args.get("data") or {}, "batch")


def skip_reason(action: str, change, stored_filter: dict) -> str | None:
    """Why the action does not apply to the run as locked (None: it does)."""
    status = change.status
    if stored_filter.get("status") not in (None, status):
        return f"no longer matches the filter: the run is {status}"
    state = stored_filter.get("state")
    if state is not None and state not in change.row["state"].split(","):
        return f"no longer matches the filter: the run left {state}"
    if action == "migrate":
        return None  # the plan says which runs move (ops.Migrate.check)
    if action == "retry":
        return None if status == "failed" else f"the run is {status}: only failed runs are retried"
    if action == "resume":
        return None if change.paused_at is not None else "the run is not paused"
    if status not in ACTIVE:
        return f"the run is {status}"
    if action == "pause" and change.paused_at is not None:
        return "the run is paused already"
    return None


@dataclass
class BatchItem:
    """The batch's operation on one run, with its item row, in the run's transaction."""

    batch_id: str
    action: str
    op: object
    filter: dict
    outcome: str | None = field(default=None)
    # A chunk in one transaction: the items its runs already have, read with their locks, and
    # the new ones, inserted together before the commit. Alone: read and written here.
    known: dict | None = None
    new_items: list | None = None

    def perform(self, change):
        conn, run_id = change.conn, change.row["id"]
        if self.known is not None:
            self.outcome = self.known.get(run_id)
        else:
            self.outcome = conn.execute(select(batch_items.c.outcome).where(
                batch_items.c.batch_id == self.batch_id, batch_items.c.run_id == run_id)).scalar()
        if self.outcome is not None:
            return  # handled by this batch already
        why = skip_reason(self.action, change, self.filter)
        self.outcome = "applied" if why is None else "skipped"
        checked = self.op.check(change) if why is None and hasattr(self.op, "check") else None
        if checked is not None:  # the operation's own reasons not to change this run
            self.outcome, why = checked
        elif why is None:
            self.op.perform(change)
        row = {"batch_id": self.batch_id, "run_id": run_id, "outcome": self.outcome, "error": why, "at": change.now}
        if self.new_items is not None:
            self.new_items.append(row)
        else:
            conn.execute(insert(batch_items).values(**row))


def work(rt) -> int:
    """One chunk of one batch this process may work: how many runs it read, at least 1 if it
    worked or planned a chunk (0: nothing to do here now)."""
    owner = rt.worker_id or _OWNER
    lease = claim(rt, owner)
    if lease is None:
        return 0
    try:
        read = work_chunk(rt, lease, owner)
        return 0 if read is None else max(1, read)
    except Exception:
        log.exception("batch %s: a chunk failed; it is worked again on the next pass", lease["id"])
        return 0


def work_for(rt, seconds: float) -> int:
    """Chunks one after another for up to ``seconds`` (the reconciler's pass): the runs they read."""
    deadline = time.monotonic() + seconds
    total = 0
    while True:
        read = work(rt)
        total += read
        if read == 0 or time.monotonic() >= deadline:
            return total


def claim(rt, owner) -> dict | None:
    """A chunk of the oldest unfinished batch that has one to take, leased to ``owner``: one it
    holds already, a free one or one whose lease expired, else the first of the batch's next
    planned page. The batch row with ``chunk`` (its ``hi`` and ``lo``), or None."""
    now = rt.clock.now()
    with rt.db.read() as conn:
        candidates = conn.execute(select(batches).where(batches.c.status.in_(("pending", "running")))
                                  .order_by(batches.c.created_at).limit(5)).mappings().all()
    for batch in candidates:
        batch = dict(batch)
        lease = _take_chunk(rt, batch, owner, now)
        if lease is None and batch["planned_at"] is None:
            # Another reconciler may plan the page first: then one of its chunks is free.
            lease = plan(rt, batch, owner, now) or _take_chunk(rt, batch, owner, now)
        if lease is not None:
            return lease
    return None


def _takeable(batch_id, owner, now):
    return and_(batch_chunks.c.batch_id == batch_id, batch_chunks.c.status == "pending",
                or_(batch_chunks.c.owner.is_(None), batch_chunks.c.owner == owner,
                    batch_chunks.c.lease_until < now))


def _take_chunk(rt, batch, owner, now) -> dict | None:
    takeable = _takeable(batch["id"], owner, now)
    with rt.db.read() as conn:
        candidates = conn.execute(select(batch_chunks.c.hi, batch_chunks.c.lo).where(takeable)
                                  .order_by(batch_chunks.c.hi.desc()).limit(5)).all()
    for hi, lo in candidates:  # another reconciler may take it first: then the next
        with rt.db.write() as conn:
            taken = conn.execute(update(batch_chunks).where(takeable, batch_chunks.c.hi == hi).values(
                owner=owner, lease_until=now + rt.settings.lease_seconds)).rowcount
        if taken:
            return {**batch, "chunk": {"hi": hi, "lo": lo}}
    return None


def _selected(rt, batch):
    """The batch's filter as (source, conditions): InterlockError if it cannot be read here.
    A migrate batch's runs are its plan's that can move."""
    if batch["action"] == "migrate":
        return migration_plans.movable(batch["args"]["plan"])
    return queries.run_filter(**list_filters(rt, batch["filter"]))


def plan(rt, batch, owner, now) -> dict | None:
    """Cut the batch's next ``PLAN_PAGE`` chunks (below ``planned``), the first leased to
    ``owner``: that lease, or None (another planner moved ``planned`` first, or no run is left:
    then ``planned_at`` is set, and the batch ends if no chunk is left to work)."""
    size = max(1, rt.settings.batch_chunk)
    try:
        source, conditions = _selected(rt, batch)
    except InterlockError as exc:  # a search field no workflow loaded here declares any more
        log.warning("batch %s cannot be read here: %s", batch["id"], exc)
        return None
    old = batch["planned"]
    if old is not None:
        conditions = [*conditions, runs.c.id < old]
    fence = [batches.c.id == batch["id"], batches.c.status.in_(("pending", "running")),
             batches.c.planned_at.is_(None), batches.c.planned.is_(None) if old is None else batches.c.planned == old]
    # Read before the batch row is locked: chunks finishing meanwhile do not wait for the read.
    with rt.db.read() as conn:
        ids = conn.execute(select(runs.c.id).select_from(source).where(*conditions)
                           .order_by(runs.c.id.desc()).limit(size * PLAN_PAGE)).scalars().all()
    with rt.db.write() as conn:
        # A second planner of this page waits for the row here, then finds ``planned`` moved on.
        if not conn.execute(update(batches).where(*fence).values(status="running", updated_at=now)).rowcount:
            return None
        rows = [{"batch_id": batch["id"], "hi": part[0], "lo": part[-1], "runs": len(part), "status": "pending",
                 "owner": None, "lease_until": None, "finished_at": None}
                for part in (ids[i:i + size] for i in range(0, len(ids), size))]
        if rows:
            rows[0].update(owner=owner, lease_until=now + rt.settings.lease_seconds)
            conn.execute(insert(batch_chunks), rows)
        values = {"planned": ids[-1] if ids else old}
        if len(ids) < size * PLAN_PAGE:
            values["planned_at"] = now
            if not rows and _open_chunks(conn, batch["id"]) is None:
                values.update(status="done", finished_at=now, owner=None, lease_until=None)
        conn.execute(update(batches).where(batches.c.id == batch["id"]).values(values))
    if not rows:
        return None
    return {**batch, "planned": values["planned"], "chunk": {"hi": rows[0]["hi"], "lo": rows[0]["lo"]}}


def _open_chunks(conn, batch_id):
    """The highest id range not done yet (its ``hi``), or None."""
    return conn.execute(select(func.max(batch_chunks.c.hi)).where(
        batch_chunks.c.batch_id == batch_id, batch_chunks.c.status == "pending")).scalar()


def work_chunk(rt, lease: dict, owner: str) -> int | None:
    """Act on the runs of the leased chunk's range the filter selects now, then finish it: how
    many runs it read (None: the filter cannot be read here; the lease runs out for another)."""
    chunk = lease["chunk"]
    try:
        source, conditions = _selected(rt, lease)
    except InterlockError as exc:  # a search field no workflow loaded here declares any more
        log.warning("batch %s cannot be read here: %s", lease["id"], exc)
        return None
    with rt.db.read() as conn:
        ids = conn.execute(select(runs.c.id).select_from(source).where(
            *conditions, runs.c.id >= chunk["lo"], runs.c.id <= chunk["hi"])
            .order_by(runs.c.id.desc())).scalars().all()
    if ids:
        act_on(rt, lease, ids)
    finish(rt, lease, owner)
    return len(ids)


def act_on(rt, batch: dict, ids: list) -> None:
    """Apply the batch's action to these runs, each once (see the module's docstring)."""
    if batch["action"] in CHUNKED:
        try:
            _chunk(rt, batch, ids)
            return
        except InterlockError:
            pass  # one of them refused: each alone, so the others still change
    for run_id in ids:
        one(rt, batch, run_id)


# A chunk's new items: on PostgreSQL one statement over arrays (an executemany was a statement per item).
_INSERT_ITEMS = hotsql.Statement(lambda _dialect, keys: insert(batch_items).values({k: bindparam(k) for k in keys}),
                                 lambda keys: hotsql.Arrays.insert(batch_items, keys))


def _item(rt, batch):
    return BatchItem(batch["id"], batch["action"], operation(batch["action"], batch["args"], rt), batch["filter"])


def _chunk(rt, batch, ids) -> None:
    def work(conn):
        # The id range as well: an index range however few rows the planner believes the table has.
        rows = conn.execute(select(runs).where(runs.c.id.in_(ids), runs.c.id >= min(ids), runs.c.id <= max(ids))
                            .order_by(runs.c.id).with_for_update()).mappings().all()
        # Read after the locks: a twin that handled one of these runs has committed its item.
        # By the chunk's id range, a range of the primary key whatever the planner knows: with
        # no statistics (autovacuum off), ``run_id IN (...)`` was planned as a walk of every
        # item the batch has, so each chunk cost more than the one before.
        known = dict(conn.execute(select(batch_items.c.run_id, batch_items.c.outcome).where(
            batch_items.c.batch_id == batch["id"], batch_items.c.run_id >= min(ids),
            batch_items.c.run_id <= max(ids))).all())
        new_items: list = []
        locked = []
        for row in rows:
            item = _item(rt, batch)
            item.known, item.new_items = known, new_items
            locked.append((dict(row), None, item))
        if locked and hasattr(locked[0][2].op, "prefetch"):  # what each run's operation reads, read once
            shared = locked[0][2].op.prefetch(conn, [row["id"] for row in rows])
            for _, _, item in locked:
                item.op.prefetched = shared
        outcomes = perform_locked(rt, conn, locked)
        if new_items:
            hotsql.execute_many(conn, _INSERT_ITEMS, new_items)
        return outcomes

    for outcome in rt.db.transaction(work):
        rt.after_commit(outcome)


def one(rt, batch, run_id) -> str:
    """The batch's action on one run, in its own transaction; the item's outcome."""
    item = _item(rt, batch)
    try:
        apply(rt, run_id, item)
        return item.outcome
    except RunNotFound as exc:
        return _record(rt, batch["id"], run_id, "skipped", str(exc))
    except InterlockError as exc:
        return _record(rt, batch["id"], run_id, "refused", str(exc))


def _record(rt, batch_id, run_id, outcome, error) -> str:
    """An item for a run the action was refused on (its change was rolled back); a twin's item
    written meanwhile wins."""
    row = {"batch_id": batch_id, "run_id": run_id, "outcome": outcome, "error": error, "at": rt.clock.now()}
    with rt.db.write() as conn:
        conn.execute(_insert_ignoring_duplicates(conn.dialect.name).values(**row))
    return outcome


def finish(rt, lease: dict, owner: str) -> bool:
    """Mark the leased chunk done and count its items into the batch, fenced by the chunk's
    owner: False if another worker took it over meanwhile (it counts the chunk: items are
    the truth). The last chunk of a batch planned to its end ends the batch."""
    batch_id, chunk = lease["id"], lease["chunk"]
    now = rt.clock.now()
    with rt.db.write() as conn:
        # The batch row first: finishers of one batch go one at a time, each seeing the others' chunks.
        conn.execute(update(batches).where(batches.c.id == batch_id).values(updated_at=now))
        moved = conn.execute(update(batch_chunks).where(
            batch_chunks.c.batch_id == batch_id, batch_chunks.c.hi == chunk["hi"], batch_chunks.c.owner == owner,
            batch_chunks.c.status == "pending").values(status="done", lease_until=None,
                                                       finished_at=now)).rowcount
        if moved:
            counts = dict(conn.execute(select(batch_items.c.outcome, func.count()).where(
                batch_items.c.batch_id == batch_id, batch_items.c.run_id >= chunk["lo"],
                batch_items.c.run_id <= chunk["hi"]).group_by(batch_items.c.outcome)).all())
            row = conn.execute(select(batches.c.status, batches.c.planned, batches.c.planned_at)
                               .where(batches.c.id == batch_id)).one()
            values = {"done": batches.c.done + counts.get("applied", 0),
                      "refused": batches.c.refused + counts.get("refused", 0),
                      "skipped": batches.c.skipped + counts.get("skipped", 0)}
            open_hi = _open_chunks(conn, batch_id)
            if open_hi is None:
                values["cursor"] = row.planned
            else:  # the lowest chunk of the run of done ones above the first open one
                below = conn.execute(select(func.min(batch_chunks.c.lo)).where(
                    batch_chunks.c.batch_id == batch_id, batch_chunks.c.status == "done",
                    batch_chunks.c.lo > open_hi)).scalar()
                if below is not None:
                    values["cursor"] = below
            if open_hi is None and row.planned_at is not None and row.status == "running":
                values.update(status="done", finished_at=now, owner=None, lease_until=None)
            conn.execute(update(batches).where(batches.c.id == batch_id).values(values))
    if not moved:
        log.info("batch %s: chunk %s was taken over: it is not counted here", batch_id, chunk["hi"])
    return bool(moved)


def _insert_ignoring_duplicates(dialect: str):
    if dialect == "postgresql":
        return postgresql.insert(batch_items).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(batch_items).on_conflict_do_nothing()
    return mysql.insert(batch_items).prefix_with("IGNORE")
