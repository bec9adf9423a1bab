"""Bulk actions: cancel, retry, send an event to, pause or resume every run a filter selects.

A batch is a row (``batches``): the action and its arguments, the filter (the filters of
``GET /api/runs``, search fields included, or a selection of run ids), a cursor and counters.
The reconcilers work it (engine/batch_work.py) in chunks of ``INTERLOCK_BATCH_CHUNK`` runs,
newest first (id ranges, each leased to one reconciler: several work a batch at once), each
run changed by ``transitions.apply`` with the ordinary operation, a ``batch_items`` row
written in that run's transaction. The batch selects the runs created before it was: runs
started later are not taken.

Creating, reading, listing and stopping batches is here; working them is in ``batch_work``.
"""

import re

from sqlalchemy import insert, select, update

from . import queries
from .errors import BatchNotFound, InvalidData
from .ids import new_id
from .models import batch_items, batches
from .timeparse import iso

ACTIONS = ("cancel", "retry", "send", "pause", "resume", "migrate")
STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")
FILTER_KEYS = ("workflow", "version", "status", "state", "business_key", "created_after", "created_before",
               "search", "run_ids")
OUTCOMES = ("applied", "refused", "skipped")
MAX_SELECTED = 1000  # run ids in one selection
SAMPLE = 20  # run ids a dry run shows
MAX_PAGE = 500
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def check_filter(rt, given) -> dict:
    """The filter as stored (search pairs as lists): InvalidData / InvalidSearch if it is not one
    ``GET /api/runs`` would take. An empty filter is refused: name the runs to act on."""
    if not isinstance(given, dict):
        raise InvalidData("filter must be an object", field="filter")
    unknown = sorted(set(given) - set(FILTER_KEYS))
    if unknown:
        raise InvalidData(f"unknown filter key(s) {', '.join(unknown)} (known: {', '.join(FILTER_KEYS)})",
                          field="filter")
    out = {k: v for k, v in given.items() if v not in (None, "", [], {})}
    if not out:
        raise InvalidData("a batch needs a filter: an empty one would select every run", field="filter")
    for name in ("workflow", "state", "business_key"):
        if name in out and (not isinstance(out[name], str) or len(out[name]) > 255 or "\x00" in out[name]):
            raise InvalidData(f"filter.{name} must be text of at most 255 characters", field=f"filter.{name}")
    if "version" in out and (isinstance(out["version"], bool) or not isinstance(out["version"], int)
                             or out["version"] < 1):
        raise InvalidData("filter.version must be an integer >= 1", field="filter.version")
    if "status" in out and out["status"] not in STATUSES:
        raise InvalidData(f"filter.status must be one of {', '.join(STATUSES)}", field="filter.status")
    for name in ("created_after", "created_before"):
        if name in out and (isinstance(out[name], bool) or not isinstance(out[name], (int, float))):
            raise InvalidData(f"filter.{name} must be epoch seconds", field=f"filter.{name}")
    if "run_ids" in out:
        ids = out["run_ids"]
        if (not isinstance(ids, list) or not 1 <= len(ids) <= MAX_SELECTED
                or not all(isinstance(i, str) and _RUN_ID.match(i) for i in ids)):
            raise InvalidData(f"filter.run_ids must be 1-{MAX_SELECTED} run ids", field="filter.run_ids")
        out["run_ids"] = sorted(set(ids))
    if "search" in out:
        out["search"] = _stored_search(out["search"])
        rt.search_conditions(_search_of(out["search"]), out.get("workflow"))  # InvalidSearch if not
    return out


def _stored_search(search) -> dict:
    """``{field: value | [op, value] | [[op, value], ...]}`` as ``{field: [[op, value], ...]}``."""
    if not isinstance(search, dict):
        raise InvalidData("filter.search must map field names to values or [operator, value] pairs",
                          field="filter.search")
    out = {}
    for name, spec in search.items():
        if isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and not isinstance(spec[1], list):
            spec = [spec]
        pairs = spec if isinstance(spec, list) else [["eq", spec]]
        for pair in pairs:
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str)):
                raise InvalidData(f"filter.search.{name}: each condition is [operator, value]",
                                  field=f"filter.search.{name}")
        out[name] = [[op, value] for op, value in pairs]
    return out


def _search_of(stored: dict) -> dict:
    return {name: [(op, value) for op, value in pairs] for name, pairs in stored.items()}


def list_filters(rt, stored: dict) -> dict:
    """Keyword arguments of ``queries.list_runs`` / ``run_filter`` for a stored filter."""
    out = {k: stored.get(k) for k in ("workflow", "version", "status", "state", "business_key",
                                      "created_after", "created_before")}
    out["ids"] = stored.get("run_ids")
    if stored.get("search"):
        out["search"] = rt.search_conditions(_search_of(stored["search"]), stored.get("workflow"))
    return out


def check_args(action, event=None, data=None, reason=None, plan=None) -> dict:
    if action not in ACTIONS:
        raise InvalidData(f"action must be one of {', '.join(ACTIONS)}", field="action")
    if (action == "migrate") != (plan is not None):
        raise InvalidData("runs move to another version by applying a migration plan "
                          "(POST /api/migrations/<id>/apply, interlock migrate apply)", field="action")
    if action == "migrate":
        return {"plan": plan}
    args = {}
    if action == "send":
        if not isinstance(event, str) or not 1 <= len(event) <= 200 or "\x00" in event:
            raise InvalidData("a send batch needs the event's name (1-200 characters)", field="event")
        if data is not None and not isinstance(data, dict):
            raise InvalidData("data must be an object", field="data")
        args = {"event": event, "data": data or {}}
    elif event is not None or data is not None:
        raise InvalidData(f"event and data are for action send, not {action}", field="event")
    if reason is not None:
        if action not in ("cancel", "pause"):
            raise InvalidData(f"a reason is for cancel and pause, not {action}", field="reason")
        args["reason"] = reason
    return args


def create(rt, action: str, filter: dict, *, event=None, data=None, reason=None, dry_run=False,
           plan=None, total=None, fence=None) -> dict | None:
    """A batch (status ``pending``: the next reconciler pass takes it), or with ``dry_run`` only
    how many runs the filter selects now and a sample of their ids, nothing written.

    ``plan``: the migration plan a ``migrate`` batch applies (its runs, ``total`` of them, are
    the plan's: engine/migration_plans.py). ``fence(conn, batch_id)``: run in the transaction
    that writes the batch, before it; if it answers False nothing is written and None returned."""
    args = check_args(action, event, data, reason, plan)
    stored = check_filter(rt, filter)
    now = rt.clock.now()
    # Runs started from now on are not the batch's: the bound is part of the stored filter.
    before = stored.get("created_before")
    stored["created_before"] = now if before is None else min(before, now)
    kwargs = list_filters(rt, stored)
    with rt.db.read() as conn:
        total = queries.count_runs(conn, **kwargs) if total is None else total
        if dry_run:
            sample = queries.list_runs(conn, **kwargs, limit=SAMPLE).runs
            return {"dry_run": True, "action": action, "filter": stored, "args": args, "total_estimate": total,
                    "sample": [r.id for r in sample]}
    row = {"id": new_id(now), "action": action, "filter": stored, "args": args, "status": "pending",
           "cursor": None, "total_estimate": total, "done": 0, "refused": 0, "skipped": 0, "owner": None,
           "lease_until": None, "created_at": now, "updated_at": now, "finished_at": None, "planned": None,
           "planned_at": None}
    with rt.db.write() as conn:
        if fence is not None and not fence(conn, row["id"]):
            return None
        conn.execute(insert(batches).values(**row))
    return shown(row)


def get(rt, batch_id: str) -> dict:
    with rt.db.read() as conn:
        row = conn.execute(select(batches).where(batches.c.id == batch_id)).mappings().first()
    if row is None:
        raise BatchNotFound(batch_id)
    return shown(row)


def list_batches(rt, *, status=None, cursor=None, limit=50) -> dict:
    """Newest first, keyset-paged by id (``next``: the cursor of the next page)."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidData(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    query = select(batches).order_by(batches.c.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(batches.c.status == status)
    if cursor is not None:
        query = query.where(batches.c.id < cursor)
    with rt.db.read() as conn:
        rows = [shown(r) for r in conn.execute(query).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"batches": rows, "next": rows[-1]["id"] if more else None}


def items(rt, batch_id: str, *, outcome=None, after=None, limit=100) -> dict:
    """The runs a batch handled, by run id (``after``: the previous page's ``next``)."""
    get(rt, batch_id)
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidData(f"limit must be between 1 and {MAX_PAGE}", field="limit")
    query = select(batch_items).where(batch_items.c.batch_id == batch_id).order_by(batch_items.c.run_id)
    if outcome is not None:
        query = query.where(batch_items.c.outcome == outcome)
    if after is not None:
        query = query.where(batch_items.c.run_id > after)
    with rt.db.read() as conn:
        rows = [{"run_id": r["run_id"], "outcome": r["outcome"], "error": r["error"], "at": iso(r["at"])}
                for r in conn.execute(query.limit(limit + 1)).mappings()]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": rows, "next": rows[-1]["run_id"] if more else None}


def cancel(rt, batch_id: str) -> dict:
    """Stop a batch: the chunk being worked ends, no other starts. The runs it changed stay so."""
    now = rt.clock.now()
    with rt.db.write() as conn:
        conn.execute(update(batches).where(batches.c.id == batch_id, batches.c.status.in_(("pending", "running")))
                     .values(status="cancelled", finished_at=now, updated_at=now, owner=None, lease_until=None))
    return get(rt, batch_id)


def shown(row) -> dict:
    out = {k: row[k] for k in ("id", "action", "filter", "args", "status", "cursor", "total_estimate", "done",
                               "refused", "skipped", "owner")}
    out["handled"] = row["done"] + row["refused"] + row["skipped"]
    for name in ("created_at", "updated_at", "finished_at", "lease_until"):
        out[name] = iso(row[name])
    return out
