"""Concurrency and rate limits of steps, across every worker process and host.

**Concurrency** (``step(concurrency=5)``, ``Limit(5, key=lambda run: run.data["account"])``): a
limit's key has ``n`` slot rows (``limit_slots``). A task takes a slot in the transaction that
makes it ready to run (``Change.schedule``: the state's entry, a retry, a resume), before it is
sent; with no slot free it is stored ``limited`` with a ``limit_waiters`` row and is not sent:
it holds no thread and no broker message. The slot stays the task's through its retries and is
given back in the transaction that ends the task (its result, its last failure), which hands it
straight to the waiter of highest priority (then the oldest) and sends that task after the
commit. A task that ends any other way (superseded, cancelled, its run deleted) and a waiter
whose task is gone are found by the reconciler's pass (``reclaim``), which frees and hands
over their slots. A worker that dies running a step keeps the task's slot for the task: the
attempt is run again once its lease has expired, under the same slot. Free slots are taken
with ``FOR UPDATE SKIP LOCKED`` (PostgreSQL, MariaDB): two transactions taking slots of one key
never wait for each other; SQLite has one writer at a time.

**Rate** (``Rate(50, per=timedelta(seconds=1), key=...)``): a key's next start time
(``rate_buckets``), moved on by ``per / n`` per attempt: evenly spaced, no burst. An attempt
reserves its start when it is delivered, not when it is scheduled (a backlog left by workers that
were down is spread out, not let through at once), in ``tasks.rate_at``; a start less than
``RATE_LEAD`` away is waited for in the worker thread, a later one is the message sent again
with the time left (Dramatiq's delays are about 0.1 s coarse: the last ``RATE_LEAD`` is the
worker's). A retry reserves again.

A task of a limited step runs only holding its slot: a delivery whose task has none (sent by a
path that did not take one) takes it first, or waits for it (``runs_now``).
"""

import logging
import random

from sqlalchemy import Double, Integer, String, any_, bindparam, cast, delete, exists, func, insert, select, text, update
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, aggregate_order_by
from sqlalchemy.sql.expression import Grouping

from . import hotsql
from .errors import CallbackError


from .models import limit_slots, limit_waiters, rate_buckets, runs, tasks

log = logging.getLogger(__name__)
OPEN = ("queued", "limited", "running")
KEY_LENGTH = 255
RECLAIM_BATCH = 200
ANALYZE_AFTER = 100  # slot rows made at once after which PostgreSQL's statistics are refreshed
# A waiter gains one priority level per this many seconds of waiting: a steady stream of higher
# priorities delays a lower one, never forever.
AGING = 60.0
# A rate-limited attempt whose reserved start is at most this far away waits for it in the worker
# thread; a later one comes back (its message sent again) this much before its start.
RATE_LEAD = 0.5
_ENSURED: set = set()  # (name, key, n) whose slot rows this process made sure exist


def key_of(limit, change) -> str:
    if limit.key is None:
        return ""
    try:
        value = limit.key(change.ctx)
    except Exception as exc:  # the user's function
        raise CallbackError(change.row["id"], "limit key", exc) from exc
    return str(value)[:KEY_LENGTH]


def insert_ignoring_duplicates(dialect: str, table):
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    return mysql.insert(table).prefix_with("IGNORE")


def _ensure_slots(conn, name: str, key: str, n: int, check=False) -> None:
    if (name, key, n) in _ENSURED and not check:
        return
    have = conn.execute(select(func.count()).select_from(limit_slots).where(
        limit_slots.c.name == name, limit_slots.c.key == key)).scalar_one()
    if have < n:
        conn.execute(insert_ignoring_duplicates(conn.dialect.name, limit_slots),
                     [{"name": name, "key": key, "slot": i, "task_id": None, "acquired_at": None}
                      for i in range(have, n)])
        if conn.dialect.name == "postgresql" and n - have >= ANALYZE_AFTER:
            # Until the table's statistics count the new rows, the planner takes a key for one
            # row and reads a batch's slots by scanning all of them (~40 ms for 10,000).
            conn.execute(text("ANALYZE limit_slots"))
    if len(_ENSURED) > 100_000:
        _ENSURED.clear()
    _ENSURED.add((name, key, n))


def _take_in_one(dialect, _keys):
    """A free slot of the key taken, returning its number (PostgreSQL, SQLite: one statement)."""
    free = (select(limit_slots.c.slot).where(
        limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
        limit_slots.c.slot >= bindparam("b_from"), limit_slots.c.slot < bindparam("b_n"),
        limit_slots.c.task_id.is_(None))
        .order_by(limit_slots.c.slot).limit(1).with_for_update(skip_locked=True).scalar_subquery())
    return (update(limit_slots).where(limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
                                      limit_slots.c.slot == free, limit_slots.c.task_id.is_(None))
            .values(task_id=bindparam("b_task"), acquired_at=bindparam("b_now")).returning(limit_slots.c.slot))


_TAKE_ONE = hotsql.Statement(_take_in_one)
# A task's slot given back, returning which (the caller hands it to a waiter, if the key has one).
_GIVE_BACK = hotsql.Statement(lambda _dialect, _keys: update(limit_slots).where(
    limit_slots.c.task_id == bindparam("b_task")).values(task_id=None, acquired_at=None).returning(
    limit_slots.c.name, limit_slots.c.key, limit_slots.c.slot))
_ANY_WAITER = hotsql.Statement(lambda _dialect, _keys: select(limit_waiters.c.task_id).where(
    limit_waiters.c.name == bindparam("b_name"), limit_waiters.c.key == bindparam("b_key")).limit(1))


def _give_back_many(_dialect, _keys):
    """PostgreSQL: the slots of a batch's ended tasks given back, and whether each one's key has
    waiters, in one statement."""
    freed = (update(limit_slots).where(limit_slots.c.task_id == any_(bindparam("b_tasks", type_=ARRAY(String))))
             .values(task_id=None, acquired_at=None)
             .returning(limit_slots.c.name, limit_slots.c.key, limit_slots.c.slot).cte("freed"))
    waiting = exists().where(limit_waiters.c.name == freed.c.name, limit_waiters.c.key == freed.c.key)
    return select(freed.c.name, freed.c.key, freed.c.slot, waiting.label("waiting"))


def _take_many(_dialect, keys):
    """PostgreSQL: up to one free slot of the key for each of a batch's new tasks, from slot
    ``b_from`` on, in one statement: the task ids and the slots they took. The free slots are an
    array the primary key's index is searched with, whatever the planner knows of the table.

    With ``b_gives``, the same statement also gives back the slots of those ended tasks whose key
    has no waiter (the others are handed over after the rows are written), and each row returned
    says how many it gave back (``given``)."""
    free = (select(limit_slots.c.slot).where(
        limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
        limit_slots.c.slot >= bindparam("b_from"), limit_slots.c.slot < bindparam("b_n"),
        limit_slots.c.task_id.is_(None))
        .order_by(limit_slots.c.slot).limit(bindparam("b_k")).with_for_update(skip_locked=True).subquery("free"))
    found = select(func.array_agg(aggregate_order_by(free.c.slot, free.c.slot)).label("slots")).cte("found")
    slots = cast(select(found.c.slots).scalar_subquery(), ARRAY(Integer))  # an array, not a set of rows
    task_ids = Grouping(cast(bindparam("b_tasks", type_=ARRAY(String)), ARRAY(String)))  # (...)[i]
    taken = (update(limit_slots).where(limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
                                       limit_slots.c.slot == any_(slots))
             .values(task_id=task_ids[func.array_position(slots, limit_slots.c.slot)], acquired_at=bindparam("b_now")))
    if "b_gives" not in keys:
        return taken.returning(limit_slots.c.task_id, limit_slots.c.slot)
    no_waiter = ~exists().where(limit_waiters.c.name == limit_slots.c.name, limit_waiters.c.key == limit_slots.c.key)
    gone = (update(limit_slots).where(limit_slots.c.task_id == any_(bindparam("b_gives", type_=ARRAY(String))), no_waiter)
            .values(task_id=None, acquired_at=None).returning(limit_slots.c.slot).cte("gone"))
    given = select(func.count()).select_from(gone).scalar_subquery()
    return taken.returning(limit_slots.c.task_id, limit_slots.c.slot, given.label("given"))


_GIVE_BACK_MANY = hotsql.Statement(_give_back_many)
_TAKE_MANY = hotsql.Statement(_take_many)
RETURNING = ("postgresql", "sqlite")  # MariaDB has no UPDATE ... RETURNING: two statements there
# Where a batch's slots are taken and given back at its flush, a statement each (``flush``); SQLite
# has one writer at a time, and its statements cost no round trip: one task at a time there.
BATCHED = ("postgresql",)

_FREE_SLOT = (select(limit_slots.c.slot).where(
    limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
    limit_slots.c.slot < bindparam("b_n"), limit_slots.c.task_id.is_(None))
    .order_by(limit_slots.c.slot).limit(1).with_for_update(skip_locked=True))
_TAKE_SLOT = update(limit_slots).where(
    limit_slots.c.name == bindparam("b_name"), limit_slots.c.key == bindparam("b_key"),
    limit_slots.c.slot == bindparam("b_slot")).values(task_id=bindparam("b_task"), acquired_at=bindparam("b_now"))


def _take(conn, name, key, n, task_id, now) -> int | None:
    """A free slot of the key taken for ``task_id``: its number, or None (none is free)."""
    _ensure_slots(conn, name, key, n)
    slot = _take_free(conn, name, key, n, task_id, now)
    if slot is None:  # none free, or its rows are gone (this process's memory of them is stale)
        _ensure_slots(conn, name, key, n, check=True)
        slot = _take_free(conn, name, key, n, task_id, now)
    return slot


def _take_free(conn, name, key, n, task_id, now) -> int | None:
    params = {"b_name": name, "b_key": key, "b_n": n, "b_task": task_id, "b_now": now}
    if conn.dialect.name in RETURNING:
        # From a random slot on, then from the first: takers spread over the key's rows instead of
        # all walking past the same held ones and waiting on the same few free ones.
        start = random.randrange(n) if n > 1 else 0
        for lowest in ((start, 0) if start else (0,)):
            taken = hotsql.fetch(conn, _TAKE_ONE, {**params, "b_from": lowest})
            if taken:
                return taken[0]["slot"]
        return None
    slot = conn.execute(_FREE_SLOT, {"b_name": name, "b_key": key, "b_n": n}).scalar()
    if slot is not None:
        conn.execute(_TAKE_SLOT, {**params, "b_slot": slot})
    return slot


FORGET_RESERVATION = update(tasks).where(tasks.c.id == bindparam("b_task")).values(rate_at=None)


def holds_slot(conn, task_id) -> bool:
    return conn.execute(select(limit_slots.c.slot).where(limit_slots.c.task_id == task_id)).first() is not None


def admit(change, task: dict, spec) -> bool | None:
    """Before ``task`` of a step with a concurrency limit is sent (``Change.schedule``): True if
    it holds a slot (taken now, or already its own: a retry), False if it waits for one (a waiter
    row; the caller stores it ``limited``). None on PostgreSQL for a new task: its slot is taken at
    the flush, with those of the batch's other new tasks (``flush``)."""
    conn, now = change.conn, change.now
    fresh = task.get("attempt", 0) == 0 and task["status"] == "queued" and task.get("sends", 0) == 0
    if fresh and conn.dialect.name in BATCHED:
        return None
    name, key = spec.limit_name(spec.concurrency), key_of(spec.concurrency, change)
    if not fresh and holds_slot(conn, task["id"]):
        return True
    slot = _take(conn, name, key, spec.concurrency.n, task["id"], now)
    if slot is not None:
        task["slot"] = slot  # the task row says it holds one: its delivery need not look
        return True
    _wait(change, task, name, key, spec)
    return False


def _wait(change, task, name, key, spec) -> None:
    change.conn.execute(insert(limit_waiters).values(
        task_id=task["id"], run_id=change.row["id"], name=name, key=key,
        priority=change.row.get("priority") or 0, since=change.now, time_limit=spec.time_limit))


def mark_waiting(task: dict, now: float) -> None:
    """The task row as stored while it waits for a slot: not sent."""
    task["status"], task["available_at"] = "limited", now
    task["sent_at"], task["sent_by"], task["sends"] = None, None, 0


def reserve(rt, row: dict, spec, now: float) -> float:
    """At a delivery of a rate-limited step's task: its attempt's start time, reserved from the
    key's bucket once per attempt (``tasks.rate_at``; a re-delivery finds its reservation)."""
    from .transitions import Change

    rate = spec.rate
    with rt.db.write() as conn:
        reserved = conn.execute(select(tasks.c.rate_at).where(tasks.c.id == row["id"])).scalar()
        if reserved is not None and reserved >= now - rate.interval:
            return reserved
        # None yet, or its message came back too late to start in its place: a new place, at the end.
        locked = conn.execute(select(runs).where(runs.c.id == row["run_id"])).mappings().first()
        change = Change(rt, conn, dict(locked), rt.registry.get(locked["workflow"], locked["version"]), now)
        name, key = spec.limit_name(rate), key_of(rate, change)
        bucket = conn.execute(select(rate_buckets.c.next_at).where(
            rate_buckets.c.name == name, rate_buckets.c.key == key).with_for_update()).first()
        if bucket is None:
            conn.execute(insert_ignoring_duplicates(conn.dialect.name, rate_buckets).values(
                name=name, key=key, next_at=now))
            bucket = conn.execute(select(rate_buckets.c.next_at).where(
                rate_buckets.c.name == name, rate_buckets.c.key == key).with_for_update()).first()
        start = max(now, bucket.next_at)
        conn.execute(update(rate_buckets).where(rate_buckets.c.name == name, rate_buckets.c.key == key)
                     .values(next_at=start + rate.interval))
        conn.execute(update(tasks).where(tasks.c.id == row["id"]).values(rate_at=start))
    return start


def release(change, task_id) -> None:
    """``task_id`` ended: its slot goes to the next waiter of its key, at the flush, once the
    batch's rows are written (``give_back_pending``)."""
    change.writes.slot_gives.append((change, task_id))


def _give_back(change, task_id) -> None:
    conn = change.conn
    if conn.dialect.name in RETURNING:
        given = hotsql.fetch(conn, _GIVE_BACK, {"b_task": task_id})
        if not given:
            return
        name, key, slot = given[0]["name"], given[0]["key"], given[0]["slot"]
        if not hotsql.fetch(conn, _ANY_WAITER, {"b_name": name, "b_key": key}):
            return
    else:
        held = conn.execute(select(limit_slots.c.name, limit_slots.c.key, limit_slots.c.slot).where(
            limit_slots.c.task_id == task_id).with_for_update()).first()
        if held is None:
            return
        name, key, slot = held
    _hand_over(conn, name, key, slot, change.now, change.rt.worker_id, change.woken)


def give_back_pending(conn, writes) -> None:
    """After a batch's rows are written: the slots of its ended tasks given back, each handed to
    its key's first waiter if it has one (sent after the commit with the outcome that freed it).
    On PostgreSQL a statement for the batch; elsewhere one a task."""
    gives, writes.slot_gives = writes.slot_gives, []
    if conn.dialect.name not in BATCHED:
        for change, task_id in gives:
            before = len(change.woken)
            _give_back(change, task_id)
            _send_woken(change, change.woken[before:])
        return
    freed = hotsql.fetch(conn, _GIVE_BACK_MANY, {"b_tasks": [task_id for _, task_id in gives]})
    change = gives[0][0]
    for row in freed:
        if row["waiting"]:
            woken: list = []
            _hand_over(conn, row["name"], row["key"], row["slot"], change.now, change.rt.worker_id, woken)
            change.woken.extend(woken)
            _send_woken(change, woken)


def _send_woken(change, woken) -> None:
    if woken and change.outcome is not None:  # the change is finished: add them to what it sends
        change.outcome.dispatch.extend(woken)


def take_pending(conn, writes) -> None:
    """PostgreSQL, before a batch's rows are written: slots for its new tasks, a statement per
    (limit, key). A new task that finds none free waits: stored ``limited``, its message
    withheld. The same outcome as ``admit`` one task at a time (tests/test_limits.py)."""
    takes, writes.slot_takes = writes.slot_takes, []
    stored = {id(task) for task in writes.tasks}  # a task its own change superseded is not
    groups: dict = {}
    for change, task, spec, dispatch in takes:
        if id(task) in stored or any(new is task for new in change.new_tasks):
            key = (spec.limit_name(spec.concurrency), key_of(spec.concurrency, change), spec.concurrency.n)
            groups.setdefault(key, []).append((change, task, spec, dispatch))
    gives = [task_id for _, task_id in writes.slot_gives]  # given back with the first group's take
    for (name, key, n), wanted in groups.items():
        now = wanted[0][0].now
        _ensure_slots(conn, name, key, n)
        got, given = _take_for(conn, name, key, n, [task["id"] for _, task, _, _ in wanted], now, gives)
        if gives and given == len(gives):
            writes.slot_gives = []  # none had a waiter: nothing left to give back after the rows
        gives = None
        if len(got) < len(wanted):  # none free, or its rows are gone (this process's memory is stale)
            _ensure_slots(conn, name, key, n, check=True)
            got.update(_take_for(conn, name, key, n, [t["id"] for _, t, _, _ in wanted if t["id"] not in got],
                                 now)[0])
        for change, task, spec, dispatch in wanted:
            if task["id"] in got:
                task["slot"] = got[task["id"]]
                continue
            mark_waiting(task, change.now)
            _wait(change, task, name, key, spec)
            for sent in (change.dispatch, change.outcome.dispatch if change.outcome is not None else []):
                if dispatch in sent:
                    sent.remove(dispatch)


def _take_for(conn, name, key, n, task_ids, now, gives=None) -> tuple[dict, int | None]:
    """Slots of the key for as many of ``task_ids`` as are free: ({task id: slot}, how many of
    ``gives`` the first statement gave back, None if it returned no row to say)."""
    start = random.randrange(n) if n > 1 else 0  # spread over the key's rows, as _take_free does
    got: dict = {}
    given = None
    for lowest in ((start, 0) if start else (0,)):
        rest = [task_id for task_id in task_ids if task_id not in got]
        if not rest:
            break
        params = {"b_name": name, "b_key": key, "b_from": lowest, "b_n": n, "b_k": len(rest), "b_tasks": rest,
                  "b_now": now}
        if gives:
            params["b_gives"] = gives
        for row in hotsql.fetch(conn, _TAKE_MANY, params):
            got[row["task_id"]] = row["slot"]
            if gives:
                given = row["given"]
        gives = None
    return got, given


def effective_priority(now):
    """A waiter's priority as the hand-over orders it: its own, plus one per AGING seconds waited."""
    return limit_waiters.c.priority + (bindparam("b_now", now, type_=Double()) - limit_waiters.c.since) / AGING


def _hand_over(conn, name, key, slot, now, sender, dispatch) -> bool:
    """Give the slot to the first waiter of the key whose task still waits, else free it."""
    from .transitions import Dispatch

    while True:
        waiter = conn.execute(select(limit_waiters.c.task_id, limit_waiters.c.time_limit, limit_waiters.c.priority).where(
            limit_waiters.c.name == name, limit_waiters.c.key == key)
            .order_by(effective_priority(now).desc(), limit_waiters.c.since).limit(1)
            .with_for_update(skip_locked=True)).first()
        if waiter is None:
            conn.execute(update(limit_slots).where(limit_slots.c.name == name, limit_slots.c.key == key,
                                                   limit_slots.c.slot == slot).values(task_id=None, acquired_at=None))
            return False
        conn.execute(delete(limit_waiters).where(limit_waiters.c.task_id == waiter.task_id))
        woken = conn.execute(update(tasks).where(tasks.c.id == waiter.task_id, tasks.c.status == "limited").values(
            status="queued", slot=slot, sent_at=now, sent_by=sender, sends=tasks.c.sends + 1,
            updated_at=now)).rowcount
        if woken:
            conn.execute(_TAKE_SLOT, {"b_name": name, "b_key": key, "b_slot": slot, "b_task": waiter.task_id,
                                      "b_now": now})
            dispatch.append(Dispatch(waiter.task_id, 0.0, waiter.time_limit, priority=waiter.priority))
            return True


_STALE_EVERY = 5.0  # seconds between looks for slots of tasks that ended without giving theirs back
_looked_at = {"stale": 0.0}


def reclaim(rt) -> int:
    """The reconciler's duty: hand free slots to the waiters of their keys (a slot freed by a
    transaction that found no waiter, while one was being added); every few seconds, also free
    the slots of tasks that ended without giving theirs back (superseded, cancelled, deleted) and
    forget waiters whose task no longer waits. How many slots it handed over or freed."""
    now = rt.clock.now()
    look_stale = now - _looked_at["stale"] >= _STALE_EVERY
    with rt.db.read() as conn:
        keys = conn.execute(select(limit_waiters.c.name, limit_waiters.c.key).distinct().limit(RECLAIM_BATCH)).all()
        free = [row for name, key in keys for row in conn.execute(
            select(limit_slots.c.name, limit_slots.c.key, limit_slots.c.slot).where(
                limit_slots.c.name == name, limit_slots.c.key == key, limit_slots.c.task_id.is_(None))
            .limit(RECLAIM_BATCH)).all()]
        stale, gone = [], []
        if look_stale:
            _looked_at["stale"] = now
            open_task = exists().where(tasks.c.id == limit_slots.c.task_id, tasks.c.status.in_(OPEN))
            still_waiting = exists().where(tasks.c.id == limit_waiters.c.task_id, tasks.c.status == "limited")
            stale = conn.execute(select(limit_slots.c.name, limit_slots.c.key, limit_slots.c.slot).where(
                limit_slots.c.task_id.is_not(None), ~open_task).limit(RECLAIM_BATCH)).all()
            gone = conn.execute(select(limit_waiters.c.task_id).where(~still_waiting)
                                .limit(RECLAIM_BATCH)).scalars().all()
    if not (stale or free or gone):
        return 0
    dispatch: list = []
    with rt.db.write() as conn:
        if gone:
            conn.execute(delete(limit_waiters).where(limit_waiters.c.task_id.in_(gone), ~still_waiting))
        for name, key, slot in [*stale, *free]:
            current = conn.execute(select(limit_slots.c.task_id).where(
                limit_slots.c.name == name, limit_slots.c.key == key, limit_slots.c.slot == slot)
                .with_for_update(skip_locked=True)).first()
            if current is None:
                continue  # held by another transaction: it sees to the slot
            if current.task_id is not None and conn.execute(select(tasks.c.status).where(
                    tasks.c.id == current.task_id, tasks.c.status.in_(OPEN))).first() is not None:
                continue  # taken again meanwhile
            _hand_over(conn, name, key, slot, now, rt.worker_id, dispatch)
    for item in dispatch:
        rt.dispatcher.send(item.task_id, item.delay, item.time_limit, item.priority)
    return len(stale) + len(free)


def runs_now(rt, row: dict, spec) -> bool:
    """At a delivery of a limited step's task: True if it may run (it holds its slot, or took a
    free one); else it now waits for one (stored ``limited``), and the delivery is dropped."""
    if spec.concurrency is None or row.get("slot") is not None:  # it took one when it was made ready
        return True
    from .transitions import Change

    if rt.db.query(lambda conn: holds_slot(conn, row["id"])):
        return True
    with rt.db.write() as conn:
        if holds_slot(conn, row["id"]):
            return True
        locked = conn.execute(select(runs).where(runs.c.id == row["run_id"])).mappings().first()
        cls = rt.registry.get(locked["workflow"], locked["version"])
        change = Change(rt, conn, dict(locked), cls, rt.clock.now())
        name, key = spec.limit_name(spec.concurrency), key_of(spec.concurrency, change)
        slot = _take(conn, name, key, spec.concurrency.n, row["id"], change.now)
        if slot is not None:
            conn.execute(update(tasks).where(tasks.c.id == row["id"]).values(slot=slot))
            return True
        conn.execute(update(tasks).where(tasks.c.id == row["id"], tasks.c.status == "queued").values(
            status="limited", sent_at=None))
        conn.execute(insert_ignoring_duplicates(conn.dialect.name, limit_waiters).values(
            task_id=row["id"], run_id=row["run_id"], name=name, key=key, priority=locked["priority"] or 0,
            since=change.now, time_limit=spec.time_limit))
    return False
