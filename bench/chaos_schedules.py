"""The chaos run's schedules (bench/chaos.py): a few interval schedules, one per overlap policy,
created through the API when the run starts and paused when its load ends, so their ticks fire
while workers, the API, the broker and the database connections are killed.

Invariants, from the database alone:

12. ``schedule ticks start one run each``: each tick row that says ``started`` names one run,
    whose idempotency key is the tick's (``schedule:<name>:<fire time>``); a tick that did not
    start (skipped, buffered, failed) names none; no run is named by two ticks; and no
    idempotency key of a tick belongs to two runs.
13. ``no schedule tick lost``: a schedule's ticks are every ``every`` seconds from its first to
    its last, none missing and none missed (the run's faults are seconds long, far below the
    grace after which a tick counts as missed).
14. ``overlap policy kept``: the runs of a ``skip``, ``buffer_one`` or ``cancel_previous``
    schedule were never active two at once (a run starts no earlier than the previous one ended,
    within ``CLOCK_SLACK``: the processes' clocks are each corrected to the database's, not
    equal); an ``allow`` schedule's runs may overlap, and did. A ``buffer_one`` schedule's runs
    started out of their ticks' order are counted in a note (seen once in a RabbitMQ run, not
    yet explained).
"""

from collections import Counter, defaultdict

from sqlalchemy import create_engine, select

from engine.db import normalize_url
from engine.models import runs, schedule_ticks, schedules
from engine.timeparse import iso

NAME = "schedule ticks start one run each"
CLOCK_SLACK = 0.25  # seconds


def _crate(name: str, work_seconds: float) -> dict:
    return {"crate": name, "fail": False, "work_seconds": work_seconds}


# The runs are chaos_crate runs (bench/chaos_workflows.py): they end packed, or cancelled by the
# next tick of a cancel_previous schedule. Slow ones make the overlap policies matter.
SCHEDULES = [
    {"name": "chaos-allow", "workflow": "chaos_crate", "every": 1, "overlap": "allow", "catchup": "all",
     "data": _crate("tick-allow", 1.5)},
    {"name": "chaos-skip", "workflow": "chaos_crate", "every": 1, "overlap": "skip", "data": _crate("tick-skip", 1.5)},
    {"name": "chaos-buffer", "workflow": "chaos_crate", "every": 1, "overlap": "buffer_one",
     "data": _crate("tick-buffer", 1.5)},
    {"name": "chaos-cancel", "workflow": "chaos_crate", "every": 2, "overlap": "cancel_previous",
     "data": _crate("tick-cancel", 3.0)},
]


def tick_key(schedule: str, fire_time: float) -> str:
    return f"schedule:{schedule}:{iso(fire_time)}"


def load(url: str):
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            specs = {r["name"]: dict(r) for r in conn.execute(select(
                schedules.c.name, schedules.c.every, schedules.c.overlap)).mappings()}
            ticks = [dict(r) for r in conn.execute(select(
                schedule_ticks.c.schedule, schedule_ticks.c.fire_time, schedule_ticks.c.cause,
                schedule_ticks.c.status, schedule_ticks.c.run_id).order_by(
                schedule_ticks.c.schedule, schedule_ticks.c.fire_time)).mappings()]
            keyed = {r["id"]: dict(r) for r in conn.execute(select(
                runs.c.id, runs.c.idempotency_key, runs.c.status, runs.c.created_at, runs.c.finished_at).where(
                runs.c.idempotency_key.like("schedule:%"))).mappings()}
    finally:
        engine.dispose()
    return specs, ticks, keyed


def check(url: str, invariant, archived: dict | None = None) -> list:
    """``archived``: run id -> the row of a run retention deleted (bench/chaos_retention.py)."""
    specs, ticks, keyed = load(url)
    for run_id, row in (archived or {}).items():
        if (row.get("idempotency_key") or "").startswith("schedule:"):
            keyed.setdefault(run_id, row)
    return [_one_run_each(invariant(NAME, checked_what="ticks"), ticks, keyed),
            _none_lost(invariant("no schedule tick lost", checked_what="schedules"), specs, ticks),
            _overlap(invariant("overlap policy kept", checked_what="schedules"), specs, ticks, keyed)]


def _one_run_each(inv, ticks, keyed):
    runs_per_key = Counter(r["idempotency_key"] for r in keyed.values())
    named = Counter(t["run_id"] for t in ticks if t["run_id"] is not None)
    for t in ticks:
        inv.checked += 1
        key = tick_key(t["schedule"], t["fire_time"])
        label = f"(tick {t['schedule']} at {iso(t['fire_time'])})"
        if runs_per_key[key] > 1:
            inv.fail("two runs for one tick", t["run_id"] or "-", label)
        if t["status"] != "started":
            if t["run_id"] is not None:
                inv.fail(f"a {t['status']} tick names a run", t["run_id"], label)
            continue
        if t["run_id"] is None or t["run_id"] not in keyed:
            inv.fail("a started tick without its run", t["run_id"] or "-", label)
        elif keyed[t["run_id"]]["idempotency_key"] != key:
            inv.fail("a tick's run has another tick's key", t["run_id"], label)
        elif named[t["run_id"]] > 1:
            inv.fail("a run named by two ticks", t["run_id"], label)
    statuses = Counter(t["status"] for t in ticks)
    if statuses:
        inv.notes.append(", ".join(f"{n} {status}" for status, n in sorted(statuses.items())))
    return inv


def _none_lost(inv, specs, ticks):
    by_schedule = defaultdict(list)
    for t in ticks:
        if t["cause"] != "manual":
            by_schedule[t["schedule"]].append(t)
    for name, rows in by_schedule.items():
        every = specs.get(name, {}).get("every")
        if not every:
            continue
        inv.checked += 1
        times = [t["fire_time"] for t in rows]
        gaps = [(a, b) for a, b in zip(times, times[1:]) if b - a != every]
        for a, b in gaps:
            inv.fail("a tick missing", "-", f"({name}: {iso(a)} then {iso(b)}, every {every:g}s)")
        missed = [t for t in rows if t["cause"] == "catchup"]
        if missed:
            inv.fail("ticks fired late enough to count as missed", "-", f"({name}: {len(missed)})")
    return inv


def _overlap(inv, specs, ticks, keyed):
    overlapped = cancelled = reordered = 0
    started = defaultdict(list)  # in fire-time order
    for t in ticks:
        if t["status"] == "started" and t["run_id"] in keyed:
            started[t["schedule"]].append(keyed[t["run_id"]])
    for name, rows in started.items():
        policy = specs.get(name, {}).get("overlap")
        if policy is None:
            continue
        inv.checked += 1
        if policy == "buffer_one":  # counted, not yet a violation: seen once, not explained
            reordered += sum(b["created_at"] < a["created_at"] for a, b in zip(rows, rows[1:]))
        in_order = sorted(rows, key=lambda r: r["created_at"])
        for before, after in zip(in_order, in_order[1:]):
            ended = before["finished_at"]
            at_once = ended is None or after["created_at"] < ended - CLOCK_SLACK
            if policy == "allow":
                overlapped += at_once
            elif at_once:
                inv.fail(f"two runs of a {policy} schedule active at once", after["id"],
                         f"({name}: started {after['created_at'] - (ended or after['created_at']):+.2f}s "
                         f"after the previous one ended)")
            cancelled += policy == "cancel_previous" and before["status"] == "cancelled"
    inv.notes.append(f"allow overlapped {overlapped} times, cancel_previous cancelled {cancelled}, "
                     f"buffer_one started {reordered} runs before an earlier tick's")
    return inv
