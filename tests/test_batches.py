"""Bulk actions: every run a filter selects cancelled, retried, sent an event, paused or resumed,
each once, in chunks through the transition function, refusals reported without stopping."""

import pytest
from sqlalchemy import func, select

from engine import batch_work, batches
from engine.errors import InvalidData, InvalidSearch
from engine.models import batch_chunks, batch_items, history
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.batch_workflows"


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    runtime = Interlock(settings.replace(workflows=WORKFLOWS, batch_chunk=7))
    yield runtime
    runtime.close()


def parcels(rt, n, customer="ACME", start=0):
    return [rt.start("batch_parcel", {"customer": customer, "weight": float(i)}).id for i in range(start, start + n)]


def drain(rt) -> None:
    """Work chunks as a reconciler pass would, until no batch has work left."""
    for _ in range(10_000):
        if batch_work.work(rt) == 0 and batch_work.work(rt) == 0:
            return
    raise AssertionError("the batches never finished")


def kinds_count(rt, run_id, kind) -> int:
    with rt.db.read() as conn:
        return conn.execute(select(func.count()).select_from(history).where(
            history.c.run_id == run_id, history.c.kind == kind)).scalar_one()


def items_by_outcome(rt, batch_id) -> dict:
    with rt.db.read() as conn:
        return dict(conn.execute(select(batch_items.c.outcome, func.count()).where(
            batch_items.c.batch_id == batch_id).group_by(batch_items.c.outcome)).all())


def assert_counts_match_items(rt, batch):
    found = items_by_outcome(rt, batch["id"])
    assert (batch["done"], batch["refused"], batch["skipped"]) == (
        found.get("applied", 0), found.get("refused", 0), found.get("skipped", 0))


def test_a_bulk_cancel_cancels_every_run_the_filter_selects_and_no_other(rt):
    mine, other = parcels(rt, 30), parcels(rt, 5, customer="Globex")
    counter = rt.start("test_counter").id
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel", "search": {"customer": "ACME"}},
                           reason="recall")
    assert (batch["status"], batch["total_estimate"]) == ("pending", 30)
    late = parcels(rt, 2)  # started after the batch: not its
    drain(rt)
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"], batch["refused"], batch["skipped"]) == ("done", 30, 0, 0)
    assert_counts_match_items(rt, batch)
    assert {rt.get(r).status for r in mine} == {"cancelled"}
    assert {rt.get(r).status for r in other + late + [counter]} == {"waiting"}
    assert [e.detail for e in rt.history(mine[0]) if e.kind == "cancelled"] == [{"reason": "recall"}]


def test_refusals_are_reported_and_the_batch_goes_on(rt):
    ids = parcels(rt, 20)
    held = ids[::3]
    for run_id in held:
        rt.send(run_id, "hold")
    rt.send(ids[1], "deliver")  # ended: skipped
    batch = batches.create(rt, "send", {"workflow": "batch_parcel"}, event="release", data={"by": "ops"})
    drain(rt)
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"], batch["refused"], batch["skipped"]) == ("done", len(held), 12, 1)
    assert_counts_match_items(rt, batch)
    assert {rt.get(r).state for r in held} == {"waiting"}
    refused = batches.items(rt, batch["id"], outcome="refused", limit=5)
    assert len(refused["items"]) == 5 and refused["next"] is not None
    assert "release" in refused["items"][0]["error"]
    rest = batches.items(rt, batch["id"], outcome="refused", after=refused["next"], limit=100)
    assert len(rest["items"]) == 7 and rest["next"] is None


def test_a_dry_run_counts_and_changes_nothing(rt):
    ids = parcels(rt, 12)
    out = batches.create(rt, "cancel", {"workflow": "batch_parcel", "search": {"weight": [["gte", 4]]}},
                         dry_run=True)
    assert out["total_estimate"] == 8 and set(out["sample"]) <= set(ids) and len(out["sample"]) == 8
    assert batches.list_batches(rt)["batches"] == []
    assert {rt.get(r).status for r in ids} == {"waiting"}


def test_a_bad_filter_creates_nothing(rt):
    for bad in ({}, {"colour": "red"}, {"status": "sleeping"}, {"version": 0}, {"run_ids": ["nope"]}):
        with pytest.raises(InvalidData):
            batches.create(rt, "cancel", bad)
    with pytest.raises(InvalidSearch):
        batches.create(rt, "cancel", {"search": {"nope": "x"}})
    with pytest.raises(InvalidData):
        batches.create(rt, "send", {"workflow": "batch_parcel"})  # no event
    with pytest.raises(InvalidData):
        batches.create(rt, "explode", {"workflow": "batch_parcel"})
    assert batches.list_batches(rt)["batches"] == []


def test_a_chunk_worked_again_acts_on_no_run_twice(rt):
    """The same chunk worked twice (its cursor never moved, as after a crash before it did):
    an event sent by the batch counts each run once."""
    ids = [rt.start("test_counter").id for _ in range(5)]
    batch = batches.create(rt, "send", {"workflow": "test_counter"}, event="add")
    row = batch_work.claim(rt, "worker-a")
    for _ in range(2):
        batch_work.act_on(rt, row, ids)
    assert [rt.get(r).data.get("count") for r in ids] == [1] * 5
    assert batch_work.finish(rt, row, "worker-a") is True
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"]) == ("done", 5)


def test_a_bulk_cancel_interrupted_mid_batch_resumes_and_cancels_each_run_once(rt, monkeypatch):
    """A chunk dies after some of its runs changed (before its cursor moved); the duty takes the
    batch again, and every run has exactly one `cancelled` entry, the counters equal the items."""
    ids = parcels(rt, 40)
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel", "status": "waiting"})
    real_one, calls = batch_work.one, []

    def dying(rt_, batch_, run_id):
        calls.append(run_id)
        if len(calls) == 11:
            raise RuntimeError("the worker died")
        return real_one(rt_, batch_, run_id)

    real_chunk = batch_work._chunk
    monkeypatch.setattr(batch_work, "_chunk", lambda *a: (_ for _ in ()).throw(InvalidData("go one by one")))
    monkeypatch.setattr(batch_work, "one", dying)
    assert batch_work.work(rt) == 7  # the first chunk
    assert batch_work.work(rt) == 0  # the second dies after four runs: logged, tried again
    mid = batches.get(rt, batch["id"])
    assert mid["done"] == 7 and mid["cursor"] == sorted(ids, reverse=True)[6]
    assert sum(rt.get(r).status == "cancelled" for r in ids) == 10
    monkeypatch.setattr(batch_work, "_chunk", real_chunk)
    monkeypatch.setattr(batch_work, "one", real_one)
    drain(rt)
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"], batch["skipped"]) == ("done", 40, 0)
    assert_counts_match_items(rt, batch)
    assert [kinds_count(rt, r, "cancelled") for r in ids] == [1] * 40


def test_a_chunk_whose_lease_expired_is_taken_over_and_a_late_owner_counts_nothing(rt):
    ids = parcels(rt, 10)
    batch = batches.create(rt, "pause", {"run_ids": ids}, reason="audit")
    first = batch_work.claim(rt, "worker-a")
    other = batch_work.claim(rt, "worker-b")  # a live lease: the next chunk, not worker-a's
    assert (first["chunk"]["hi"], other["chunk"]["hi"]) == (max(ids), sorted(ids, reverse=True)[7])
    with rt.db.write() as conn:
        conn.execute(batch_chunks.update().values(lease_until=0.0))
    second = batch_work.claim(rt, "worker-b")
    assert second is not None and second["chunk"] == first["chunk"]
    batch_work.act_on(rt, first, sorted(ids, reverse=True)[:7])  # the old owner's chunk still lands, once per run
    assert batch_work.finish(rt, first, "worker-a") is False
    drain_owner(rt, "worker-b")
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"]) == ("done", 10)
    assert_counts_match_items(rt, batch)
    assert [kinds_count(rt, r, "paused") for r in ids] == [1] * 10


def drain_owner(rt, owner):
    while (row := batch_work.claim(rt, owner)) is not None:
        batch_work.work_chunk(rt, row, owner)


def test_resume_and_retry_skip_runs_they_do_not_apply_to(rt):
    ids = parcels(rt, 6)
    for run_id in ids[:4]:
        rt.pause(run_id)
    batch = batches.create(rt, "resume", {"workflow": "batch_parcel"})
    drain(rt)
    batch = batches.get(rt, batch["id"])
    assert (batch["done"], batch["skipped"]) == (4, 2)
    assert {rt.get(r).paused_at for r in ids} == {None}
    retry = batches.create(rt, "retry", {"workflow": "batch_parcel"})
    drain(rt)
    assert batches.get(rt, retry["id"])["skipped"] == 6


def test_a_stopped_batch_takes_no_further_chunk(rt):
    ids = parcels(rt, 20)
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel"})
    assert batch_work.work(rt) == 7
    assert batches.cancel(rt, batch["id"])["status"] == "cancelled"
    drain(rt)
    assert sum(rt.get(r).status == "cancelled" for r in ids) == 7
    assert batches.get(rt, batch["id"])["done"] == 7


def test_the_reconciler_works_batches(rt):
    ids = parcels(rt, 15)
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel"})
    reconciler = Reconciler(rt)
    wait_until(lambda: (reconciler.tick(), batches.get(rt, batch["id"])["status"] == "done")[1],
               message="the batch to finish")
    assert {rt.get(r).status for r in ids} == {"cancelled"}


# -- the REST API -----------------------------------------------------------------------------

def test_the_api_creates_a_batch_reports_progress_and_pages_refusals(rt):
    from api import create_app

    client = create_app(interlock=rt).test_client()
    ids = parcels(rt, 9)
    rt.send(ids[0], "hold")
    dry = client.post("/api/batches", json={"action": "send", "event": "hold", "dry_run": True,
                                            "filter": {"workflow": "batch_parcel", "search": {"weight": ["gte", 3]}}})
    assert dry.status_code == 200 and dry.json["total_estimate"] == 6
    assert client.get("/api/batches").json == {"batches": [], "next": None}
    made = client.post("/api/batches", json={"action": "send", "event": "hold", "filter": {"workflow": "batch_parcel"}})
    assert made.status_code == 202 and made.json["status"] == "pending" and made.json["total_estimate"] == 9
    drain(rt)
    got = client.get(f"/api/batches/{made.json['id']}").json
    assert (got["status"], got["done"], got["refused"], got["handled"]) == ("done", 8, 1, 9)
    refused = client.get(f"/api/batches/{made.json['id']}/items", query_string={"outcome": "refused"}).json
    assert [i["run_id"] for i in refused["items"]] == [ids[0]]
    assert [b["id"] for b in client.get("/api/batches").json["batches"]] == [made.json["id"]]
    stopped = client.post(f"/api/batches/{made.json['id']}/cancel", json={})
    assert stopped.status_code == 200 and stopped.json["status"] == "done"  # it had finished
    assert client.get("/api/batches/" + "0" * 32).status_code == 404


@pytest.mark.parametrize("body,status,kind", [
    ({"action": "cancel", "filter": {}}, 422, "invalid-data"),
    ({"action": "cancel", "filter": {"colour": "red"}}, 422, "validation-error"),
    ({"action": "nuke", "filter": {"workflow": "batch_parcel"}}, 422, "validation-error"),
    ({"action": "send", "filter": {"workflow": "batch_parcel"}}, 422, "invalid-data"),
    ({"action": "cancel", "filter": {"search": {"nope": "x"}}}, 400, "invalid-search"),
    ({"action": "cancel", "filter": {"search": {"weight": ["between", 1]}}}, 400, "invalid-search"),
])
def test_the_api_refuses_a_bad_batch_and_creates_nothing(rt, body, status, kind):
    from api import create_app

    client = create_app(interlock=rt).test_client()
    response = client.post("/api/batches", json=body)
    assert response.status_code == status, response.json
    assert response.json["type"] == f"urn:interlock:problem:{kind}"
    assert batches.list_batches(rt)["batches"] == []


# -- the CLI --------------------------------------------------------------------------------------

def test_the_cli_acts_on_runs_in_bulk_and_still_lists_them(rt):
    from click.testing import CliRunner

    from engine.cli import cli

    ids = parcels(rt, 6) + parcels(rt, 2, customer="Globex")
    rt.send(ids[0], "hold")
    runner = CliRunner()
    settings = rt.settings
    env = {"INTERLOCK_DATABASE_URL": settings.database_url, "INTERLOCK_WORKFLOWS": WORKFLOWS,
           "INTERLOCK_BROKER_URL": settings.broker_url, "INTERLOCK_QUEUE": settings.queue,
           "INTERLOCK_BATCH_CHUNK": "3"}
    listed = runner.invoke(cli, ["runs", "--workflow", "batch_parcel", "--search", "customer=Globex"], env=env)
    assert listed.exit_code == 0 and len(listed.output.splitlines()) == 2
    dry = runner.invoke(cli, ["runs", "cancel", "--workflow", "batch_parcel", "--state", "waiting",
                              "--search", "customer=ACME", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[0] == "would cancel 5 run(s)"
    assert rt.get(ids[1]).status == "waiting"
    done = runner.invoke(cli, ["runs", "cancel", "--workflow", "batch_parcel", "--state", "waiting",
                               "--search", "customer=ACME", "--reason", "recall", "--wait"], env=env)
    assert done.exit_code == 0, done.output
    assert "done: 5 done, 0 refused, 0 skipped of ~5" in done.output
    assert [rt.get(r).status for r in ids] == ["waiting"] + ["cancelled"] * 5 + ["waiting"] * 2
    sent = runner.invoke(cli, ["runs", "send", "release", "--workflow", "batch_parcel", "--status", "waiting",
                               "--wait", "--json"], env=env)
    assert sent.exit_code == 0, sent.output
    import json
    out = json.loads(sent.output)
    assert (out["done"], out["refused"]) == (1, 2)
    shown = runner.invoke(cli, ["batches", "show", out["id"], "--refusals"], env=env)
    assert shown.exit_code == 0 and shown.output.count("release") == 2
    assert len(runner.invoke(cli, ["batches"], env=env).output.splitlines()) == 2
    bad = runner.invoke(cli, ["runs", "cancel", "--search", "nope=1"], env=env)
    assert bad.exit_code != 0


# -- a real worker killed mid-batch (PostgreSQL) ------------------------------------------------------

def assert_each_cancelled_once(rt, batch_id, ids):
    """The batch is done, every run of ``ids`` has exactly one `cancelled` entry, counters = items."""
    done = batches.get(rt, batch_id)
    assert (done["status"], done["done"], done["refused"], done["skipped"]) == ("done", len(ids), 0, 0)
    assert_counts_match_items(rt, done)
    with rt.db.read() as conn:
        cancelled = dict(conn.execute(select(history.c.run_id, func.count()).where(
            history.c.kind == "cancelled").group_by(history.c.run_id)).all())
    assert cancelled == {run_id: 1 for run_id in ids}


def test_a_bulk_cancel_interrupted_by_killing_its_worker_resumes_and_cancels_each_run_once(pg_settings, tmp_path):
    """A worker process is SIGKILLed while it works a bulk cancel; another takes the batch over
    once the lease has expired, and every run ends with exactly one `cancelled` entry."""
    from tests.processes import Process, env_for

    settings = pg_settings.replace(workflows=WORKFLOWS, lease_seconds=2.0)
    rt = Interlock(settings)
    try:
        ids = parcels(rt, 1500)
        batch = batches.create(rt, "cancel", {"workflow": "batch_parcel", "status": "waiting"})
        env = env_for(settings, INTERLOCK_BATCH_CHUNK="20")
        first = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "first.log")
        try:
            wait_until(lambda: batches.get(rt, batch["id"])["done"] >= 100, timeout=60,
                       message="the first worker to be part-way through")
            first.kill()
        finally:
            first.stop()
        mid = batches.get(rt, batch["id"])
        assert mid["status"] == "running" and mid["done"] < 1500, mid
        second = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "second.log")
        try:
            wait_until(lambda: batches.get(rt, batch["id"])["status"] == "done", timeout=120,
                       message="the second worker to finish the batch")
        finally:
            second.stop()
        assert_each_cancelled_once(rt, batch["id"], ids)
    finally:
        rt.close()


def test_two_worker_processes_share_a_batch_and_the_chunk_of_one_killed_is_taken_over(pg_settings, tmp_path):
    """Two worker processes work one bulk cancel at once (each holds a chunk of it); one is
    SIGKILLed, the other takes its chunk once the lease has expired and finishes the batch:
    every run has exactly one `cancelled` entry and the counters equal the items."""
    from engine.models import workers
    from tests.processes import Process, env_for

    settings = pg_settings.replace(workflows=WORKFLOWS, lease_seconds=2.0)
    rt = Interlock(settings)

    def owners(status):
        with rt.db.read() as conn:
            return set(conn.execute(select(batch_chunks.c.owner).where(
                batch_chunks.c.status == status, batch_chunks.c.owner.is_not(None))).scalars())

    try:
        ids = parcels(rt, 1500)
        batch = batches.create(rt, "cancel", {"workflow": "batch_parcel", "status": "waiting"})
        env = env_for(settings, INTERLOCK_BATCH_CHUNK="20")
        first = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "first.log")
        second = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "second.log")
        try:
            wait_until(lambda: len(owners("done")) == 2 and len(owners("pending")) == 2, timeout=60,
                       message="both workers to have done a chunk and to hold one at once")
            first.kill()
            with rt.db.read() as conn:
                killed = conn.execute(select(workers.c.id).where(workers.c.pid == first.proc.pid)).scalar_one()
                left = conn.execute(select(batch_chunks.c.hi).where(
                    batch_chunks.c.owner == killed, batch_chunks.c.status == "pending")).scalars().all()
            assert batches.get(rt, batch["id"])["done"] < 1500
            wait_until(lambda: batches.get(rt, batch["id"])["status"] == "done", timeout=120,
                       message="the other worker to finish the batch")
        finally:
            first.stop()
            second.stop()
        assert_each_cancelled_once(rt, batch["id"], ids)
        with rt.db.read() as conn:
            owners = dict(conn.execute(select(batch_chunks.c.hi, batch_chunks.c.owner)).all())
        assert killed in owners.values() and len(set(owners.values())) == 2
        # A chunk the killed worker held (it is killed mid-chunk unless between two) was finished by the other.
        assert all(owners[hi] != killed for hi in left)
    finally:
        rt.close()


# -- the runs page -------------------------------------------------------------------------------------

def test_the_runs_page_selects_runs_and_acts_on_them_in_bulk(tmp_path):
    import requests

    from tests.test_web import csrf_of, serve

    with serve(tmp_path, workflows=WORKFLOWS) as site, requests.Session() as http:
        rt = site.rt
        ids = parcels(rt, 4) + parcels(rt, 3, customer="Globex")
        page = http.get(f"{site.url}/", params={"workflow": "batch_parcel"}).text
        assert page.count('name="run_id"') == 7 and 'id="bulk"' in page
        token = csrf_of(page)
        # The selected rows: a confirmation first (nothing changes), then the batch and its page.
        form = {"csrf_token": token, "action": "pause", "scope": "selected", "run_id": ids[:2], "reason": "audit"}
        confirm = http.post(f"{site.url}/batches", data=form)
        assert confirm.status_code == 200 and "Pause 2 run(s)?" in confirm.text
        assert batches.list_batches(rt)["batches"] == []
        made = http.post(f"{site.url}/batches", data={**form, "confirm": "yes"}, allow_redirects=False)
        assert made.status_code == 303 and "/batches/" in made.headers["Location"]
        drain(rt)
        shown = http.get(site.url + made.headers["Location"]).text
        assert 'data-status="done"' in shown and "<strong>2</strong> done" in shown
        assert [rt.get(r).paused_at is not None for r in ids] == [True, True] + [False] * 5
        # Every run the filters match (search field terms in the box), with refusals listed.
        everything = {"csrf_token": token, "action": "send", "event": "release", "scope": "all",
                      "workflow": "batch_parcel", "q": "customer:Globex", "confirm": "yes"}
        made = http.post(f"{site.url}/batches", data=everything, allow_redirects=False)
        assert made.status_code == 303
        drain(rt)
        shown = http.get(site.url + made.headers["Location"]).text
        assert "<strong>3</strong> refused" in shown and shown.count("release") >= 3
        # Nothing selected: refused with a message, nothing created.
        before = len(batches.list_batches(rt)["batches"])
        none = http.post(f"{site.url}/batches", data={"csrf_token": token, "action": "cancel", "confirm": "yes"})
        assert "select at least one run" in none.text
        assert len(batches.list_batches(rt)["batches"]) == before
        forged = http.post(f"{site.url}/batches", data={**form, "csrf_token": "forged", "confirm": "yes"})
        assert forged.status_code == 403


# -- several workers on one batch ------------------------------------------------------------------

def work_until_done(rt, owner, batch_id, start):
    """What one worker's reconciler does, chunk after chunk, until the batch is done."""
    start.wait()
    worked = 0
    while batches.get(rt, batch_id)["status"] != "done":
        lease = batch_work.claim(rt, owner)
        if lease is not None:
            batch_work.work_chunk(rt, lease, owner)
            worked += 1
    return worked


def test_two_workers_working_one_batch_at_once_cancel_each_run_exactly_once(rt, monkeypatch):
    import threading
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(batch_work, "PLAN_PAGE", 3)  # several planning steps, raced for too
    ids = parcels(rt, 120)
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel"}, reason="recall")
    start = threading.Barrier(2)
    with ThreadPoolExecutor(2) as pool:
        worked = list(pool.map(lambda owner: work_until_done(rt, owner, batch["id"], start), ["worker-a", "worker-b"]))
    assert sum(worked) == 18  # 120 runs in chunks of 7: each chunk worked once
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"], batch["refused"], batch["skipped"]) == ("done", 120, 0, 0)
    assert batch["cursor"] == min(ids)
    assert_counts_match_items(rt, batch)
    assert [kinds_count(rt, r, "cancelled") for r in ids] == [1] * 120
    with rt.db.read() as conn:
        chunks = conn.execute(select(batch_chunks.c.lo, batch_chunks.c.hi, batch_chunks.c.runs, batch_chunks.c.status)
                              .order_by(batch_chunks.c.hi.desc())).all()
    ordered = sorted(ids, reverse=True)
    assert [tuple(c) for c in chunks] == [(ordered[min(i + 6, 119)], ordered[i], min(7, 120 - i), "done")
                                          for i in range(0, 120, 7)]


def test_a_worker_that_dies_mid_chunk_has_its_chunk_taken_over_and_each_run_changed_once(rt):
    """worker-a changes part of its chunk and dies before finishing it; worker-b takes the chunk
    once its lease has expired and the batch ends with every run paused once."""
    ids = parcels(rt, 20)
    batch = batches.create(rt, "pause", {"workflow": "batch_parcel"})
    lease = batch_work.claim(rt, "worker-a")
    mine = sorted(ids, reverse=True)[:7]
    assert (lease["chunk"]["hi"], lease["chunk"]["lo"]) == (mine[0], mine[-1])
    for run_id in mine[:3]:
        batch_work.one(rt, lease, run_id)  # then it dies
    drain_owner(rt, "worker-b")  # the lease is alive: worker-b works the other chunks
    assert batches.get(rt, batch["id"])["status"] == "running"
    assert sum(rt.get(r).paused_at is not None for r in ids) == 16
    with rt.db.write() as conn:
        conn.execute(batch_chunks.update().values(lease_until=0.0))
    drain_owner(rt, "worker-b")
    batch = batches.get(rt, batch["id"])
    assert (batch["status"], batch["done"], batch["skipped"]) == ("done", 20, 0)
    assert_counts_match_items(rt, batch)
    assert [kinds_count(rt, r, "paused") for r in ids] == [1] * 20


def test_a_process_that_cannot_read_the_filter_leaves_the_batch_to_one_that_can(rt):
    """A reconciler that does not load the workflow declaring the filter's search field neither
    works nor loops on the batch; one that does finishes it."""
    ids = parcels(rt, 10)
    batch = batches.create(rt, "cancel", {"workflow": "batch_parcel", "search": {"customer": "ACME"}})
    assert batch_work.claim(rt, "worker-a") is not None  # planned here; its lease then runs out
    with rt.db.write() as conn:
        conn.execute(batch_chunks.update().values(lease_until=0.0))
    other = Interlock(rt.settings.replace(workflows=TEST_WORKFLOWS))
    try:
        assert batch_work.work_for(other, 5.0) == 0
    finally:
        other.close()
    assert batches.get(rt, batch["id"])["done"] == 0
    drain(rt)
    assert batches.get(rt, batch["id"])["status"] == "done"
    assert {rt.get(r).status for r in ids} == {"cancelled"}


def test_a_reconciler_leaves_bulk_actions_no_more_than_their_share_of_its_time(rt, monkeypatch):
    """After a pass that worked chunks for t seconds, none is worked for t * (1 / share - 1)."""
    from engine import reconciler as reconciling

    monkeypatch.setattr(reconciling, "BATCH_SECONDS", 0.0)  # a chunk a pass
    shared = Interlock(rt.settings.replace(workflows=WORKFLOWS, batch_chunk=7, batch_share=0.01))
    try:
        parcels(shared, 40)
        batch = batches.create(shared, "cancel", {"workflow": "batch_parcel"})
        paced = Reconciler(shared)
        assert paced.work_batches() > 0
        assert paced.work_batches() == 0 and paced.work_batches() == 0  # its share spent: the rest waits
        assert batches.get(shared, batch["id"])["done"] < 40
        while Reconciler(shared).work_batches():  # a reconciler that has not worked any yet may
            pass
        assert batches.get(shared, batch["id"])["status"] == "done"
    finally:
        shared.close()
