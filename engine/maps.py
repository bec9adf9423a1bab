"""Map: a state that runs a child workflow per item of a list, at most N at a time, and goes on
when every item has ended (or as soon as too many have failed).

Entering the state writes a ``maps`` row (the counters the fan-in reads, under the parent's
lock, instead of counting items) and a ``map_items`` row per item, and starts the first
``max_concurrency`` children in the parent's transaction. Each child's end reaches the
parent as a ``child_ended`` signal (engine/children.py); applying it marks the item, starts
the next pending one, and once all have ended takes ``on_done`` with the results in item
order (or ``on_error`` past the tolerated failures, cancelling the rest). ``retry`` of a
parent whose map failed re-runs only the failed items.
"""

from sqlalchemy import func, insert, select, update

from .errors import InvalidData, InvalidTransition
from .models import map_items, maps, timers

ACTIVE = ("running", "waiting")


def entered(change, spec, seq) -> None:
    """Fan out: the map's rows, and its first children."""
    from .transitions import check_data

    items = spec.items_of(change.ctx)
    if not isinstance(items, list):
        raise InvalidData(f"map {spec.name} needs a list of items (data field {spec.items!r}), got "
                          f"{type(items).__name__}", field=spec.items if isinstance(spec.items, str) else "items")
    check_data({"items": items}, f"map {spec.name} items")
    change.writes.flush_pending(change.conn)
    change.conn.execute(insert(maps).values(
        parent_id=change.row["id"], entry_seq=seq, state=spec.state_id, name=spec.name, total=len(items),
        running=0, succeeded=0, failed=0, status="running", created_at=change.now, updated_at=change.now))
    if items:
        change.conn.execute(insert(map_items), [
            {"parent_id": change.row["id"], "entry_seq": seq, "idx": idx, "item": item, "child_id": None,
             "status": "pending", "result": None, "updated_at": change.now} for idx, item in enumerate(items)])
    change.record("map_started", cause="child", target=spec.state_id,
                  detail={"map": spec.name, "total": len(items), "workflow": spec.workflow,
                          "max_concurrency": spec.max_concurrency})
    if not items:  # nothing to wait for: done as soon as this change commits
        change.signal(change.row["id"], "map_done", {}, state=spec.state_id, entry_seq=seq)
        return
    _start_next(change, spec, seq, {"total": len(items), "running": 0, "succeeded": 0, "failed": 0})


def child_ended(change, spec, signal) -> None:
    """A child of the map ended: mark its item, start the next one, finish the map when due."""
    payload, child_id, seq = signal["payload"], signal["source_id"], signal["entry_seq"]
    key = (map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq)
    item = change.conn.execute(select(map_items.c.idx, map_items.c.status).where(
        *key, map_items.c.child_id == child_id)).first()
    summary = _summary(change, seq)
    if item is None or item.status != "running" or summary is None:
        change.record("ignored", cause="child", detail={"child": child_id, "reason": "not a running item of the map"})
        return
    status = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(payload["status"], "failed")
    result = payload["data"] if status == "succeeded" else {"status": payload["status"], "state": payload["state"]}
    change.conn.execute(update(map_items).where(*key, map_items.c.idx == item.idx).values(
        status=status, result=result, updated_at=change.now))
    summary = {**summary, "running": summary["running"] - 1}
    if status != "cancelled":
        summary[status] += 1
    change.record("child_ended", cause="child", source=spec.state_id,
                  detail={"child": child_id, "index": item.idx, "status": payload["status"],
                          "state": payload["state"], "succeeded": summary["succeeded"],
                          "failed": summary["failed"], "total": summary["total"]})
    if summary["status"] != "running":  # the map already ended (failed): keep count, start nothing
        _write(change, seq, summary)
        return
    if spec.too_many_failures(summary["failed"], summary["total"]):
        _write(change, seq, summary, "failed")
        _cancel_rest(change, spec, seq)
        _finish(change, spec, seq, summary, spec.on_error)
        return
    _write(change, seq, summary)
    if summary["succeeded"] + summary["failed"] == summary["total"]:
        _write(change, seq, summary, "succeeded")
        _finish(change, spec, seq, summary, spec.on_done)
        return
    _start_next(change, spec, seq, summary)


def done_empty(change, spec, signal) -> None:
    summary = _summary(change, signal["entry_seq"])
    _write(change, signal["entry_seq"], summary, "succeeded")
    _finish(change, spec, signal["entry_seq"], summary, spec.on_done)


def leaving(change, spec, seq) -> None:
    """The parent left the map's state: pending items will not start (running children are
    told by engine/children.py)."""
    change.conn.execute(update(maps).where(maps.c.parent_id == change.row["id"], maps.c.entry_seq == seq,
                                           maps.c.status == "running").values(status="cancelled",
                                                                              updated_at=change.now))
    change.conn.execute(update(map_items).where(
        map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq,
        map_items.c.status == "pending").values(status="cancelled", updated_at=change.now))


def retry_failed(change) -> bool:
    """``retry`` of a failed parent whose current state's map failed: its failed items run
    again (Step Functions' redrive); those that succeeded keep their results."""
    for state in change.leaf_ids():
        spec = change.cls.child_for(state)
        seq = change.entries.get(state)
        if spec is None or spec.kind != "map" or seq is None:
            continue
        summary = _summary(change, seq)
        if summary is None or summary["status"] != "failed":
            continue
        change.conn.execute(update(map_items).where(
            map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq,
            map_items.c.status.in_(("failed", "cancelled"))).values(status="pending", child_id=None, result=None,
                                                                     updated_at=change.now))
        counts = dict(change.conn.execute(select(map_items.c.status, func.count()).where(
            map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq,
        ).group_by(map_items.c.status)).all())
        summary = {**summary, "failed": 0, "running": counts.get("running", 0),
                   "succeeded": counts.get("succeeded", 0)}
        again = counts.get("pending", 0)
        _write(change, seq, summary, "running")
        change.conn.execute(update(timers).where(timers.c.run_id == change.row["id"],
                                                 timers.c.status == "suspended").values(status="armed"))
        change.status, change.finished_at = "running", None
        change.record("retried", cause="retry", detail={"map": spec.name, "state": state, "items": again})
        _start_next(change, spec, seq, summary)
        return True
    return False


# -- inside --------------------------------------------------------------------------------

def _summary(change, seq) -> dict | None:
    found = change.conn.execute(select(maps).where(maps.c.parent_id == change.row["id"],
                                                   maps.c.entry_seq == seq)).mappings().first()
    return dict(found) if found else None


def _write(change, seq, summary, status=None) -> None:
    values = {"running": summary["running"], "succeeded": summary["succeeded"], "failed": summary["failed"],
              "updated_at": change.now}
    if status is not None:
        values["status"] = summary["status"] = status
    change.conn.execute(update(maps).where(maps.c.parent_id == change.row["id"], maps.c.entry_seq == seq)
                        .values(**values))


def _start_next(change, spec, seq, summary: dict) -> None:
    """Start pending items, in order, while fewer than ``max_concurrency`` run (``summary``: the
    map's counters as this change last wrote them)."""
    from .children import start_run

    room = (spec.max_concurrency or summary["total"]) - summary["running"]
    if room <= 0:
        return
    pending = change.conn.execute(select(map_items.c.idx, map_items.c.item).where(
        map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq, map_items.c.status == "pending",
    ).order_by(map_items.c.idx).limit(room)).all()
    for idx, item in pending:
        data = spec.data_for(change.ctx, item)
        key = spec.business_key(change.ctx, item) if spec.business_key is not None else None
        child_id = start_run(change, spec, seq, data, key, detail={"map": spec.name, "index": idx})
        change.conn.execute(update(map_items).where(
            map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq, map_items.c.idx == idx,
        ).values(status="running", child_id=child_id, updated_at=change.now))
    if pending:
        _write(change, seq, {**summary, "running": summary["running"] + len(pending)})


def _cancel_rest(change, spec, seq) -> None:
    from .children import cancel_children

    change.conn.execute(update(map_items).where(
        map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq,
        map_items.c.status == "pending").values(status="cancelled", updated_at=change.now))
    cancel_children(change, [spec.state_id], f"map {spec.name} failed", seq=seq)


def _finish(change, spec, seq, summary, event) -> None:
    results = None
    if spec.results is not None:
        results = [row.result for row in change.conn.execute(select(map_items.c.result).where(
            map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq).order_by(map_items.c.idx))]
        change.update_data({spec.results: results}, "child", record=False)
    outcome = {"succeeded": summary["succeeded"], "failed": summary["failed"], "total": summary["total"]}
    change.record("map_ended", cause="child", source=spec.state_id, detail={"map": spec.name, **outcome,
                                                                             "status": summary["status"]})
    if event is None:
        if summary["status"] == "failed":
            change.fail({"map": spec.name, "error": f"{summary['failed']} of {summary['total']} items failed"})
        return
    try:
        change.send(event, outcome, "child", detail={"map": spec.name})
    except InvalidTransition as exc:
        change.record("event_rejected", cause="child", event=event, detail={"map": spec.name, "error": str(exc)})


# -- reading -------------------------------------------------------------------------------

def items_page(conn, run_id, name, *, entry_seq=None, after=None, limit=100) -> dict:
    """A page of a map's items in item order (its latest entry unless ``entry_seq``): each item's
    status, child run and result, so a large map's results are read without loading them all."""
    from .errors import MapNotFound
    from .queries import get_run

    get_run(conn, run_id)
    query = select(maps).where(maps.c.parent_id == run_id, maps.c.name == name)
    if entry_seq is not None:
        query = query.where(maps.c.entry_seq == entry_seq)
    summary = conn.execute(query.order_by(maps.c.entry_seq.desc()).limit(1)).mappings().first()
    if summary is None:
        raise MapNotFound(run_id, name, entry_seq)
    rows = conn.execute(select(map_items.c.idx, map_items.c.status, map_items.c.child_id, map_items.c.result).where(
        map_items.c.parent_id == run_id, map_items.c.entry_seq == summary["entry_seq"],
        map_items.c.idx > (-1 if after is None else after)).order_by(map_items.c.idx).limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return {"map": name, "state": summary["state"], "entry_seq": summary["entry_seq"], "status": summary["status"],
            "total": summary["total"], "succeeded": summary["succeeded"], "failed": summary["failed"],
            "running": summary["running"],
            "items": [{"index": r.idx, "status": r.status, "child_id": r.child_id, "result": r.result} for r in rows],
            "next": rows[-1].idx if more else None}
