"""A workflow's ``max_active``: at most ``n`` runs admitted at once (per key), across every worker
process and host; the others wait in their initial state, oldest first.

A workflow declares ``max_active = 100`` (or ``Limit(10, key=lambda run: run.data["account"])``:
``n`` per key). Its key has ``n`` rows in ``admission_slots``, each free or holding a run. A start
(``operations.Start``, in its own transaction) takes a free slot if the key has no waiter, and
the run goes on as any run. Otherwise the run is **held**: it is stored in its initial state
(its entry callbacks ran, as at any start) with ``runs.admission_since`` set, an
``admission_waiters`` row and an ``admission_waiting`` history entry, but its states are not
entered yet: no task, no timer, no child run. It holds no thread and no broker message.

The slot is the run's from its admission until it ends: succeeded or cancelled (a **failed run
keeps it**: it may be retried, and counts until it ends; deleting it by retention frees it). The
ending transaction frees it and hands it to the key's first waiter (highest priority, aged one
level per 60 s of waiting as limits.py's waiters are, then the oldest): the slot row names the
waiter, its waiter row goes, and a signal ``admitted`` is written to it. The admission itself is
the waiter's own transition (``ApplySignals`` in engine/children.py, under its lock): it clears
``admission_since``, records ``admitted`` and enters its states (tasks, timers from now, child
runs). The signal is delivered after the ending commit and, failing that, by every reconciler: a
crash in between loses no admission, and the signal is applied once.

While a run waits, events sent to it and data updates are queued (signals to itself, applied
in order right after its admission); cancelling it drops it from the queue and frees nothing.
The reconciler (``reclaim``) hands free slots of keys with waiters over (a slot freed while a
waiter was being added), and every few seconds frees the slots of runs that ended without giving
theirs back (deleted, or ended while their slot was on its way) and forgets stale waiter rows.
"""

import random

from sqlalchemy import Double, bindparam, delete, exists, func, insert, select, update

from . import children
from .errors import CallbackError, InterlockError
from .ids import new_id
from .limits import AGING, KEY_LENGTH, RETURNING, insert_ignoring_duplicates
from .models import admission_slots as slots
from .models import admission_waiters as waiters
from .models import runs, signals
from .timeparse import iso

ACTIVE = ("running", "waiting")
HOLDING = ("running", "waiting", "failed")  # a failed run keeps its slot: it may be retried
ADMITTED = "admitted"  # the signal that hands a waiting run its slot
QUEUED_DATA = "data"  # a data update sent while the run waited, applied on admission
RECLAIM_BATCH = 200
STALE_EVERY = 5.0  # seconds between looks for slots of runs that ended without giving theirs back
_looked_at = {"stale": 0.0}
_ENSURED: set = set()  # (workflow, key, n) whose slot rows this process made sure exist

SET_SINCE = update(runs).where(runs.c.id == bindparam("b_id")).values(
    admission_since=bindparam("b_since", type_=Double()))
WAITER_PRIORITY = update(waiters).where(waiters.c.run_id == bindparam("b_id")).values(
    priority=bindparam("b_priority"))


def key_of(limit, change) -> str:
    if limit.key is None:
        return ""
    try:
        value = limit.key(change.ctx)
    except Exception as exc:  # the user's function
        raise CallbackError(change.row["id"], "max_active key", exc) from exc
    return str(value)[:KEY_LENGTH]


# -- a start ------------------------------------------------------------------------------------

def start(change, seq) -> bool:
    """At a start (``operations.Start``, after ``started`` was recorded at ``seq``): True if the run
    was admitted (it took a slot: enter its states now), else it is held, waiting for one."""
    limit, conn, now = change.cls._max_active, change.conn, change.now
    workflow, key = change.cls.workflow_name, key_of(limit, change)
    if conn.execute(select(waiters.c.run_id).where(waiters.c.workflow == workflow, waiters.c.key == key)
                    .limit(1)).first() is None:  # nobody is ahead of it
        if _take(conn, workflow, key, limit.n, change.row["id"], now) is not None:
            return True
    conn.execute(insert(waiters).values(run_id=change.row["id"], workflow=workflow, key=key,
                                        priority=change.row.get("priority") or 0, since=now))
    _set_since(change, now)
    for state in change.configuration:
        change.entries[state] = seq
    change.record("admission_waiting", cause="admission", detail={"max_active": limit.n, "key": key or None})
    return False


def _set_since(change, since) -> None:
    change.admission_since = since
    change.row = {**change.row, "admission_since": since}
    if not change.new:  # a new run's INSERT carries it
        change.writes.defer(SET_SINCE, {"b_id": change.row["id"], "b_since": since})


def _ensure_slots(conn, workflow: str, key: str, n: int, check=False) -> None:
    if (workflow, key, n) in _ENSURED and not check:
        return
    have = conn.execute(select(func.count()).select_from(slots).where(
        slots.c.workflow == workflow, slots.c.key == key)).scalar_one()
    if have < n:
        conn.execute(insert_ignoring_duplicates(conn.dialect.name, slots),
                     [{"workflow": workflow, "key": key, "slot": i, "run_id": None, "acquired_at": None}
                      for i in range(have, n)])
    if len(_ENSURED) > 100_000:
        _ENSURED.clear()
    _ENSURED.add((workflow, key, n))


def _take(conn, workflow, key, n, run_id, now) -> int | None:
    """A free slot of the key taken for ``run_id``: its number, or None (none is free)."""
    _ensure_slots(conn, workflow, key, n)
    slot = _take_free(conn, workflow, key, n, run_id, now)
    if slot is None:  # none free, or its rows are gone (this process's memory of them is stale)
        _ensure_slots(conn, workflow, key, n, check=True)
        slot = _take_free(conn, workflow, key, n, run_id, now)
    return slot


def _free_slot(workflow, key, lowest, n):
    return (select(slots.c.slot).where(slots.c.workflow == workflow, slots.c.key == key, slots.c.slot >= lowest,
                                       slots.c.slot < n, slots.c.run_id.is_(None))
            .order_by(slots.c.slot).limit(1).with_for_update(skip_locked=True))


def _take_free(conn, workflow, key, n, run_id, now) -> int | None:
    # From a random slot on, then from the first: takers spread over the rows (SKIP LOCKED).
    start_at = random.randrange(n) if n > 1 else 0
    for lowest in ((start_at, 0) if start_at else (0,)):
        if conn.dialect.name in RETURNING:
            taken = conn.execute(update(slots).where(
                slots.c.workflow == workflow, slots.c.key == key, slots.c.run_id.is_(None),
                slots.c.slot == _free_slot(workflow, key, lowest, n).scalar_subquery())
                .values(run_id=run_id, acquired_at=now).returning(slots.c.slot)).scalar()
        else:
            taken = conn.execute(_free_slot(workflow, key, lowest, n)).scalar()
            if taken is not None:
                conn.execute(_slot_row(workflow, key, taken).values(run_id=run_id, acquired_at=now))
        if taken is not None:
            return taken
    return None


def _slot_row(workflow, key, slot):
    return update(slots).where(slots.c.workflow == workflow, slots.c.key == key, slots.c.slot == slot)


# -- an end, and the hand-over -----------------------------------------------------------------

def ending(change) -> None:
    """The run ends (succeeded, cancelled; ``Change.finish``): a waiting run leaves the queue;
    the slot it holds goes to the key's next waiter, admitted by its own transition."""
    if change.row.get("admission_since") is not None or change.admission_since is not None:
        change.conn.execute(delete(waiters).where(waiters.c.run_id == change.row["id"]))
        _set_since(change, None)
    release(change)


def release(change) -> None:
    """Hand the slot the run holds (if any) to the next waiter of its key, else free it."""
    held = change.conn.execute(select(slots.c.workflow, slots.c.key, slots.c.slot).where(
        slots.c.run_id == change.row["id"]).with_for_update()).first()
    if held is None:
        return
    limit = change.cls._max_active
    receiver = _hand_over(change.conn, *held, limit.n if limit is not None else 0, change.now)
    if receiver is not None:
        change.signal(receiver, ADMITTED, {"workflow": held.workflow, "key": held.key, "slot": held.slot})


def _effective(now):
    """A waiter's priority as the hand-over orders it: its own, plus one per AGING seconds waited."""
    return waiters.c.priority + (bindparam("b_now", now, type_=Double()) - waiters.c.since) / AGING


def _hand_over(conn, workflow, key, slot, n, now) -> str | None:
    """Give the slot to the key's first waiter (deleting its waiter row), else free it; the
    waiter's run id. A slot at or above ``n`` (max_active lowered since) is freed."""
    waiter = None
    if slot < n:
        waiter = conn.execute(select(waiters.c.run_id).where(waiters.c.workflow == workflow, waiters.c.key == key)
                              .order_by(_effective(now).desc(), waiters.c.since).limit(1)
                              .with_for_update(skip_locked=True)).scalar()
    if waiter is not None:
        conn.execute(delete(waiters).where(waiters.c.run_id == waiter))
    conn.execute(_slot_row(workflow, key, slot).values(run_id=waiter, acquired_at=now if waiter else None))
    return waiter


# -- the waiting run's own transitions -------------------------------------------------------------

def admitted(change, signal) -> bool:
    """The ``admitted`` signal (``ApplySignals``): the run enters its states now. False (stale,
    recorded as ignored) if it no longer waits; one that ended meanwhile passes the slot on."""
    held = change.conn.execute(select(slots.c.slot, slots.c.key).where(
        slots.c.run_id == change.row["id"])).first()
    detail = {"slot": (signal["payload"] or {}).get("slot"), "freed_by": signal["source_id"]}
    reason = None
    if change.status not in ACTIVE:
        reason = f"run is {change.status}"
        if change.status not in HOLDING and held is not None:  # it ended while the slot came to it
            release(change)
    elif change.admission_since is None:
        reason = "already admitted"
    elif held is None:
        reason = "the slot is no longer the run's"
    if reason is not None:
        change.record("ignored", cause="admission", detail={**detail, "reason": reason})
        return False
    waited = change.now - change.admission_since
    _set_since(change, None)
    seq = change.record("admitted", cause="admission", target=change.leaves(),
                        detail={**detail, "slot": held.slot, "key": held.key or None, "waited": round(waited, 3)})
    try:
        change.enter_states(list(change.configuration), seq)
    except InterlockError as exc:  # its data refused (an at() timer's field...): the signal is refused
        if isinstance(exc, CallbackError):
            raise
        raise CallbackError(change.row["id"], "admission", exc) from exc
    return True


def refused(change, error: str) -> None:
    """Entering the states at admission raised (a child's data, a limit's key, a timer's field):
    the run fails, and with no step to retry it gives its slot back."""
    if change.status not in ACTIVE or change.admission_since is None:
        return
    _set_since(change, None)
    change.status, change.finished_at = "failed", change.now
    change.record("failed", cause="admission", source=change.leaves(), detail={"error": error, "admission": True})
    release(change)


def queue(change, kind, payload, what) -> None:
    """An event or a data update sent while the run waits: kept (a signal to itself, not
    delivered now) and applied in order right after its admission."""
    change.writes.signals.append(children.new_signal(change, change.row["id"], kind, payload))
    key = "event_queued" if kind == "event" else "data_queued"
    change.record(key, event=payload.get("event"), cause=payload["cause"],
                  data=payload.get("data") or payload.get("patch"),
                  detail={"reason": f"the run waits for a slot of workflow {change.cls.workflow_name}: "
                                    f"{what} applied when it is admitted"})


def queued_data(change, signal) -> bool:
    payload = signal["payload"]
    if change.status not in ACTIVE:
        change.record("ignored", cause=payload["cause"], data=payload["patch"],
                      detail={"reason": f"run is {change.status}", "queued": True})
        return False
    change.update_data(payload["patch"], payload["cause"])
    return True


def applicable_clause():
    """A pending signal of a run waiting for admission is applied now only if it admits or cancels it."""
    return runs.c.admission_since.is_(None) | signals.c.kind.in_((ADMITTED, "parent_left"))


# -- the reconciler's duty --------------------------------------------------------------------

def _limits_loaded(rt) -> dict:
    """{workflow: n} of the loaded workflows with max_active (the newest version declaring it)."""
    out = {}
    for name in rt.registry.names():
        for version in sorted(rt.registry.versions(name), reverse=True):
            limit = rt.registry.get(name, version)._max_active
            if limit is not None:
                out[name] = limit.n
                break
    return out


def reclaim(rt) -> int:
    """Hand free slots of keys with waiters over; every few seconds also free the slots of runs
    that no longer hold theirs (deleted, or ended while it was on its way) and forget waiter rows
    of runs that no longer wait. How many slots it handed over or freed."""
    loaded = _limits_loaded(rt)
    if not loaded:
        return 0
    now = rt.clock.now()
    look_stale = now - _looked_at["stale"] >= STALE_EVERY
    holding = exists().where(runs.c.id == slots.c.run_id, runs.c.status.in_(HOLDING))
    still_waiting = exists().where(runs.c.id == waiters.c.run_id, runs.c.admission_since.is_not(None),
                                   runs.c.status.in_(ACTIVE))
    with rt.db.read() as conn:
        keys = conn.execute(select(waiters.c.workflow, waiters.c.key).where(waiters.c.workflow.in_(loaded))
                            .distinct().limit(RECLAIM_BATCH)).all()
        found = [row for workflow, key in keys for row in conn.execute(
            select(slots.c.workflow, slots.c.key, slots.c.slot).where(
                slots.c.workflow == workflow, slots.c.key == key, slots.c.run_id.is_(None),
                slots.c.slot < loaded[workflow]).limit(RECLAIM_BATCH)).all()]
        gone = []
        if look_stale:
            _looked_at["stale"] = now
            found += conn.execute(select(slots.c.workflow, slots.c.key, slots.c.slot).where(
                slots.c.workflow.in_(loaded), slots.c.run_id.is_not(None), ~holding).limit(RECLAIM_BATCH)).all()
            gone = conn.execute(select(waiters.c.run_id).where(waiters.c.workflow.in_(loaded), ~still_waiting)
                                .limit(RECLAIM_BATCH)).scalars().all()
    if not (found or gone):
        return 0
    pending = []
    with rt.db.write() as conn:
        if gone:
            conn.execute(delete(waiters).where(waiters.c.run_id.in_(gone), ~still_waiting))
        for workflow, key, slot in found:
            current = conn.execute(select(slots.c.run_id).where(
                slots.c.workflow == workflow, slots.c.key == key, slots.c.slot == slot)
                .with_for_update(skip_locked=True)).first()
            if current is None:
                continue  # held by another transaction: it sees to the slot
            if current.run_id is not None and conn.execute(select(runs.c.id).where(
                    runs.c.id == current.run_id, runs.c.status.in_(HOLDING))).first() is not None:
                continue  # taken again meanwhile
            receiver = _hand_over(conn, workflow, key, slot, loaded[workflow], now)
            if receiver is not None:
                row = {"id": new_id(now), "run_id": receiver, "kind": ADMITTED, "source_id": current.run_id or receiver,
                       "state": None, "entry_seq": None, "status": "pending", "created_at": now, "applied_at": None,
                       "payload": {"workflow": workflow, "key": key, "slot": slot}}
                conn.execute(insert(signals).values(row))
                pending.append((row["id"], receiver))
    if pending:
        children.deliver(rt, pending)
    return len(found)


# -- reading ----------------------------------------------------------------------------------

def waiting_for(conn, run, now: float, limit) -> dict:
    """What a run waiting for admission waits for: its workflow's slots in use, the runs ahead."""
    mine = conn.execute(select(waiters).where(waiters.c.run_id == run.id)).mappings().first()
    handed = conn.execute(select(slots.c.slot, slots.c.key).where(slots.c.run_id == run.id)).first()
    key = mine["key"] if mine is not None else (handed.key if handed is not None else "")
    held = conn.execute(select(func.count()).select_from(slots).where(
        slots.c.workflow == run.workflow, slots.c.key == key, slots.c.run_id.is_not(None))).scalar_one()
    ahead = 0
    if mine is not None:
        ahead = conn.execute(select(func.count()).select_from(waiters).where(
            waiters.c.workflow == run.workflow, waiters.c.key == key, waiters.c.run_id != run.id,
            _effective(now) >= mine["priority"] + (now - mine["since"]) / AGING)).scalar_one()
    return {"workflow": run.workflow, "key": key or None, "active": held, "max_active": limit.n if limit else None,
            "ahead": ahead, "since": iso(run.admission_since), "handed": handed is not None}


def describe_wait(wait: dict) -> str:
    """``a slot of workflow orders: 100 of 100 active, 12 ahead``."""
    of = f" (key {wait['key']})" if wait["key"] else ""
    n = wait["max_active"] if wait["max_active"] is not None else "?"
    if wait["handed"]:
        return f"its admission to workflow {wait['workflow']}{of}: a slot was handed to it and is being taken"
    return (f"a slot of workflow {wait['workflow']}{of}: {wait['active']} of {n} active, {wait['ahead']} ahead "
            "(events sent meanwhile are queued, applied once it is admitted)")


def list_slots(rt, *, name=None, limit=100) -> list[dict]:
    """The workflows' keys with slots: name, key, slots, in use (active runs), waiting runs."""
    held = func.count(slots.c.run_id)
    query = (select(slots.c.workflow, slots.c.key, func.count().label("slots"), held.label("in_use"))
             .group_by(slots.c.workflow, slots.c.key).order_by(held.desc(), slots.c.workflow).limit(limit))
    if name is not None:
        query = query.where(slots.c.workflow == name)
    with rt.db.read() as conn:
        rows = conn.execute(query).all()
        waiting = {(w, k): c for w, k, c in conn.execute(
            select(waiters.c.workflow, waiters.c.key, func.count()).group_by(waiters.c.workflow, waiters.c.key))}
    return [{"kind": "workflow", "name": w, "key": k or None, "slots": n, "in_use": used,
             "waiting": waiting.get((w, k), 0)} for w, k, n, used in rows]
