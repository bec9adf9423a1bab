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

from sqlalchemy import bindparam, func, insert, select, update

from . import hotsql
from .errors import InvalidData, InvalidTransition
from .models import map_items, maps, timers

ACTIVE = ("running", "waiting")

_b = bindparam
# Item writes of a whole batch of signals, one statement (PostgreSQL: one over arrays).
_ITEM_KEY = (("b_parent", map_items.c.parent_id), ("b_seq", map_items.c.entry_seq), ("b_idx", map_items.c.idx))
_ITEM_VALUES = {"b_status": map_items.c.status, "b_child": map_items.c.child_id, "b_result": map_items.c.result,
                "b_now": map_items.c.updated_at}
_UPDATE_ITEM = hotsql.Statement(
    lambda _dialect, _keys: update(map_items).where(*(column == _b(name) for name, column in _ITEM_KEY)).values(
        {column.name: _b(name, type_=column.type) for name, column in _ITEM_VALUES.items()}),
    lambda _keys: hotsql.Arrays.update(map_items, _ITEM_VALUES, key=_ITEM_KEY))
_COUNTERS = ("running", "succeeded", "failed", "status")
_UPDATE_MAP = hotsql.Statement(lambda _dialect, _keys: update(maps).where(
    maps.c.parent_id == _b("b_parent"), maps.c.entry_seq == _b("b_seq")).values(
    {name: _b("b_" + name) for name in (*_COUNTERS, "updated_at")}))


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
    progress = Progress(change, spec, seq, {"total": len(items), "running": 0, "succeeded": 0, "failed": 0,
                                            "status": "running"})
    progress.settle()


class Fanin:
    """The maps one batch of a parent's signals touches: each map's row read once, the items of
    the batch's children read together, and every write left to ``settle``, so a batch of
    children ending costs the parent a few statements, not a few per child."""

    def __init__(self, change, found: list):
        self.change = change
        self.children: dict = {}  # (state, entry seq) -> ids of the children the batch tells of
        for signal in found:
            if signal["kind"] == "child_ended":
                self.children.setdefault((signal["state"], signal["entry_seq"]), []).append(signal["source_id"])
        self.open: dict = {}

    def progress(self, spec, seq) -> "Progress | None":
        key = (spec.state_id, seq)
        if key not in self.open:
            summary = _summary(self.change, seq)
            self.open[key] = None if summary is None else Progress(self.change, spec, seq, summary,
                                                                  self.children.get(key, ()))
        return self.open[key]

    def settle(self) -> None:
        for progress in self.open.values():
            if progress is not None:
                progress.settle()


class Progress:
    """One map's counters and item changes within one transaction of its parent."""

    def __init__(self, change, spec, seq, summary: dict, children=()):
        self.change, self.spec, self.seq = change, spec, seq
        self.summary = summary
        self.items: dict = {}  # child id -> [index, status], of the children asked for
        self.writes: list = []  # item rows to update
        self.dirty = False
        if children:
            for idx, child_id, status in change.conn.execute(select(
                    map_items.c.idx, map_items.c.child_id, map_items.c.status).where(
                    map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == seq,
                    map_items.c.child_id.in_(list(dict.fromkeys(children))))):
                self.items[child_id] = [idx, status]

    @property
    def running(self) -> bool:
        return self.summary["status"] == "running"

    def end(self, child_id, status, result) -> int | None:
        """Mark the child's item ended; its index, or None if it is not a running item."""
        item = self.items.get(child_id)
        if item is None or item[1] != "running":
            return None
        item[1] = status
        self.item(item[0], status, child_id, result)
        self.summary["running"] -= 1
        if status != "cancelled":
            self.summary[status] += 1
        self.dirty = True
        return item[0]

    def item(self, idx, status, child_id, result=None) -> None:
        self.writes.append({"b_parent": self.change.row["id"], "b_seq": self.seq, "b_idx": idx, "b_status": status,
                            "b_child": child_id, "b_result": result, "b_now": self.change.now})

    def settle(self) -> None:
        """Start pending items while fewer than ``max_concurrency`` run, and write it all."""
        if self.running and self.change.entries.get(self.spec.state_id) == self.seq:
            self.start_next()
        self.flush()

    def start_next(self) -> None:
        from .children import start_run

        spec, change = self.spec, self.change
        room = (spec.max_concurrency or self.summary["total"]) - self.summary["running"]
        if room <= 0:
            return
        self.flush()  # the items that ended are no longer running when the next are chosen
        pending = change.conn.execute(select(map_items.c.idx, map_items.c.item).where(
            map_items.c.parent_id == change.row["id"], map_items.c.entry_seq == self.seq,
            map_items.c.status == "pending",
        ).order_by(map_items.c.idx).limit(room)).all()
        for idx, item in pending:
            data = spec.data_for(change.ctx, item)
            key = spec.business_key(change.ctx, item) if spec.business_key is not None else None
            child_id = start_run(change, spec, self.seq, data, key, detail={"map": spec.name, "index": idx})
            self.item(idx, "running", child_id)
        if pending:
            self.summary["running"] += len(pending)
            self.dirty = True

    def flush(self, status=None) -> None:
        if status is not None:
            self.summary["status"], self.dirty = status, True
        if not (self.writes or self.dirty):
            return
        with hotsql.pipelined(self.change.conn):
            if self.writes:
                hotsql.execute_many(self.change.conn, _UPDATE_ITEM, self.writes)
                self.writes = []
            if self.dirty:
                hotsql.execute_many(self.change.conn, _UPDATE_MAP, [{
                    "b_parent": self.change.row["id"], "b_seq": self.seq, "b_updated_at": self.change.now,
                    **{"b_" + name: self.summary[name] for name in _COUNTERS}}])
                self.dirty = False


def child_ended(change, spec, signal, fanin: Fanin, late: str | None = None) -> bool:
    """A child of the map ended: mark its item; finish the map when due (the next items start
    when the batch settles). ``late``: why the map's entry no longer listens (the parent left
    it, or ended): the item still records the end, and nothing else happens. False if the
    signal is not for a running item of the map."""
    payload, child_id, seq = signal["payload"], signal["source_id"], signal["entry_seq"]
    progress = fanin.progress(spec, seq)
    status = {"succeeded": "succeeded", "cancelled": "cancelled"}.get(payload["status"], "failed")
    result = payload["data"] if status == "succeeded" else {"status": payload["status"], "state": payload["state"]}
    idx = None if progress is None else progress.end(child_id, status, result)
    if idx is None:
        change.record("ignored", cause="child", detail={
            "child": child_id, "status": payload["status"], "state": payload["state"],
            "reason": late or "not a running item of the map"})
        return False
    summary = progress.summary
    change.record("child_ended", cause="child", source=spec.state_id,
                  detail={"child": child_id, "index": idx, "status": payload["status"],
                          "state": payload["state"], "succeeded": summary["succeeded"],
                          "failed": summary["failed"], "total": summary["total"],
                          **({"map_ended": late} if late else {})})
    if late or not progress.running:  # the map already ended: keep count, start nothing
        return True
    if spec.too_many_failures(summary["failed"], summary["total"]):
        progress.flush("failed")
        _cancel_rest(change, spec, seq)
        _finish(change, spec, seq, summary, spec.on_error)
    elif summary["succeeded"] + summary["failed"] == summary["total"]:
        progress.flush("succeeded")
        _finish(change, spec, seq, summary, spec.on_done)
    return True


def done_empty(change, spec, signal) -> None:
    summary = _summary(change, signal["entry_seq"])
    Progress(change, spec, signal["entry_seq"], summary).flush("succeeded")
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
                   "succeeded": counts.get("succeeded", 0), "status": "running"}
        again = counts.get("pending", 0)
        change.conn.execute(update(timers).where(timers.c.run_id == change.row["id"],
                                                 timers.c.status == "suspended").values(status="armed"))
        change.status, change.finished_at = "running", None
        change.record("retried", cause="retry", detail={"map": spec.name, "state": state, "items": again})
        progress = Progress(change, spec, seq, summary)
        progress.dirty = True
        progress.settle()
        return True
    return False


# -- inside --------------------------------------------------------------------------------

def _summary(change, seq) -> dict | None:
    found = change.conn.execute(select(maps).where(maps.c.parent_id == change.row["id"],
                                                   maps.c.entry_seq == seq)).mappings().first()
    return dict(found) if found else None


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
