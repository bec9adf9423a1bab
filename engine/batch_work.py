"""Working bulk actions (engine/batches.py): the reconciler's duty.

A pass takes one batch (a lease on its row: ``owner``, ``lease_until``; a dead worker's batch
is taken over once its lease has expired), reads its next chunk of runs (the batch's filter,
newest first from its cursor) and acts on each through ``transitions.apply``:

- each run's change and its ``batch_items`` row are written in one transaction, the item read
  first under the run's lock: a run already handled by this batch (a chunk worked again after
  a crash, or by a worker whose lease ran out meanwhile) is left alone;
- cancel, pause and resume do a whole chunk in one transaction (the runs locked in id order,
  as group commit locks them); a chunk in which one run refuses, and every send and retry, go
  one transaction per run;
- a refused run (an event it does not take now, a paused run, a callback that raised) gets an
  item ``refused`` with the error, a run the action does not apply to (already ended, already
  paused, not failed) one ``skipped``, and the batch goes on;
- then, in a short transaction of its own fenced by the owner and the old cursor, the cursor
  moves to the chunk's last run and the counters grow by the items in the chunk's id range, so
  the counters always equal the items once the batch is done.
"""

import logging
import uuid
from dataclasses import dataclass, field

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.dialects import mysql, postgresql, sqlite

from . import operations as ops
from . import queries
from .batches import list_filters
from .errors import InterlockError, RunNotFound
from .models import batch_items, batches, runs
from .transitions import ACTIVE, apply, perform_locked

log = logging.getLogger(__name__)
CHUNKED = ("cancel", "pause", "resume")  # one transaction per chunk; the others one per run
_OWNER = uuid.uuid4().hex  # a process that runs no worker (no worker id) works batches as this


def operation(action: str, args: dict):
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
        if why is None:
            self.op.perform(change)
        self.outcome = "applied" if why is None else "skipped"
        row = {"batch_id": self.batch_id, "run_id": run_id, "outcome": self.outcome, "error": why, "at": change.now}
        if self.new_items is not None:
            self.new_items.append(row)
        else:
            conn.execute(insert(batch_items).values(**row))


def work(rt) -> int:
    """One chunk of one batch this process may work; how many runs it read (0: none to do)."""
    owner = rt.worker_id or _OWNER
    batch = claim(rt, owner)
    if batch is None:
        return 0
    try:
        return work_chunk(rt, batch, owner)
    except Exception:
        log.exception("batch %s: a chunk failed; it is worked again on the next pass", batch["id"])
        return 0


def claim(rt, owner) -> dict | None:
    """The oldest unfinished batch whose lease is this process's, free or expired, leased to it."""
    now = rt.clock.now()
    takeable = and_(batches.c.status.in_(("pending", "running")),
                    or_(batches.c.owner.is_(None), batches.c.owner == owner, batches.c.lease_until < now))
    with rt.db.read() as conn:
        candidates = conn.execute(select(batches.c.id).where(takeable).order_by(batches.c.created_at)
                                  .limit(5)).scalars().all()
    for batch_id in candidates:
        with rt.db.write() as conn:
            taken = conn.execute(update(batches).where(batches.c.id == batch_id, takeable).values(
                status="running", owner=owner, lease_until=now + rt.settings.lease_seconds)).rowcount
            if taken:
                return dict(conn.execute(select(batches).where(batches.c.id == batch_id)).mappings().one())
    return None


def work_chunk(rt, batch: dict, owner: str) -> int:
    size = max(1, rt.settings.batch_chunk)
    try:
        kwargs = list_filters(rt, batch["filter"])
    except InterlockError as exc:  # a search field no workflow loaded here declares any more
        log.warning("batch %s cannot be read here: %s", batch["id"], exc)
        return 0
    with rt.db.read() as conn:
        page = queries.list_runs(conn, **kwargs, cursor=batch["cursor"], limit=size)
    ids = [r.id for r in page.runs]
    if ids:
        act_on(rt, batch, ids)
    advance(rt, batch, owner, ids[-1] if ids else batch["cursor"], end=page.next is None)
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


def _item(batch):
    return BatchItem(batch["id"], batch["action"], operation(batch["action"], batch["args"]), batch["filter"])


def _chunk(rt, batch, ids) -> None:
    def work(conn):
        rows = conn.execute(select(runs).where(runs.c.id.in_(ids)).order_by(runs.c.id)
                            .with_for_update()).mappings().all()
        # Read after the locks: a twin that handled one of these runs has committed its item.
        known = dict(conn.execute(select(batch_items.c.run_id, batch_items.c.outcome).where(
            batch_items.c.batch_id == batch["id"], batch_items.c.run_id.in_(ids))).all())
        new_items: list = []
        locked = []
        for row in rows:
            item = _item(batch)
            item.known, item.new_items = known, new_items
            locked.append((dict(row), None, item))
        outcomes = perform_locked(rt, conn, locked)
        if new_items:
            conn.execute(insert(batch_items), new_items)
        return outcomes

    for outcome in rt.db.transaction(work):
        rt.after_commit(outcome)


def one(rt, batch, run_id) -> str:
    """The batch's action on one run, in its own transaction; the item's outcome."""
    item = _item(batch)
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


def advance(rt, batch, owner, cursor, *, end: bool) -> bool:
    """Move the cursor past the chunk and count its items, fenced: False if the batch was stopped
    or taken over meanwhile (its next owner counts the chunk again: items are its truth)."""
    old = batch["cursor"]
    now = rt.clock.now()
    in_range = [batch_items.c.batch_id == batch["id"]]
    if old is not None:
        in_range.append(batch_items.c.run_id < old)
    if not end and cursor is not None:
        in_range.append(batch_items.c.run_id >= cursor)
    with rt.db.write() as conn:
        counts = dict(conn.execute(select(batch_items.c.outcome, func.count()).where(*in_range)
                                   .group_by(batch_items.c.outcome)).all())
        values = {"cursor": cursor, "updated_at": now, "lease_until": now + rt.settings.lease_seconds,
                  "done": batches.c.done + counts.get("applied", 0),
                  "refused": batches.c.refused + counts.get("refused", 0),
                  "skipped": batches.c.skipped + counts.get("skipped", 0)}
        if end:
            values.update(status="done", finished_at=now, owner=None, lease_until=None)
        moved = conn.execute(update(batches).where(
            batches.c.id == batch["id"], batches.c.owner == owner, batches.c.status == "running",
            batches.c.cursor.is_(None) if old is None else batches.c.cursor == old).values(values)).rowcount
    if not moved:
        log.info("batch %s was stopped or taken over: its chunk is not counted here", batch["id"])
    return bool(moved)


def _insert_ignoring_duplicates(dialect: str):
    if dialect == "postgresql":
        return postgresql.insert(batch_items).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(batch_items).on_conflict_do_nothing()
    return mysql.insert(batch_items).prefix_with("IGNORE")
