"""The chaos run's concurrency limit (bench/chaos.py): some order runs become ``chaos_call``
runs (bench/chaos_workflows.py), whose one step calls a carrier that takes two calls at once per
account (``Limit(2, key=account)``, three accounts), takes 0.05-1 s and is refused now and then
(a retry keeps its slot). Each attempt notes its start and end in the ``chaos_limit_probe``
table, committed at once, while workers are killed, connections dropped and brokers restarted.

Invariants, from the database alone:

19. ``a concurrency limit is never exceeded``: per account, the attempts that noted both their
    start and their end never overlap more than two at once (an attempt whose worker was killed
    noted no end: its slot stays its task's, and its re-run is the next interval).
20. ``limit slots come back``: no slot row holds a task that has ended (or is gone) and no
    waiter is left whose task waits no more (the reconciler frees the slots of tasks that ended without giving theirs back,
    superseded or cancelled, within its few seconds' look: the script waits for it, ``settle``,
    up to SETTLE seconds before it stops the workers).
"""

import os
import random
import time

from sqlalchemy import create_engine, inspect, text

from engine.db import normalize_url

WORKFLOW = "chaos_call"
LIMIT, ACCOUNTS = 2, 3
SHARE = 3  # every 3rd order run becomes a call: enough at once, per account, to fill its two slots
SETTLE = 20.0  # seconds the slots may take to come back after the last run ended (the workers still up)

_engines: dict = {}


def plan(kind: str, data: dict, chaos: dict, i: int) -> tuple[str, dict]:
    """Every SHARE-th order run becomes a call; its data from its own generator, so that the
    other runs' plans stay the same."""
    if kind != "orders" or i % SHARE != 1:
        return kind, data
    chaos.pop("decision", None)
    rng = random.Random(7919 * i + 5)
    return WORKFLOW, {"account": f"A{i // SHARE % ACCOUNTS}", "work_seconds": rng.choice([0.2, 0.5, 1.0, 2.0]),
                      "call_failures": rng.choice([0, 0, 0, 1])}


def set_up(url: str) -> None:
    engine = create_engine(normalize_url(url))
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE chaos_limit_probe (task_id varchar(32), attempt integer, account varchar(16), "
                          "pid integer, started_at double precision, ended_at double precision)"))
    engine.dispose()


def probe(run, event: str) -> None:
    """In the step: note the attempt's start or end (its own transaction, committed at once)."""
    url = normalize_url(os.environ["INTERLOCK_DATABASE_URL"])
    engine = _engines.get(url) or _engines.setdefault(url, create_engine(url, pool_pre_ping=True))
    params = {"t": run.task_id, "a": run.attempt, "p": os.getpid(), "at": time.time(), "k": run.data["account"]}
    with engine.begin() as conn:
        if event == "start":
            conn.execute(text("INSERT INTO chaos_limit_probe (task_id, attempt, account, pid, started_at) "
                              "VALUES (:t, :a, :k, :p, :at)"), params)
        else:
            conn.execute(text("UPDATE chaos_limit_probe SET ended_at = :at "
                              "WHERE task_id = :t AND attempt = :a AND pid = :p AND ended_at IS NULL"), params)


# Slots and waiters whose task no longer holds or waits for them: a slot of an open task (a run
# still active, stuck or not) is the run's, and the final-states invariant's business.
LEFT_BEHIND = ("SELECT s.name, s.key, s.task_id FROM limit_slots s LEFT JOIN tasks t ON t.id = s.task_id "
               "WHERE s.task_id IS NOT NULL AND (t.id IS NULL OR t.status NOT IN ('queued', 'limited', 'running'))")
WAITING_FOR_NOTHING = ("SELECT w.name, w.key, w.task_id FROM limit_waiters w LEFT JOIN tasks t ON t.id = w.task_id "
                       "WHERE t.id IS NULL OR t.status <> 'limited'")


def settle(url: str, timeout: float = SETTLE) -> None:
    """Before the workers stop: wait until the reconciler has freed the slots of tasks that
    ended without giving theirs back (a cancelled or superseded call), which it looks for every
    few seconds, so that the check sees what it left behind."""
    engine = create_engine(normalize_url(url))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                if not (conn.execute(text(LEFT_BEHIND)).first() or conn.execute(text(WAITING_FOR_NOTHING)).first()):
                    return
            time.sleep(0.5)
    finally:
        engine.dispose()


def most_at_once(spans) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    now = top = 0
    for _, step in events:
        now += step
        top = max(top, now)
    return top


def check(url: str, invariant) -> list:
    held = invariant("a concurrency limit is never exceeded", checked_what="attempts")
    back = invariant("limit slots come back", checked_what="limit keys")
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            probed = inspect(conn).has_table("chaos_limit_probe")  # none: a database of no chaos run
            rows = conn.execute(text("SELECT account, started_at, ended_at FROM chaos_limit_probe")).all() \
                if probed else []
        by_account: dict = {}
        unended = 0
        for account, started, ended in rows:
            if ended is None:
                unended += 1
                continue
            held.checked += 1
            by_account.setdefault(account, []).append((started, ended))
        peaks = {}
        for account, spans in sorted(by_account.items()):
            peaks[account] = top = most_at_once(spans)
            if top > LIMIT:
                held.fail("more attempts at once than the limit", "-", f"account {account}: {top} of {LIMIT}")
        held.notes.append(f"peak at once per account: {', '.join(f'{a} {p}' for a, p in peaks.items()) or 'none'} "
                          f"(limit {LIMIT}); {unended} attempt(s) noted no end (killed mid-step)")
        with engine.connect() as conn:
            holding = conn.execute(text(LEFT_BEHIND)).all()
            waiting = conn.execute(text(WAITING_FOR_NOTHING)).all()
            back.checked = len(conn.execute(text("SELECT DISTINCT name, key FROM limit_slots")).all())
        for name, key, task_id in holding:
            back.fail("a slot still held by an ended task", "-", f"{name} {key}: task {task_id}")
        for name, key, task_id in waiting:
            back.fail("a waiter left whose task waits no more", "-", f"{name} {key}: task {task_id}")
    finally:
        engine.dispose()
    return [held, back]
