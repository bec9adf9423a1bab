"""The schedule invariant, checked from the database alone: no tick started two runs.

    from bench.chaos_schedules import check
    (invariant,) = check(url, Invariant)   # Invariant: bench.chaos_checks.Invariant

Each tick row that says ``started`` names one run, whose idempotency key is the tick's
(``schedule:<name>:<fire time>``); a tick that did not start (skipped, buffered, failed) names
none; no run is named by two ticks; and no idempotency key of a tick belongs to two runs (the
runs' unique key is per workflow, so a schedule whose workflow changed could otherwise start
one per workflow). Not part of ``bench/chaos.py``'s run yet: its plan declares no schedule, and
every invariant there must check something.
"""

from collections import Counter

from sqlalchemy import create_engine, select

from engine.db import normalize_url
from engine.models import runs, schedule_ticks
from engine.timeparse import iso

NAME = "schedule ticks start one run each"


def tick_key(schedule: str, fire_time: float) -> str:
    return f"schedule:{schedule}:{iso(fire_time)}"


def check(url: str, invariant) -> list:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            ticks = [dict(r) for r in conn.execute(select(
                schedule_ticks.c.schedule, schedule_ticks.c.fire_time, schedule_ticks.c.status,
                schedule_ticks.c.run_id)).mappings()]
            keyed = [dict(r) for r in conn.execute(select(runs.c.id, runs.c.idempotency_key).where(
                runs.c.idempotency_key.like("schedule:%"))).mappings()]
    finally:
        engine.dispose()
    inv = invariant(NAME, checked_what="ticks")
    key_of = {r["id"]: r["idempotency_key"] for r in keyed}
    runs_per_key = Counter(r["idempotency_key"] for r in keyed)
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
        if t["run_id"] is None or t["run_id"] not in key_of:
            inv.fail("a started tick without its run", t["run_id"] or "-", label)
        elif key_of[t["run_id"]] != key:
            inv.fail("a tick's run has another tick's key", t["run_id"], label)
        elif named[t["run_id"]] > 1:
            inv.fail("a run named by two ticks", t["run_id"], label)
    return [inv]
