"""Schedules: start a run of a workflow on a cron expression or an interval, durably.

A tick is a row, not a sleeping thread. Every reconciler looks for schedules whose
``next_fire_at`` has come (``fire_due``), locks the schedule row (``SKIP LOCKED``: reconcilers
share the work; on SQLite the write lock), writes a ``schedule_ticks`` row per tick, starts its
run through the ordinary start path with the idempotency key ``schedule:<name>:<fire time>``,
and moves ``next_fire_at`` on, in one transaction. The tick row's primary key (schedule, fire
time) and the run's idempotency key each make a second run for a tick impossible, however many
workers race.

A tick fired within ``GRACE`` seconds of its time is on time. An older one was missed (no worker
ran): ``catchup`` decides which missed ticks still start (``none``; ``last``, unless an on-time
tick follows; ``all`` within ``catchup_window``); the others are counted in ``missed``.

``overlap`` decides what a tick does while the run the previous tick started is active:
``skip`` it, ``allow`` both, ``buffer_one`` (the tick waits, and starts when that run ends; a
further tick meanwhile is skipped), ``cancel_previous`` (cancel that run, in the same
transaction, then start). Times are ``rt.clock.now()``, the database's clock; tests pass ``now``.
"""

import logging
import math

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from . import operations as ops
from .errors import InterlockError, RunNotActive, ScheduleExists, ScheduleNotFound
from .models import runs, schedule_ticks, schedules
from .schedule_times import Schedule, check_name, fire_times, iso_utc, make
from .timeparse import iso
from .transitions import apply

log = logging.getLogger(__name__)
ACTIVE = ("running", "waiting")
BATCH = 50
GRACE = 60.0  # a tick fired later than this after its time was missed
MAX_TICKS = 1000  # missed ticks started by one pass of catch-up "all" (more: the next pass goes on)
MAX_SCAN = 100_000  # missed ticks of a cron expression looked through for catch-up "last" or "none"


def spec_of(row) -> Schedule:
    return Schedule(name=row["name"], workflow=row["workflow"], cron=row["cron"], every=row["every"],
                    timezone=row["timezone"], data=row["data"], version=row["version"],
                    overlap=row["overlap"], catchup=row["catchup"], catchup_window=row["catchup_window"])


def _next_after(spec: Schedule, after: float) -> float:
    return spec.next_times(after, 1)[0]


def _between(spec: Schedule, start: float, end: float, exclude_end=False) -> list[float]:
    """The fire times from ``start`` to ``end`` (fire times are whole seconds)."""
    out = []
    for t in fire_times(spec, start - 0.001):
        if t > end or (exclude_end and t == end):
            return out
        out.append(t)


def _lock(conn, name, skip_locked=False):
    query = select(schedules).where(schedules.c.name == name)
    if conn.dialect.name != "sqlite":  # SQLite: the transaction holds the write lock already
        query = query.with_for_update(skip_locked=skip_locked)
    row = conn.execute(query).mappings().first()
    return dict(row) if row else None


def _locked(rt, name, work, skip_locked=False, must_exist=True):
    """``work(session, conn, row)`` with the schedule row locked, in one transaction; runs it
    starts or cancels are dispatched after the commit (``apply``'s session path)."""
    check_name(name)
    with rt.session() as session, session.begin():
        conn = session.connection()
        row = _lock(conn, name, skip_locked)
        if row is None:
            if must_exist:
                raise ScheduleNotFound(name)
            return None
        return work(session, conn, row)


# -- declaring, creating, changing ------------------------------------------------------------

def sync_declared(rt, now: float | None = None) -> int:
    """Write the schedules declared in the loaded workflow modules into the table: new ones are
    created, changed ones updated from the code (paused or not, and their ticks, are kept);
    code schedules of workflows loaded here that the code no longer declares are deleted.
    Schedules created over the API are left alone unless the code declares the same name."""
    now = rt.clock.now() if now is None else now
    for last_try in (False, False, True):
        try:
            return _sync(rt, rt.registry.schedules, now)
        except IntegrityError:  # another worker starting at the same time inserted one first
            if last_try:
                raise
    return 0


def _sync(rt, declared, now) -> int:
    with rt.db.write() as conn:
        stored = {row["name"]: dict(row) for row in conn.execute(select(schedules)).mappings()}
        for name, spec in declared.items():
            row = stored.get(name)
            if row is None:
                conn.execute(insert(schedules).values(_new_row(spec, "code", now)))
                continue
            columns = spec.columns()
            if {k: row[k] for k in columns} == columns and row["origin"] == "code":
                continue
            timing = any(row[k] != columns[k] for k in ("cron", "every", "timezone"))
            values = {**columns, "origin": "code", "updated_at": now}
            if timing or row["next_fire_at"] is None:
                values["next_fire_at"] = _next_after(spec, now)
            conn.execute(update(schedules).where(schedules.c.name == name).values(values))
        loaded = set(rt.registry.names())
        gone = [name for name, row in stored.items()
                if row["origin"] == "code" and name not in declared and row["workflow"] in loaded]
        if gone:
            conn.execute(delete(schedule_ticks).where(schedule_ticks.c.schedule.in_(gone)))
            conn.execute(delete(schedules).where(schedules.c.name.in_(gone)))
    return len(declared)


def _new_row(spec: Schedule, origin: str, now: float) -> dict:
    return {**spec.columns(), "status": "active", "origin": origin, "next_fire_at": _next_after(spec, now),
            "last_fire_at": None, "last_run_id": None, "buffered_at": None, "missed": 0,
            "created_at": now, "updated_at": now}


def create(rt, now: float | None = None, **fields) -> dict:
    """Create a schedule (the fields of ``schedule_times.make``); ``InvalidData`` or
    ``WorkflowNotFound`` for wrong ones, ``ScheduleExists`` for a name taken."""
    now = rt.clock.now() if now is None else now
    spec = make(**fields)
    rt.registry.get(spec.workflow, spec.version)  # WorkflowNotFound
    try:
        with rt.db.write() as conn:
            conn.execute(insert(schedules).values(_new_row(spec, "api", now)))
    except IntegrityError:
        raise ScheduleExists(spec.name) from None
    return get(rt, spec.name)


def get(rt, name: str) -> dict:
    check_name(name)
    with rt.db.read() as conn:
        row = conn.execute(select(schedules).where(schedules.c.name == name)).mappings().first()
    if row is None:
        raise ScheduleNotFound(name)
    return dict(row)


def list_all(rt) -> list[dict]:
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(schedules).order_by(schedules.c.name)).mappings()]


def ticks(rt, name: str, limit: int = 20) -> list[dict]:
    """The schedule's latest ticks, newest first, each with its run's status."""
    with rt.db.read() as conn:
        found = conn.execute(
            select(schedule_ticks, runs.c.status.label("run_status"))
            .join(runs, runs.c.id == schedule_ticks.c.run_id, isouter=True)
            .where(schedule_ticks.c.schedule == name)
            .order_by(schedule_ticks.c.fire_time.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in found]


def pause(rt, name: str, now: float | None = None) -> dict:
    now = rt.clock.now() if now is None else now
    _locked(rt, name, lambda s, conn, row: conn.execute(update(schedules).where(schedules.c.name == name)
                                                        .values(status="paused", updated_at=now)))
    return get(rt, name)


def resume(rt, name: str, now: float | None = None) -> dict:
    """Resume from now on: the ticks that passed while it was paused do not fire."""
    now = rt.clock.now() if now is None else now

    def work(session, conn, row):
        if row["status"] == "paused":
            conn.execute(update(schedules).where(schedules.c.name == name).values(
                status="active", next_fire_at=_next_after(spec_of(row), now), updated_at=now))
    _locked(rt, name, work)
    return get(rt, name)


def remove(rt, name: str) -> None:
    """Delete the schedule and its ticks (the runs stay). A declared one returns at the next sync."""
    def work(session, conn, row):
        conn.execute(delete(schedule_ticks).where(schedule_ticks.c.schedule == name))
        conn.execute(delete(schedules).where(schedules.c.name == name))
    _locked(rt, name, work)


def trigger(rt, name: str, now: float | None = None) -> dict:
    """Fire a tick now (cause ``manual``), under the schedule's overlap policy; the tick row."""
    now = round(rt.clock.now() if now is None else now, 3)  # the run's key names the millisecond

    def work(session, conn, row):
        _Ticking(rt, session, conn, row, now).fire(now, "manual")
        return conn.execute(select(schedule_ticks).where(schedule_ticks.c.schedule == name,
                                                         schedule_ticks.c.fire_time == now)).mappings().one()
    return dict(_locked(rt, name, work))


# -- the reconciler's duty ----------------------------------------------------------------------

def fire_due(rt, now: float | None = None) -> int:
    """Fire the due ticks of schedules of workflows loaded here, and start buffered ticks whose
    previous run ended; how many schedules were due."""
    now = rt.clock.now() if now is None else now
    loaded = rt.registry.names()
    if not loaded:
        return 0
    with rt.db.read() as conn:
        due = conn.execute(select(schedules.c.name).where(
            schedules.c.status == "active", schedules.c.next_fire_at <= now,
            schedules.c.workflow.in_(loaded)).order_by(schedules.c.next_fire_at).limit(BATCH)).scalars().all()
        buffered = conn.execute(select(schedules.c.name).join(runs, runs.c.id == schedules.c.last_run_id).where(
            schedules.c.buffered_at.is_not(None), runs.c.status.not_in(ACTIVE),
            schedules.c.workflow.in_(loaded)).limit(BATCH)).scalars().all()
    for names, action in ((buffered, _Ticking.start_buffered), (due, _Ticking.fire_due)):
        for name in names:
            try:
                _locked(rt, name, lambda s, conn, row: action(_Ticking(rt, s, conn, row, now)),
                        skip_locked=True, must_exist=False)
            except Exception:
                log.exception("schedule %s could not fire; trying again next pass", name)
    return len(due)


class _Ticking:
    """One schedule's ticks in one transaction, its row locked."""

    def __init__(self, rt, session, conn, row, now):
        self.rt, self.session, self.conn, self.row, self.now = rt, session, conn, row, now
        self.spec = spec_of(row)
        self.values: dict = {}
        self._last_status = None
        # A schedule of a version this process does not load is left to one that loads it.
        self.loaded = row["version"] is None or row["version"] in rt.registry.versions(row["workflow"])

    def fire_due(self) -> None:
        row, spec, now = self.row, self.spec, self.now
        first = row["next_fire_at"]
        if row["status"] != "active" or first is None or first > now or not self.loaded:
            return  # another reconciler fired it first, or it was paused
        late = now - GRACE  # ticks before this were missed
        horizon = now - max(spec.catchup_window, GRACE)  # ticks before this are dropped by every policy
        missed, count, more = self._missed(max(first, horizon), min(late, now))
        on_time = [t for t in _between(spec, max(first, late), now)]
        chosen = {"none": [], "last": [] if on_time else missed[-1:], "all": missed}[spec.catchup]
        for t in chosen:
            self.fire(t, "catchup")
        if more is None:  # with a catch-up left for the next pass, on-time ticks wait for it
            for t in on_time:
                self.fire(t, "schedule")
        self.values["next_fire_at"] = more if more is not None else _next_after(spec, now)
        dropped = count - len(chosen) + (self._count_before(first, horizon) if first < horizon else 0)
        self.values["missed"] = row["missed"] + dropped
        self._write()

    def _missed(self, start, end):
        """The missed ticks from ``start`` to before ``end`` that the policy may start: all of them
        for ``all`` (at most MAX_TICKS: then also the first one left for the next pass), else the
        last one; and how many were looked at (at most MAX_SCAN)."""
        if self.spec.catchup != "all":
            if self.spec.every is not None:  # the last one, and the count, without listing them
                every = self.spec.every
                found = _between(self.spec, max(start, end - every), end, exclude_end=True)
                count = max(0, math.ceil(end / every) - math.ceil(start / every))  # k * every in [start, end)
                return found[-1:], count, None
            last, count = [], 0
            for t in fire_times(self.spec, start - 0.001):
                if t >= end or count >= MAX_SCAN:
                    break
                last, count = [t], count + 1
            return last, count, None
        found = []
        for t in fire_times(self.spec, start - 0.001):
            if t >= end:
                break
            if len(found) == MAX_TICKS:
                return found, len(found), t
            found.append(t)
        return found, len(found), None

    def _count_before(self, first, horizon) -> int:
        """How many ticks fell from ``first`` to before ``horizon`` (at most MAX_SCAN are counted
        for a cron expression)."""
        if self.spec.every is not None:
            return max(0, math.ceil(horizon / self.spec.every) - math.ceil(first / self.spec.every))
        count = 0
        for t in fire_times(self.spec, first - 0.001):
            if t >= horizon or count >= MAX_SCAN:
                return count
            count += 1
        return count

    def fire(self, t: float, cause: str) -> None:
        """One tick at fire time ``t``: its row, and by the overlap policy its run."""
        overlap = self.spec.overlap
        if overlap == "buffer_one" and self._current("buffered_at") is not None and self._active_run() is None:
            self.start_buffered()  # the run it waited for has ended: the earlier tick starts first
        previous = self._active_run()
        status = "started"
        if previous is not None and overlap == "skip":
            status = "skipped"
        elif previous is not None and overlap == "buffer_one":
            status = "skipped" if self._current("buffered_at") is not None else "buffered"
        elif previous is not None and overlap == "cancel_previous":
            try:
                apply(self.rt, previous, ops.Cancel(f"schedule {self.spec.name}: the next tick started"),
                      session=self.session)
            except RunNotActive:
                pass  # it ended since it was read: nothing to cancel
        tick = {"schedule": self.spec.name, "fire_time": t, "cause": cause, "status": status, "run_id": None,
                "error": None, "created_at": self.now, "started_at": None}
        if status == "started":
            self._start(tick)
        elif status == "buffered":
            self.values["buffered_at"] = t
        self.conn.execute(insert(schedule_ticks).values(tick))
        self.values["last_fire_at"] = max(t, self._current("last_fire_at") or t)
        self._write()

    def start_buffered(self) -> None:
        t = self._current("buffered_at")
        if t is None or not self.loaded or self._active_run() is not None:
            return
        tick = {"status": "started", "run_id": None, "error": None, "started_at": None}
        self._start(tick)
        self.conn.execute(update(schedule_ticks).where(schedule_ticks.c.schedule == self.spec.name,
                                                       schedule_ticks.c.fire_time == t).values(tick))
        self.values["buffered_at"] = None
        self._write()

    def _start(self, tick) -> None:
        """Start the tick's run through the one start path; its idempotency key is the tick."""
        t = tick.get("fire_time", self._current("buffered_at"))
        key = f"schedule:{self.spec.name}:{iso(t)}"
        try:
            cls = self.rt.registry.get(self.spec.workflow, self.spec.version)
            outcome = apply(self.rt, None, ops.Start(cls, dict(self.spec.data), idempotency_key=key),
                            session=self.session)
        except InterlockError as exc:  # nothing was written: the refusal is the tick's
            log.warning("schedule %s: tick %s could not start its run: %s", self.spec.name, iso_utc(t), exc)
            tick.update(status="failed", error=str(exc))
            return
        tick.update(run_id=outcome.run["id"], started_at=self.now)
        self.values["last_run_id"] = outcome.run["id"]
        self._last_status = outcome.run["status"]

    def _current(self, column):
        return self.values.get(column, self.row[column])

    def _active_run(self) -> str | None:
        run_id = self._current("last_run_id")
        if run_id is None:
            return None
        if "last_run_id" in self.values:  # started in this transaction
            return run_id if self._last_status in ACTIVE else None
        status = self.conn.execute(select(runs.c.status).where(runs.c.id == run_id)).scalar()
        return run_id if status in ACTIVE else None

    def _write(self) -> None:
        if self.values:
            self.conn.execute(update(schedules).where(schedules.c.name == self.spec.name)
                              .values(**self.values, updated_at=self.now))
