"""A parent applies a batch of its children's ends in one transaction (engine/maps.py ``Fanin``):
the same children's ends, applied one per transaction, must leave the parent, its map and its
items as the batch does. Children are ended by hand, their signals left pending, then applied
by the parent in batches of one or of all."""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from engine.children import ApplySignals
from engine.models import map_items, maps, runs, signals
from engine.operations import Retry, SendEvent
from engine.runtime import Interlock
from engine.transitions import apply
from tests.fanin_workflows import PARENTS

ACTIVE = ("running", "waiting")


def _hold(_outcome):
    """After a commit, deliver nothing: the signals stay pending for the test to apply."""


def _receivers(rt) -> list[str]:
    with rt.db.read() as conn:
        return list(dict.fromkeys(conn.execute(select(signals.c.run_id).where(
            signals.c.status == "pending").order_by(signals.c.created_at, signals.c.id)).scalars()))


def _settle(rt, parent_id, batch):
    """Apply every pending signal: the parent's ``batch`` at a time, its children's (a cancel)
    at once, until none is left."""
    while receivers := _receivers(rt):
        for run_id in receivers:
            apply(rt, run_id, ApplySignals(limit=batch if run_id == parent_id else 200), after_commit=_hold)


def _running_children(rt, parent_id) -> list:
    with rt.db.read() as conn:
        return conn.execute(select(runs.c.id, runs.c.business_key).where(
            runs.c.parent_id == parent_id, runs.c.status.in_(ACTIVE)).order_by(runs.c.business_key)).all()


def drive(rt, workflow, verdicts, seed, batch) -> dict:
    """Run a map of ``len(verdicts)`` items to its end: in rounds, end some of the running
    children (approve where ``verdicts[i]``, else reject) in an order ``seed`` decides, then let
    the parent apply their ends ``batch`` at a time; retry the parent once if it failed."""
    rng = random.Random(seed)
    parent = apply(rt, None, _start(rt, workflow, verdicts), after_commit=_hold).run["id"]
    _settle(rt, parent, batch)  # an empty map tells itself it is done
    retried = False
    for _ in range(4 * len(verdicts) + 4):
        children = _running_children(rt, parent)
        if not children:
            now = rt.get(parent)
            if (now.status, now.state) == ("failed", "judging") and not retried:  # the map failed the run
                apply(rt, parent, Retry(), after_commit=_hold)
                retried = True
                continue
            break
        rng.shuffle(children)
        for child_id, key in children[:rng.randint(1, len(children))]:
            event = "approve" if verdicts[int(key)] or retried else "reject"
            apply(rt, child_id, SendEvent(event, {}), after_commit=_hold)
        _settle(rt, parent, batch)
    return snapshot(rt, parent)


def _start(rt, workflow, verdicts):
    from engine.operations import Start

    return Start(rt.registry.get(workflow), {"items": [{"i": i} for i in range(len(verdicts))]})


def snapshot(rt, parent_id) -> dict:
    """What a user sees of the parent and its map. Cancelled items are compared by status only:
    one signal at a time, an item may start just before the map fails and be cancelled running;
    in a batch it is cancelled before it starts."""
    run = rt.get(parent_id)
    with rt.db.read() as conn:
        summary = conn.execute(select(maps.c.total, maps.c.running, maps.c.succeeded, maps.c.failed,
                                      maps.c.status).where(maps.c.parent_id == parent_id)
                               .order_by(maps.c.entry_seq)).all()
        items = conn.execute(select(map_items.c.idx, map_items.c.status, map_items.c.result).where(
            map_items.c.parent_id == parent_id).order_by(map_items.c.idx)).all()
        open_children = conn.execute(select(runs.c.id).where(
            runs.c.parent_id == parent_id, runs.c.status.in_(ACTIVE))).all()
    entries = rt.history(parent_id)
    kinds = [e.kind for e in entries]
    return {"status": run.status, "state": run.state, "data": run.data,
            "maps": [tuple(row) for row in summary],
            "items": [(i.idx, i.status, None if i.status == "cancelled" else i.result) for i in items],
            "open children": len(open_children),
            "ends counted": sum(e.kind == "child_ended" and e.detail["status"] != "cancelled" for e in entries),
            "map ended": kinds.count("map_ended")}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fanin_rt(request, tmp_path_factory):
    from engine.config import Settings
    from engine.db import Database

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fanin') / 'interlock.db'}"
    else:
        url = request.getfixturevalue("pg_database_url")
    database = Database(url)
    database.upgrade()
    database.dispose()
    runtime = Interlock(Settings(database_url=url, broker_url="memory://", queue="fanin_batches",
                                 workflows="tests.fanin_workflows"))
    yield runtime
    runtime.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(workflow=st.sampled_from(PARENTS), verdicts=st.lists(st.booleans(), min_size=0, max_size=9),
       seed=st.integers(0, 2**16))
def test_a_batch_of_ends_leaves_the_parent_as_one_end_per_transaction_does(fanin_rt, workflow, verdicts, seed):
    one_by_one = drive(fanin_rt, workflow, verdicts, seed, batch=1)
    batched = drive(fanin_rt, workflow, verdicts, seed, batch=200)
    assert batched == one_by_one
    assert batched["open children"] == 0 and batched["status"] not in ACTIVE
