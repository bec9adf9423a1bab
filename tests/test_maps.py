"""Map: a child run per item, at most max_concurrency at a time; fan-in when all have ended,
or on_error as soon as the failures pass what is tolerated; retry re-runs only failed items."""

import pytest
from sqlalchemy import select

from engine.models import map_items, maps, runs
from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.child_workflows"


@pytest.fixture
def rt(settings):
    runtime = Interlock(settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def ended(rt, run_id, timeout=20):
    return wait_until(lambda: (r := rt.get(run_id)).status not in ("running", "waiting") and r,
                      timeout=timeout, message=f"run {run_id} to end")


def parcels(tmp_path, ids, lost=()):
    out = []
    for parcel_id in ids:
        flag = tmp_path / f"lost-{parcel_id}"
        if parcel_id in lost:
            flag.write_text("lost")
        out.append({"id": parcel_id, "flag": str(flag)})
    return out


def children_of(rt, parent_id):
    with rt.db.read() as conn:
        return conn.execute(select(runs.c.id, runs.c.business_key, runs.c.status, runs.c.created_at,
                                   runs.c.finished_at).where(runs.c.parent_id == parent_id)).all()


def most_at_once(rows) -> int:
    """The most children running at one moment, from their start and end times in the database."""
    moments = sorted([(r.created_at, 1) for r in rows] + [(r.finished_at, -1) for r in rows])
    running = peak = 0
    for _, step in moments:
        running += step
        peak = max(peak, running)
    return peak


def test_a_map_runs_every_item_within_its_concurrency_and_collects_results_in_order(rt, tmp_path):
    ids = ["P1", "P2", "P3", "P4", "P5"]
    with rt.worker(8):
        parent = rt.start("test_consignment", {"parcels": parcels(tmp_path, ids)})
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("succeeded", "done")
    assert [r["delivered"] for r in done.data["deliveries"]] == ids
    rows = children_of(rt, parent.id)
    assert sorted(r.business_key for r in rows) == ids and {r.status for r in rows} == {"succeeded"}
    assert most_at_once(rows) <= 2
    history = rt.history(parent.id)
    assert [e.kind for e in history].count("child_started") == 5
    [ended_entry] = [e for e in history if e.kind == "map_ended"]
    assert ended_entry.detail == {"map": "parcels", "succeeded": 5, "failed": 0, "total": 5, "status": "succeeded"}


def test_failures_within_the_tolerance_end_on_done(rt, tmp_path):
    with rt.worker(8):
        parent = rt.start("test_consignment", {"parcels": parcels(tmp_path, ["A", "B", "C"], lost={"B"})})
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("succeeded", "done")
    assert done.data["deliveries"][1] == {"status": "failed", "state": "moving"}
    assert [d.get("delivered") for d in done.data["deliveries"]] == ["A", None, "C"]


def test_failures_past_the_tolerance_take_on_error_and_cancel_the_rest(rt, tmp_path):
    ids = ["A", "B", "C", "D", "E", "F"]
    with rt.worker(8):
        parent = rt.start("test_consignment", {"parcels": parcels(tmp_path, ids, lost={"A", "B"})})
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("failed", "partly_lost")
    with rt.db.read() as conn:
        statuses = dict(conn.execute(select(map_items.c.idx, map_items.c.status)
                                     .where(map_items.c.parent_id == parent.id)).all())
        summary = conn.execute(select(maps.c.status, maps.c.failed).where(maps.c.parent_id == parent.id)).one()
    assert statuses[0] == statuses[1] == "failed"
    assert "pending" not in statuses.values() and "cancelled" in statuses.values()  # never started
    assert tuple(summary) == ("failed", 2)
    wait_until(lambda: all(r.status not in ("running", "waiting") for r in children_of(rt, parent.id)),
               message="the running children to be cancelled")


def test_retry_runs_only_the_failed_items_again(rt, tmp_path):
    items = parcels(tmp_path, ["A", "B", "C"], lost={"B"})
    items[1]["seconds"] = 0.5  # B is lost after A and C are delivered: nothing is left to cancel
    with rt.worker(8):
        parent = rt.start("test_strict_consignment", {"parcels": items})
        failed = ended(rt, parent.id)
        assert (failed.status, failed.state) == ("failed", "shipping")
        (tmp_path / "lost-B").unlink()  # the carrier found it
        rt.retry(parent.id)
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("succeeded", "done")
    assert [d["delivered"] for d in done.data["deliveries"]] == ["A", "B", "C"]
    starts = sorted(r.business_key for r in children_of(rt, parent.id))
    assert starts == ["A", "B", "B", "C"]  # B twice, the others once


def test_cancelling_the_parent_cancels_running_children_and_pending_items(rt, tmp_path):
    items = [{**p, "seconds": 30} for p in parcels(tmp_path, ["A", "B", "C", "D"])]
    parent = rt.start("test_consignment", {"parcels": items})  # no worker: the children wait
    assert len(children_of(rt, parent.id)) == 2  # max_concurrency
    rt.cancel(parent.id)
    wait_until(lambda: {r.status for r in children_of(rt, parent.id)} == {"cancelled"},
               message="the children to be cancelled")
    # The cancelled children's ends still reach their items, after the map ended.
    wait_until(lambda: _item_statuses(rt, parent.id) == ["cancelled"] * 4, message="every item to be cancelled")
    with rt.db.read() as conn:
        assert conn.execute(select(maps.c.running, maps.c.status).where(maps.c.parent_id == parent.id)).one() == (
            0, "cancelled")
    assert len(children_of(rt, parent.id)) == 2  # nothing else started


def _item_statuses(rt, parent_id) -> list:
    with rt.db.read() as conn:
        return list(conn.execute(select(map_items.c.status).where(map_items.c.parent_id == parent_id)
                                 .order_by(map_items.c.idx)).scalars())


def test_an_empty_map_is_done_at_once(rt):
    parent = rt.start("test_consignment", {"parcels": []})
    done = ended(rt, parent.id)
    assert (done.status, done.state, done.data["deliveries"]) == ("succeeded", "done", [])


def test_items_that_are_not_a_list_are_refused_and_nothing_starts(rt):
    from engine.errors import InvalidData

    with pytest.raises(InvalidData, match="needs a list of items"):
        rt.start("test_consignment", {"parcels": {"A": 1}})
    assert rt.list_runs(workflow="test_consignment").runs == []


def test_explain_tells_how_far_a_map_has_come(rt, tmp_path):
    items = [{**p, "seconds": 30} for p in parcels(tmp_path, ["A", "B", "C", "D", "E"])]
    parent = rt.start("test_consignment", {"parcels": items})  # no worker: two children wait
    explained = rt_explain(rt, parent.id)
    [fanout] = explained["maps"]
    assert (fanout["total"], fanout["running"], fanout["pending"], fanout["failed"]) == (5, 2, 3, 0)
    assert "5 of 5 children of map parcels (0 failed, 1 tolerated; 2 running)" in explained["waiting_for"]


def rt_explain(rt, run_id):
    from engine.explain import explain
    return explain(rt, run_id)


@pytest.mark.parametrize("backend", ["sqlite-memory"])
def test_the_run_page_shows_the_maps_progress(rt, tmp_path):
    from api import create_app

    items = [{**p, "seconds": 30} for p in parcels(tmp_path, ["A", "B", "C"])]
    parent = rt.start("test_consignment", {"parcels": items})
    app = create_app({"SECRET_KEY": "test-secret"}, interlock=rt)
    page = app.test_client().get(f"/runs/{parent.id}")
    assert page.status_code == 200
    assert '<ul id="maps">' in page.text and "0 done, 0 failed, 2 running of 3" in page.text
    assert '<progress max="3" value="0"' in page.text


@pytest.mark.parametrize("backend", ["sqlite-memory", "postgres-redis"])
def test_a_maps_items_are_read_page_by_page_over_the_api(rt, tmp_path):
    from api import create_app

    ids = [f"P{i}" for i in range(7)]
    with rt.worker(8):
        parent = rt.start("test_consignment", {"parcels": parcels(tmp_path, ids, lost={"P3"})})
        ended(rt, parent.id)
    api = create_app({"SECRET_KEY": "test-secret"}, interlock=rt).test_client()
    seen, after = [], None
    while True:
        page = api.get(f"/api/runs/{parent.id}/maps/parcels/items",
                       query_string={"limit": 3, **({"after": after} if after is not None else {})})
        assert page.status_code == 200, page.text
        body = page.get_json()
        seen += body["items"]
        after = body["next"]
        if after is None:
            break
    assert [item["index"] for item in seen] == list(range(7))
    assert (body["total"], body["succeeded"], body["failed"], body["status"]) == (7, 6, 1, "succeeded")
    assert [item["result"].get("delivered") for item in seen] == [i if i != "P3" else None for i in ids]
    assert seen[3]["status"] == "failed" and all(item["child_id"] for item in seen)
    missing = api.get(f"/api/runs/{parent.id}/maps/nope/items")
    assert missing.status_code == 404 and missing.get_json()["type"].endswith("map-not-found")
