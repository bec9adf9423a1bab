"""Child runs and Map in the chaos run: what the parents' data asks for, and the invariants of
composition, checked from the database alone (``bench/chaos_checks.py`` appends them).

The workflows are in bench/chaos_workflows.py: ``chaos_shipment`` (a Map of ``chaos_crate``
runs, 2 at a time, 1 damaged crate tolerated), ``chaos_dispatch`` and ``chaos_loose_dispatch``
(one ``chaos_crate`` child, a deadline that sometimes passes first; the loose one abandons its
crate). A crate's data decides whether it is damaged, so each parent's outcome follows from its
data, whatever the faults do.

6. ``no child orphaned``: every child whose parent ended, or left the child's state entry, has
   ended, unless the parent's spec says ``parent_close="abandon"``; and a child that ended on
   its own over a second after such a parent left was told (a ``parent_left`` signal).
7. ``fan-in counted once``: each ``maps`` row's counters equal its ``map_items`` by status; each
   ended item's child ended that way, and the parent recorded it once (one ``child_ended``
   entry per parent and child); every signal was applied or found stale, none left pending.
8. ``collected results match children``: a map that ended took on_done exactly when no more
   than its tolerated failures failed, and one that reached on_done holds, item by item, its
   child's final data (a failed one's ``{"status", "state"}``); a ``child()`` parent that
   recorded its child's end holds its final data under ``result`` and took the matching event.
9. ``map concurrency within its limit``: from the children's created_at and finished_at,
   never more than ``max_concurrency`` of a map's children ran at once.
"""

from collections import Counter, defaultdict

from sqlalchemy import create_engine, select, text

from engine.db import normalize_url
from engine.models import map_items, maps, runs, signals

ACTIVE = ("running", "waiting")
PARENTS = ("chaos_shipment", "chaos_dispatch", "chaos_loose_dispatch")
CRATES_PER_SHIPMENT = (4, 6)


# -- what the runs are asked to do ----------------------------------------------------------

def plan(i: int, rng, now: float) -> tuple[str, dict]:
    """A composed run's workflow and data (``now``: when it is due to start)."""
    workflow = rng.choices(PARENTS, [50, 25, 25])[0]
    if workflow == "chaos_shipment":
        count = rng.randint(*CRATES_PER_SHIPMENT)
        damaged = set(rng.sample(range(count), rng.choices([0, 1, 2], [40, 30, 30])[0]))
        return workflow, {"crates": [crate(f"S{i}-{n}", n in damaged, rng) for n in range(count)]}
    # A deadline a second or two ahead races a slow crate (which is then cancelled, or abandoned).
    early = rng.random() < 0.5
    deadline = now + (rng.uniform(0.3, 1.5) if early else 3600)
    box = crate(f"D{i}", rng.random() < 0.25, rng)
    if early:
        box["work_seconds"] = round(rng.uniform(2.5, 4.0), 2)
    return workflow, {"crate": box, "crate_deadline": round(deadline, 3), "deadline_races": early}


def crate(name: str, damaged: bool, rng) -> dict:
    return {"crate": name, "fail": damaged, "work_seconds": rng.choice([0, 0, 0.05, 0.2, 0.6, 1.5])}


def allowed_outcomes(workflow: str, data: dict) -> set | None:
    """Final states a composed run's data leads to (None: not one of these workflows). The
    caller adds the operator's cancel."""
    if workflow == "chaos_crate":
        # Cancelled by its parent (gave up, cancelled, or the map failed) is allowed too.
        return {"damaged" if data.get("fail") else "packed", "<cancelled by operator>"}  # chaos_checks.CANCEL
    if workflow == "chaos_shipment":
        return {"short" if sum(c["fail"] for c in data["crates"]) > 1 else "loaded"}
    if workflow in ("chaos_dispatch", "chaos_loose_dispatch"):
        allowed = {"undispatched" if data["crate"]["fail"] else "dispatched"}
        return allowed | {"gave_up"} if data.get("deadline_races") else allowed
    return None


# -- reading the database ------------------------------------------------------------------

def load(url: str):
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET application_name = 'interlock-chaos'"))
            run_rows = {r["id"]: dict(r) for r in conn.execute(select(
                runs.c.id, runs.c.workflow, runs.c.version, runs.c.status, runs.c.state, runs.c.data,
                runs.c.entries, runs.c.parent_id, runs.c.parent_state, runs.c.parent_seq, runs.c.created_at,
                runs.c.finished_at)).mappings()}
            map_rows = [dict(r) for r in conn.execute(select(maps)).mappings()]
            items = defaultdict(list)
            for r in conn.execute(select(map_items).order_by(map_items.c.parent_id, map_items.c.entry_seq,
                                                             map_items.c.idx)).mappings():
                items[(r["parent_id"], r["entry_seq"])].append(dict(r))
            signal_rows = [dict(r) for r in conn.execute(select(
                signals.c.id, signals.c.run_id, signals.c.kind, signals.c.source_id, signals.c.status)).mappings()]
    finally:
        engine.dispose()
    return run_rows, map_rows, items, signal_rows


# -- the checks ----------------------------------------------------------------------------

def check(url: str, registry, by_run: dict, invariant) -> list:
    """The composition invariants (``invariant``: bench.chaos_checks.Invariant); ``by_run``: each
    run's history rows, as chaos_checks loaded them."""
    run_rows, map_rows, items, signal_rows = load(url)
    orphans = invariant("no child orphaned", checked_what="children")
    fan_in = invariant("fan-in counted once", checked_what="maps and signals")
    results = invariant("collected results match children", checked_what="parents")
    limit = invariant("map concurrency within its limit", checked_what="maps")

    children = defaultdict(list)  # (parent id, parent state, parent seq) -> child rows
    for run in run_rows.values():
        if run["parent_id"] is not None:
            children[(run["parent_id"], run["parent_state"], run["parent_seq"])].append(run)

    def spec_of(parent, state):
        return registry.get(parent["workflow"], parent["version"]).child_for(state)

    told = {(s["source_id"], s["run_id"]) for s in signal_rows if s["kind"] == "parent_left"}
    _orphans(orphans, run_rows, children, spec_of, by_run, told)
    _fan_in(fan_in, run_rows, map_rows, items, signal_rows, by_run)
    _results(results, run_rows, map_rows, items, children, by_run, spec_of)
    _concurrency(limit, run_rows, map_rows, by_run, spec_of)
    return [orphans, fan_in, results, limit]


# A child may end on its own while its parent leaves (both commit at once): told or not, then.
TOLD_WITHIN = 1.0


def _left_at(entries, state, seq) -> float | None:
    """When the parent left its entry ``seq`` of ``state`` (a transition out of it, or its cancel)."""
    for h in entries:
        if h["seq"] > seq and (h["kind"] == "cancelled" or
                               (h["kind"] == "transition" and state in (h["source"] or "").split(","))):
            return h["at"]
    return None


def _orphans(inv, run_rows, children, spec_of, by_run, told):
    abandoned = still_running = 0
    for (parent_id, state, seq), kids in children.items():
        parent = run_rows[parent_id]
        left = parent["status"] not in ACTIVE or (parent["entries"] or {}).get(state) != seq
        spec = spec_of(parent, state)
        left_at = _left_at(by_run.get(parent_id, []), state, seq) if left else None
        for kid in kids:
            inv.checked += 1
            if not left:
                continue
            if spec.parent_close == "abandon":
                if kid["finished_at"] is None or kid["finished_at"] > (parent["finished_at"] or 0):
                    abandoned += 1
                still_running += kid["status"] in ACTIVE
            elif kid["status"] in ACTIVE:
                why = "ended" if parent["status"] not in ACTIVE else "left the state"
                inv.fail(f"child active after its parent {why}", kid["id"],
                         f"{kid['workflow']} {kid['status']}; parent {parent_id} {parent['status']} in {parent['state']}")
            elif left_at is not None and kid["finished_at"] > left_at + TOLD_WITHIN \
                    and (parent_id, kid["id"]) not in told:
                inv.fail("child not told its parent left", kid["id"],
                         f"ended {kid['status']} {kid['finished_at'] - left_at:.1f}s after parent {parent_id} left")
    inv.notes.append(f"{abandoned} outlived a parent that abandons them ({still_running} still active)")


def _fan_in(inv, run_rows, map_rows, items, signal_rows, by_run):
    recorded = Counter()  # (parent, child) -> child_ended history entries
    for parent_id, entries in by_run.items():
        for h in entries:
            if h["kind"] == "child_ended":
                recorded[(parent_id, (h["detail"] or {}).get("child"))] += 1
    for (parent_id, child_id), n in recorded.items():
        if n > 1:
            inv.fail("child's end recorded twice", parent_id, f"child {child_id}: {n} child_ended entries")
    for row in map_rows:
        inv.checked += 1
        key = (row["parent_id"], row["entry_seq"])
        rows = items.get(key, [])
        by_status = Counter(r["status"] for r in rows)
        stored = {k: row[k] for k in ("running", "succeeded", "failed")}
        counted = {k: by_status.get(k, 0) for k in stored}
        if stored != counted or row["total"] != len(rows):
            inv.fail("map counters disagree with its items", row["parent_id"],
                     f"map {row['name']}@{row['entry_seq']}: counters {stored}, total {row['total']}; "
                     f"items {dict(by_status)}")
        ended = [r for r in rows if r["child_id"] and r["status"] in ("succeeded", "failed", "cancelled")]
        recorded_here = sum(recorded[(row["parent_id"], r["child_id"])] for r in rows if r["child_id"])
        if recorded_here != len(ended):
            inv.fail("items ended disagree with the fan-in history", row["parent_id"],
                     f"map {row['name']}@{row['entry_seq']}: {len(ended)} items ended, "
                     f"{recorded_here} child_ended entries")
        for r in ended:
            kid = run_rows.get(r["child_id"])
            expected = "failed" if kid and kid["status"] not in ("succeeded", "cancelled") else kid and kid["status"]
            if expected != r["status"]:
                inv.fail("item status disagrees with its child's", row["parent_id"],
                         f"item {r['idx']} {r['status']}, child {r['child_id']} {kid and kid['status']}")
    applied = Counter()
    for s in signal_rows:
        inv.checked += 1
        if s["status"] not in ("applied", "stale"):
            inv.fail(f"signal left {s['status']}", s["run_id"], f"{s['kind']} {s['id']} from {s['source_id']}")
        elif s["status"] == "applied" and s["kind"] == "child_ended":
            applied[(s["run_id"], s["source_id"])] += 1
            if applied[(s["run_id"], s["source_id"])] == 2:
                inv.fail("child's end applied twice", s["run_id"], f"child {s['source_id']}")
    statuses = Counter(f"{s['kind']} {s['status']}" for s in signal_rows)
    inv.notes.append("signals: " + (", ".join(f"{n} {k}" for k, n in sorted(statuses.items())) or "none"))


def _final_data(kid) -> dict:
    if kid["status"] == "succeeded":
        return kid["data"]
    return {"status": kid["status"], "state": kid["state"]}


def _event_after(entries, kind, pick=lambda h: True):
    """The event of the transition right after the last ``kind`` entry that ``pick`` accepts."""
    by_seq = {h["seq"]: h for h in entries}
    found = [h for h in entries if h["kind"] == kind and pick(h)]
    if not found:
        return None, False
    after = by_seq.get(found[-1]["seq"] + 1)
    return (after["event"] if after and after["kind"] == "transition" else None), True


def _results(inv, run_rows, map_rows, items, children, by_run, spec_of):
    on_done = 0
    for row in map_rows:
        if row["status"] not in ("succeeded", "failed"):
            continue  # cancelled with its parent: nothing was collected
        parent = run_rows[row["parent_id"]]
        spec = spec_of(parent, row["state"])
        inv.checked += 1
        kids = children[(row["parent_id"], row["state"], row["entry_seq"])]
        failed = sum(k["status"] == "failed" for k in kids)
        took, _ = _event_after(by_run.get(row["parent_id"], []), "map_ended")
        expected = spec.on_error if spec.too_many_failures(failed, row["total"]) else spec.on_done
        if row["status"] != ("succeeded" if expected == spec.on_done else "failed") or took != expected:
            inv.fail("map decision disagrees with its children", row["parent_id"],
                     f"{failed} of {row['total']} children failed: map {row['status']}, took {took}")
        if row["status"] != "succeeded":
            continue
        on_done += 1
        collected = (parent["data"] or {}).get(spec.results)
        wanted = [_final_data(run_rows[r["child_id"]]) if r["child_id"] in run_rows else None
                  for r in items[(row["parent_id"], row["entry_seq"])]]
        if not isinstance(collected, list) or len(collected) != len(wanted):
            inv.fail("results missing or of another length", row["parent_id"],
                     f"{len(wanted)} items, results {type(collected).__name__} "
                     f"{len(collected) if isinstance(collected, list) else ''}")
            continue
        for idx, (got, want) in enumerate(zip(collected, wanted)):
            if got != want:
                inv.fail("result differs from its child's final data", row["parent_id"],
                         f"item {idx}: {got!r} vs {want!r}")
                break
    single = 0
    for (parent_id, state, seq), kids in children.items():
        parent = run_rows[parent_id]
        spec = spec_of(parent, state)
        if spec.kind != "child":
            continue
        for kid in kids:
            took, ended = _event_after(by_run.get(parent_id, []), "child_ended",
                                       lambda h, k=kid: (h["detail"] or {}).get("child") == k["id"])
            if not ended:
                continue  # the parent had left (its end was ignored)
            inv.checked += 1
            single += 1
            if (parent["data"] or {}).get(spec.result) != kid["data"]:
                inv.fail("result differs from the child's final data", parent_id, f"child {kid['id']}")
            expected = spec.on_done if kid["status"] == "succeeded" else spec.on_error
            if took != expected:
                inv.fail("parent took another event than its child's end asks", parent_id,
                         f"child {kid['status']}, took {took}, expected {expected}")
    inv.notes.append(f"{on_done} maps collected on_done, {single} child() results")


def counted_at_once(entries, row) -> int:
    """The most children of the map entry ``row`` running at once as its parent counts them:
    started and not yet ended, in the order of the parent's history. (Times would not do: a
    child's ``created_at`` is when its parent's transaction began, before some of the ends that
    transaction applied.)"""
    active = peak = 0
    for h in entries:
        if h["seq"] <= row["entry_seq"]:
            continue
        detail = h["detail"] or {}
        if h["kind"] == "map_ended" and detail.get("map") == row["name"]:
            break
        if h["kind"] == "child_started" and detail.get("map") == row["name"]:
            active += 1
        elif h["kind"] == "child_ended" and h["source"] == row["state"] and "index" in detail:
            active -= 1
        peak = max(peak, active)
    return peak


def _concurrency(inv, run_rows, map_rows, by_run, spec_of):
    peaks = Counter()
    for row in map_rows:
        spec = spec_of(run_rows[row["parent_id"]], row["state"])
        if spec.max_concurrency is None:
            continue
        inv.checked += 1
        peak = counted_at_once(by_run.get(row["parent_id"], []), row)
        peaks[peak] += 1
        if peak > spec.max_concurrency:
            inv.fail("more children at once than max_concurrency", row["parent_id"],
                     f"map {row['name']}: {peak} at once, limit {spec.max_concurrency}")
    inv.notes.append("peak children at once: " + (", ".join(f"{p} in {n} maps" for p, n in sorted(peaks.items()))
                                                  or "no map"))
