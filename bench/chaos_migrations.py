"""The chaos run's migration (bench/chaos.py): runs of ``chaos_voyage`` (bench/chaos_workflows.py)
start on version 1 and wait, loaded, at sea (a timer armed), berthed or held for inspection,
until every migration is done; part way through the load, while the faults go on, the script
plans moving them to version 2 through the API (``at_sea`` mapped to ``sailing``) and applies
the plan, twice at once (both answers must name one batch). Its worker may be killed mid-chunk,
its connections dropped, the API killed before it answered: a create retried then makes a
second plan (never applied), an apply retried a second batch of the same plan (which must find
its runs moved). Then the runs are released (``arrive``, ``release``) and finish: on version 2
(``moored``) if they moved, on version 1 (``arrived``) if not.

Invariants, from the database alone:

17. ``migration moves each run once``: every migrate batch ended ``done`` (or ``cancelled``: it
    lost a race to be its plan's batch) with counters equal to its items, and every applied
    plan's own batch ``done``; every run the plan judged clean or mapped whose history had not
    gone on since (its entry after the plan's ``last_seq`` is the ``migrated`` one) has exactly
    one ``migrated`` entry for that plan, right after that seq, with the plan's versions, its
    verdict and its mapping applied to the states, and is on the new version; one that had
    gone on has none (and no ``applied`` item); a run judged impossible, or in no plan, has
    none, and is still on version 1; applied items match the ``migrated`` entries one to one.
18. ``migrated runs follow the new version``: a moved run's history is contiguous, names only
    the old version's states before its ``migrated`` entry and only the new version's after it,
    and it finished (if it did) in a final state of the new version; no task or timer of it is
    open in a state the new version lacks, none was created after the move for such a state,
    and one bound to the entry it was in when moved was renamed unless it had ended before;
    its ``overdue`` timer is re-armed with the new delay from the same entry (two hours), and a
    berthed run has the ``demurrage`` timer the new version adds, from its entry.
"""

import random
import threading
from collections import Counter, defaultdict

from sqlalchemy import create_engine, select

from engine.client import ApiError, ClientError
from engine.db import normalize_url
from engine.models import batch_items, batches, migration_plans, migration_runs, runs

WORKFLOW = "chaos_voyage"
AT = 0.55  # of the load's length: when the plan is made
PLAN = {"from": 1, "to": 2, "map": {"at_sea": "sailing"}}
# (state, event the script sends), in either version
RELEASES = {"at_sea": "arrive", "sailing": "arrive", "berthed": "arrive", "held": "release"}
WATCHED = [(WORKFLOW, state, "waiting") for state in RELEASES]
DELAYS = {"overdue": 7200.0, "demurrage": 3600.0}  # version 2's, re-armed or armed from the entry
SLACK = 1.0  # seconds


def plan(kind: str, data: dict, chaos: dict, i: int) -> tuple[str, dict]:
    """Half of the cargo runs (by index, after their data was drawn: the other plans stay the
    same) become voyages; the route and the loading's faults from the run's own generator."""
    if kind != "cargo" or i % 2:
        return kind, data
    rng = random.Random(104729 * i + 3)
    for key in ("plan", "lost_after"):
        chaos.pop(key, None)
    return WORKFLOW, {"voyage": f"V{i}", "route": rng.choices(["sail", "berth", "detain"], [50, 25, 25])[0],
                      "work_seconds": rng.choice([0, 0, 0.2, 1.0, 2.5]), "load_failures": rng.choice([0, 0, 0, 1])}


def version(workflow: str) -> int | None:
    return 1 if workflow == WORKFLOW else None


def external_action(run: dict):
    if run["workflow"] == WORKFLOW and run["state"] in RELEASES:
        return ("event", RELEASES[run["state"]])
    return None


def hold(run: dict, migrated: bool) -> bool:
    """A voyage waits until every migration is done: the plan catches it mid-flight."""
    return run["workflow"] == WORKFLOW and not migrated


# -- the driver's part (a thread of bench/chaos.py's Scenario) --------------------------------

def _until(sc, what, request):
    """``request(client)``'s answer, asked again while the API is down (None: stopped)."""
    while not sc.stop.is_set():
        try:
            answer = request(sc.client())
            sc.stats[what] += 1
            return answer
        except ApiError as exc:
            if not exc.retryable:
                sc.stats[f"{what} refused ({exc.status})"] += 1
                sc.say(f"{what} refused: {exc}")
                return None
            sc.stats["api errors (retried)"] += 1
        except ClientError:
            sc.stats["api unreachable (retried)"] += 1
        sc.stop.wait(0.2)
    return None


def when(cfg, broker: str) -> tuple[float, str | None]:
    """When to plan (seconds after the first start): just before the first fault due after
    ``AT`` of the load, so that the fault meets the plan, its apply or its batch at work."""
    at = AT * cfg.load_seconds
    later = [(t, kind) for t, kind in cfg.faults if t >= at]
    if not later:
        return at, None
    t, kind = later[0]
    return max(at - 1.0, t - random.Random(f"{cfg.seed}-{broker}-migration").uniform(0.0, 0.6)), kind


def drive(sc, done: threading.Event) -> None:
    """Plan, look at a dry run, apply twice at once, wait for the batch; then ``done``."""
    at, fault = when(sc.cfg, sc.broker)
    while sc.t() < at:
        if sc.stop.wait(0.05):
            return
    sc.say("planning the migration" + (f" (a {fault} is due {max(0.0, _due(sc, at) - sc.t()):.1f}s from now)"
                                          if fault else ""))
    made = _until(sc, "migration planned",
                  lambda c: c.request("POST", f"/api/workflows/{WORKFLOW}/migrations", json=PLAN))
    if made is None:
        done.set()
        return
    sc.say(f"migration plan {made['id']}: " + ", ".join(f"{n} {k}" for k, n in made["counts"].items()))
    path = f"/api/migrations/{made['id']}/apply"
    dry = _until(sc, "migration dry run", lambda c: c.request("POST", path, json={"dry_run": True}))
    if dry is not None:
        sc.say("migration dry run: " + ", ".join(f"{n} {k}" for k, n in dry["counts"].items()))
    answers = [None, None]

    def apply(slot):
        answers[slot] = _until(sc, "migration applied", lambda c: c.request("POST", path, json={}))

    twins = [threading.Thread(target=apply, args=(slot,), daemon=True) for slot in (0, 1)]
    for th in twins:
        th.start()
    for th in twins:
        th.join()
    ids = {a["id"] for a in answers if a is not None}
    if len(ids) > 1:
        sc.stats["migration applied twice: two batches answered"] += 1
    while ids and not sc.stop.wait(0.5):
        try:
            batch = sc.client().request("GET", f"/api/migrations/{made['id']}")["batch"]
        except ClientError:
            continue
        if batch and batch["status"] in ("done", "cancelled"):
            sc.say(f"migration batch {batch['id']} {batch['status']}: {batch['done']} moved, "
                   f"{batch['refused']} refused, {batch['skipped']} skipped")
            break
    done.set()


def _due(sc, at: float) -> float:
    return next((t for t, _ in sc.cfg.faults if t >= AT * sc.cfg.load_seconds), at)


# -- the checks -----------------------------------------------------------------------------

def _leaves(text) -> list:
    return [s for s in (text or "").split(",") if s]


def load(url: str) -> dict:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            plans = {r["id"]: dict(r) for r in conn.execute(select(migration_plans)).mappings()}
            planned = [dict(r) for r in conn.execute(select(migration_runs)).mappings()]
            batch_rows = [dict(r) for r in conn.execute(select(batches).where(batches.c.action == "migrate"))
                          .mappings()]
            ids = [b["id"] for b in batch_rows]
            items = [dict(r) for r in conn.execute(select(batch_items).where(batch_items.c.batch_id.in_(ids)))
                     .mappings()] if ids else []
            run_rows = {r["id"]: dict(r) for r in conn.execute(select(
                runs.c.id, runs.c.workflow, runs.c.version, runs.c.status, runs.c.state).where(
                runs.c.workflow == WORKFLOW)).mappings()}
    finally:
        engine.dispose()
    return {"plans": plans, "planned": planned, "batches": batch_rows, "items": items, "runs": run_rows}


def check(url: str, registry, by_run: dict, task_rows: dict, timer_rows: dict, invariant) -> list:
    found = load(url)
    once = invariant("migration moves each run once", checked_what="runs in plans")
    follows = invariant("migrated runs follow the new version", checked_what="migrated runs")
    plans, run_rows = found["plans"], found["runs"]
    by_batch = defaultdict(list)
    for item in found["items"]:
        by_batch[item["batch_id"]].append(item)
    batches_of = defaultdict(list)
    for batch in found["batches"]:
        plan_id = (batch["args"] or {}).get("plan")
        batches_of[plan_id].append(batch)
        label = f"(batch {batch['id']} of plan {plan_id})"
        own = plans.get(plan_id, {}).get("batch_id") == batch["id"]
        if batch["status"] != "done" and (own or batch["status"] != "cancelled"):
            once.fail(f"a migrate batch left {batch['status']}", "-", label)
        counted = Counter(i["outcome"] for i in by_batch[batch["id"]])
        if batch["status"] == "done" and (batch["done"], batch["refused"], batch["skipped"]) != (
                counted["applied"], counted["refused"], counted["skipped"]):
            once.fail("batch counters differ from its items", "-", label)
    applied_items = Counter((b["args"]["plan"], i["run_id"]) for b in found["batches"]
                            for i in by_batch[b["id"]] if i["outcome"] == "applied")
    moves = defaultdict(list)  # run id -> its migrated entries
    for rid, entries in by_run.items():
        moves[rid] = [h for h in entries if h["kind"] == "migrated"]
    judged = {(p["plan_id"], p["run_id"]): p for p in found["planned"]}
    for row in found["planned"]:
        plan = plans[row["plan_id"]]
        if plan["batch_id"] is None:
            continue
        once.checked += 1
        rid = row["run_id"]
        entries = {h["seq"]: h for h in by_run.get(rid, [])}
        mine = [h for h in moves[rid] if (h["detail"] or {}).get("plan") == plan["id"]]
        after = entries.get(row["last_seq"] + 1)
        moved_on = after is not None and not (after["kind"] == "migrated" and
                                              (after["detail"] or {}).get("plan") == plan["id"])
        if row["outcome"] == "impossible" or moved_on:
            if mine:
                once.fail("a run moved that " + ("the plan judged impossible" if row["outcome"] == "impossible"
                                                 else "had moved on since the plan"), rid)
        elif after is None and (run_rows.get(rid) or {}).get("status") in ("running", "waiting", "failed"):
            once.fail("a movable run left where the plan saw it", rid, f"at seq {row['last_seq']}")
        if len(mine) > 1:
            once.fail("a run moved twice by one plan", rid, f"{len(mine)} migrated entries")
        if applied_items[(plan["id"], rid)] != len(mine):
            once.fail("applied items differ from the migrated entries", rid,
                      f"{applied_items[(plan['id'], rid)]} applied, {len(mine)} migrated")
    moved_runs = 0
    for rid, run in run_rows.items():
        entries = moves.get(rid, [])
        if len(entries) > 1:
            once.fail("a run migrated more than once", rid, f"{len(entries)} migrated entries")
        if not entries:
            if run["version"] != 1:
                once.fail("a run on a version it never moved to", rid, f"v{run['version']}")
            _follows(follows, registry, rid, run, by_run.get(rid, []), None, task_rows, timer_rows)
            continue
        moved_runs += 1
        entry = entries[0]
        detail = entry["detail"] or {}
        plan = plans.get(detail.get("plan"))
        row = judged.get((detail.get("plan"), rid))
        if plan is None or row is None or row["outcome"] == "impossible":
            once.fail("a run moved by no plan that judged it movable", rid, f"plan {detail.get('plan')}")
            continue
        if entry["seq"] != row["last_seq"] + 1:
            once.fail("a run moved after its history went on", rid, f"seq {entry['seq']}, planned {row['last_seq']}")
        mapping = plan["mapping"] or {}
        if (detail.get("from_version"), detail.get("to_version"), detail.get("outcome")) != (
                plan["from_version"], plan["to_version"], row["outcome"]) or (detail.get("mapping") or {}) != mapping:
            once.fail("a migrated entry that is not its plan's", rid, str(detail)[:120])
        if _leaves(entry["target"]) != [mapping.get(s, s) for s in _leaves(entry["source"])]:
            once.fail("a migrated entry whose states are not the mapping's", rid,
                      f"{entry['source']} -> {entry['target']}")
        if run["version"] != plan["to_version"]:
            once.fail("a moved run not on the new version", rid, f"v{run['version']}")
        _follows(follows, registry, rid, run, by_run.get(rid, []), entry, task_rows, timer_rows)
    plans_made = [p for p in plans.values() if p["workflow"] == WORKFLOW]
    counts = Counter()
    for p in plans_made:
        counts.update(p["counts"] or {})
    once.notes.append(f"{len(plans_made)} plan(s), {sum(p['batch_id'] is not None for p in plans_made)} applied, "
                      f"{len(found['batches'])} batch(es); judged " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    items = Counter(i["outcome"] for i in found["items"])
    once.notes.append(", ".join(f"{n} {k}" for k, n in sorted(items.items())) or "no items")
    follows.checked = moved_runs
    return [once, follows]


def _follows(inv, registry, rid, run, entries, moved, task_rows, timer_rows) -> None:
    """Invariant 18 for one run (``moved``: its migrated entry, None if it never moved)."""
    old = registry.get(WORKFLOW, 1)
    new = registry.get(WORKFLOW, run["version"]) if moved is not None else old
    for h in entries:
        if h["kind"] not in ("started", "transition") or (moved is not None and h["seq"] == moved["seq"]):
            continue
        cls = new if moved is not None and h["seq"] > moved["seq"] else old
        for state in _leaves(h["source"]) + _leaves(h["target"]):
            if state not in cls.states_map:
                inv.fail(f"a state of no version the run was on at seq {h['seq']}", rid,
                         f"{state} (v{cls.version})")
    if moved is None:
        return
    seqs = [h["seq"] for h in entries]
    if seqs != list(range(1, len(seqs) + 1)):
        inv.fail("a migrated run's history not contiguous", rid)
    if run["status"] not in ("running", "waiting") and not all(
            s in new.states_map and new.states_map[s].final for s in _leaves(run["state"])) \
            and run["status"] != "cancelled":
        inv.fail("a migrated run finished outside the new version's final states", rid, run["state"])
    at, entered = moved["at"], {}
    for h in entries:  # the entry of each state the run was in when moved
        if h["seq"] >= moved["seq"]:
            break
        if h["kind"] in ("started", "transition"):
            entered = {s: h["seq"] for s in _leaves(h["target"])}
    times = {h["seq"]: h["at"] for h in entries}
    armed = Counter()
    rows = [(r, False) for r in task_rows.values() if r["run_id"] == rid] + \
        [(r, True) for r in timer_rows.values() if r["run_id"] == rid]
    for row, is_timer in rows:
        what = f"{'timer' if is_timer else 'task'} {row['name']} in {row['state']}@{row['entry_seq']}"
        open_now = row["status"] in (("armed", "suspended") if is_timer else ("queued", "running"))
        if row["state"] not in new.states_map:
            handled = (row["fired_at"] or 0) if is_timer else row["updated_at"]
            if open_now:
                inv.fail("an open task or timer in a state the new version lacks", rid, what)
            elif row["entry_seq"] > moved["seq"]:
                inv.fail("a task or timer made after the move for a state the new version lacks", rid, what)
            elif entered.get(row["state"]) == row["entry_seq"] and handled > at + SLACK:
                inv.fail("a task or timer of the moved entry handled under its old state", rid, what)
        if is_timer and row["name"] in DELAYS and row["state"] in new.states_map:
            entry_at = times.get(row["entry_seq"])
            if entry_at is not None and abs(row["due_at"] - entry_at - DELAYS[row["name"]]) > SLACK:
                inv.fail("a timer not armed as the new version declares", rid,
                         f"{what}: due {row['due_at'] - entry_at:.1f}s after its entry")
            armed[(row["state"], row["entry_seq"])] += 1
    for state, seq in entered.items():
        target = (PLAN["map"].get(state, state), seq)
        if target[0] in ("sailing", "berthed") and armed[target] != 1:
            inv.fail("a moved run without its new version's timer", rid, f"{armed[target]} in {target[0]}@{seq}")
