"""The chaos run's bulk action (bench/chaos.py): one run of ``orders`` in four is a large order
(it waits in ``review``) whose customer's address starts ``bulk-`` (its search field), and a
batch cancels every such run, created through the API while the faults go on (its worker may be
killed mid-chunk, its database connections dropped, the API killed before it answered: a create
retried then makes a second batch, which must find those runs done). The script holds the
review decision of these runs until every batch is done; the ones no batch took (started after
it) then get theirs.

Invariant 16, ``bulk cancel acts on each run once``, from the database alone:

- every batch of the run ends ``done``, with counters equal to its items;
- every matching run created before a batch has that batch's item, and no other run has one;
- a run with an ``applied`` item was cancelled exactly once, by a batch (its reason), and
  applied by one batch only; no run was cancelled for that reason without such an item.
"""

from collections import Counter, defaultdict

from sqlalchemy import create_engine, select

from engine.db import normalize_url
from engine.models import batch_items, batches, history, runs

PREFIX = "bulk-"
REASON = "chaos bulk cancel"
AT = 0.4  # of the load's length: when the batch is created
BATCH = {"action": "cancel", "reason": REASON,
         "filter": {"workflow": "orders", "search": {"customer": ["prefix", PREFIX]}}}


def plan(chaos: dict, kind: str, data: dict, i: int) -> None:
    """Mark one ``orders`` run in four for the batch (by its index: the other plans stay the same):
    a large order with a good card, so that it waits for its review."""
    if kind == "orders" and i % 4 == 3:
        data.update(customer=f"{PREFIX}{i}@chaos.example", card="4242", gateway_timeouts=0,
                    items=[{"sku": "SKU-BULK", "qty": 2, "price": 700.0}])
        chaos["bulk_cancel"], chaos["decision"] = True, "approve"


def hold_decision(chaos: dict, batches_done: bool) -> bool:
    return bool(chaos.get("bulk_cancel")) and not batches_done


def check(url: str, invariant) -> list:
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            batch_rows = [dict(r) for r in conn.execute(select(batches).where(batches.c.action == "cancel")).mappings()]
            ids = {b["id"] for b in batch_rows}
            items = [dict(r) for r in conn.execute(select(batch_items)).mappings() if r["batch_id"] in ids]
            orders = {r["id"]: dict(r) for r in conn.execute(select(
                runs.c.id, runs.c.data, runs.c.created_at, runs.c.status).where(
                runs.c.workflow == "orders")).mappings()}
            cancels = Counter(r["run_id"] for r in conn.execute(select(history.c.run_id, history.c.detail).where(
                history.c.kind == "cancelled")).mappings() if (r["detail"] or {}).get("reason") == REASON)
    finally:
        engine.dispose()
    inv = invariant("bulk cancel acts on each run once", checked_what="runs in batches")
    by_batch = defaultdict(dict)
    for item in items:
        by_batch[item["batch_id"]][item["run_id"]] = item
    matching = {rid: r for rid, r in orders.items() if str((r["data"] or {}).get("customer", "")).startswith(PREFIX)}
    for batch in batch_rows:
        mine = by_batch[batch["id"]]
        label = f"(batch {batch['id']})"
        if batch["status"] != "done":
            inv.fail(f"a batch left {batch['status']}", "-", label)
        counted = Counter(i["outcome"] for i in mine.values())
        if (batch["done"], batch["refused"], batch["skipped"]) != (
                counted["applied"], counted["refused"], counted["skipped"]):
            inv.fail("batch counters differ from its items", "-", label)
        for rid, run in matching.items():
            if run["created_at"] < batch["created_at"] and rid not in mine:
                inv.fail("a matching run the batch left out", rid, label)
        for rid in mine:
            inv.checked += 1
            if rid not in matching:
                inv.fail("an item for a run the filter does not select", rid, label)
    applied = Counter(i["run_id"] for i in items if i["outcome"] == "applied")
    for rid in set(applied) | set(cancels):
        if applied[rid] != 1 or cancels[rid] != 1:
            inv.fail("a run not cancelled exactly once by a batch", rid,
                     f"({applied[rid]} applied items, {cancels[rid]} cancels)")
        elif orders.get(rid, {}).get("status") != "cancelled":
            inv.fail("an applied cancel whose run is not cancelled", rid)
    outcomes = Counter(i["outcome"] for i in items)
    inv.notes.append(f"{len(batch_rows)} batches; " + (", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
                                                        or "no items"))
    return [inv]
