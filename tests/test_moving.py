"""Moving runs between versions of a workflow: the plan's verdicts, applying it through the
transition function once per run, refusals, moving back, and the runs finishing on the new version."""

import json

import pytest
from sqlalchemy import func, select

from engine import batch_work, batches, migration_plans
from engine.errors import InvalidData, MigrationRefused, PlanNotFound, WorkflowNotFound
from engine.models import history, tasks, timers
from engine.models import runs as runs_table
from engine.operations import Migrate
from engine.runtime import Interlock
from engine.transitions import apply
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.migrate_workflows"
DAY = 86400.0


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    runtime = Interlock(settings.replace(workflows=WORKFLOWS, batch_chunk=3))
    yield runtime
    runtime.close()


def drain(rt) -> None:
    for _ in range(1000):
        if batch_work.work(rt) == 0 and batch_work.work(rt) == 0:
            return
    raise AssertionError("the migration batch never finished")


def shipment(rt, *events, data=None, version=1) -> str:
    run_id = rt.start("mig_shipment", data or {}, version=version).id
    for event in events:
        rt.send(run_id, event)
    return run_id


def kinds(rt, run_id) -> list[str]:
    return [h.kind for h in rt.history(run_id)]


def rows(rt, table, run_id, *statuses) -> list[dict]:
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(select(table).where(
            table.c.run_id == run_id, table.c.status.in_(statuses))).mappings()]


def verdict_of(plan, run_id, rt) -> dict:
    page = migration_plans.plan_runs(rt, plan["id"])
    return next(r for r in page["runs"] if r["run_id"] == run_id)


def entered_at(rt, run_id, seq) -> float:
    with rt.db.read() as conn:
        return conn.execute(select(history.c.at).where(history.c.run_id == run_id, history.c.seq == seq)).scalar_one()


def waiting_runs(rt) -> dict:
    """A v1 run waiting on each kind of thing, no worker running (so steps stay queued)."""
    return {
        "event": shipment(rt),  # booked: waits for `depart` from outside
        "step_and_timer": shipment(rt, "depart"),  # in_transit: track queued, lost_after armed
        "activity": shipment(rt, "depart", "arrive"),  # at_port: the mig_unload activity queued
    }


def test_a_plan_judges_each_run_clean_mapped_or_impossible_with_the_reason(rt):
    runs = waiting_runs(rt)
    ended = shipment(rt)
    rt.cancel(ended)
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    assert plan["status"] == "ready"
    assert plan["counts"] == {"clean": 1, "mapped": 1, "impossible": 1}  # the cancelled run is not judged
    assert set(plan["samples"]["clean"]) == {runs["event"]}
    event, step, activity = (verdict_of(plan, runs[k], rt) for k in ("event", "step_and_timer", "activity"))
    assert event["outcome"] == "clean" and event["configuration"] == ["booked"]
    assert any("arms timer nudge on booked" in c for c in event["changes"])
    assert step["outcome"] == "mapped" and step["configuration"] == ["sailing"]
    assert step["renamed"] == {"in_transit": "sailing"}
    assert any(c.startswith("keeps step track in sailing, retries 0 -> 5") for c in step["changes"])
    assert any("re-arms timer lost_after" in c and "30d00h" in c and "45d00h" in c for c in step["changes"])
    assert activity["outcome"] == "impossible"
    assert "activity mig_unload is outstanding" in activity["reason"] and "at_port" in activity["reason"]

    unmapped = migration_plans.create(rt, "mig_shipment", 1, 2)
    assert unmapped["counts"] == {"clean": 1, "mapped": 0, "impossible": 2}
    reason = verdict_of(unmapped, runs["step_and_timer"], rt)["reason"]
    assert reason.startswith("state in_transit is not in mig_shipment v2") and "--map in_transit=NEW" in reason


def test_applying_a_plan_moves_each_movable_run_once_and_leaves_the_others_alone(rt):
    runs = waiting_runs(rt)
    before = {k: rt.get(r) for k, r in runs.items()}
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    batch = migration_plans.apply(rt, plan["id"])
    assert batch["action"] == "migrate" and batch["total_estimate"] == 2
    assert migration_plans.apply(rt, plan["id"])["id"] == batch["id"]  # applying again: the same batch
    drain(rt)
    drain(rt)  # a chunk worked again changes nothing
    done = batches.get(rt, batch["id"])
    assert (done["status"], done["done"], done["refused"], done["skipped"]) == ("done", 2, 0, 0)

    moved = rt.get(runs["step_and_timer"])
    assert (moved.version, moved.state, moved.status) == (2, "sailing", "running")
    assert kinds(rt, moved.id) == ["started", "transition", "migrated"]
    entry = rt.history(moved.id)[-1]
    assert (entry.source, entry.target, entry.cause) == ("in_transit", "sailing", "migration")
    assert entry.detail["from_version"] == 1 and entry.detail["to_version"] == 2
    assert entry.detail["mapping"] == {"in_transit": "sailing"} and entry.detail["plan"] == plan["id"]
    [task] = rows(rt, tasks, moved.id, "queued", "running")
    assert (task["state"], task["name"], task["max_attempts"]) == ("sailing", "track", 6)
    [timer] = rows(rt, timers, moved.id, "armed")
    entered = entered_at(rt, moved.id, 2)
    assert (timer["state"], timer["name"]) == ("sailing", "lost_after")
    assert timer["due_at"] == pytest.approx(entered + 45 * DAY)

    clean = rt.get(runs["event"])
    assert (clean.version, clean.state, clean.status) == (2, "booked", "waiting")
    [nudge] = rows(rt, timers, clean.id, "armed")
    assert nudge["name"] == "nudge" and nudge["due_at"] == pytest.approx(entered_at(rt, clean.id, 1) + 2 * DAY)

    stuck = rt.get(runs["activity"])
    assert (stuck.version, stuck.state, stuck.last_seq) == (1, "at_port", before["activity"].last_seq)
    assert "migrated" not in kinds(rt, stuck.id)
    with rt.db.read() as conn:
        migrated = conn.execute(select(func.count()).select_from(history).where(
            history.c.kind == "migrated")).scalar_one()
    assert migrated == 2


def test_a_plan_applied_twice_at_the_same_moment_starts_one_batch_and_no_other(rt, monkeypatch):
    """The second apply read the plan before the first one's batch was written: it answers the
    first one's batch, and no second batch exists for reconcilers to work (a batch cancelled
    after its creation could be worked meanwhile; the chaos run saw one)."""
    from engine.models import batches as batches_table

    runs = waiting_runs(rt)
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    stale = migration_plans.stored(rt, plan["id"])  # as the second apply read it: no batch yet
    first = migration_plans.apply(rt, plan["id"])
    monkeypatch.setattr(migration_plans, "_ready", lambda _rt, _plan_id: stale)
    second = migration_plans.apply(rt, plan["id"])
    assert second["id"] == first["id"]
    with rt.db.read() as conn:
        made = conn.execute(select(batches_table.c.id, batches_table.c.status).where(
            batches_table.c.action == "migrate")).all()
    assert [tuple(r) for r in made] == [(first["id"], "pending")]
    drain(rt)
    assert rt.get(runs["step_and_timer"]).version == 2 and kinds(rt, runs["step_and_timer"]).count("migrated") == 1


def test_the_moved_runs_finish_on_the_new_version_with_contiguous_histories(rt):
    runs = waiting_runs(rt)
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    migration_plans.apply(rt, plan["id"])
    drain(rt)
    for run_id in (runs["step_and_timer"], runs["event"]):
        rt.update_data(run_id, {"arrives": True})
    with rt.worker(2):
        rt.send(runs["event"], "depart")
        for run_id in (runs["step_and_timer"], runs["event"]):
            wait_until(lambda: rt.get(run_id).status == "succeeded", timeout=20, message="the moved run to end")
    for run_id in (runs["step_and_timer"], runs["event"]):
        final = rt.get(run_id)
        assert final.state == "delivered" and final.version == 2
        # v2's steps did the work: its tracker, its crane (v1 had an activity), its filing step.
        assert (final.data["tracked_by"], final.data["crane"], final.data["filed_by"]) == (2, True, 2)
        seqs = [h.seq for h in rt.history(run_id)]
        assert seqs == list(range(1, len(seqs) + 1))
        assert kinds(rt, run_id).count("migrated") == 1


def test_a_run_that_moved_on_after_planning_is_refused_and_left_as_it_is(rt):
    runs = waiting_runs(rt)
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    rt.send(runs["event"], "depart")  # booked -> in_transit after the plan saw it in booked
    dry = migration_plans.dry_run(rt, plan["id"])
    assert dry["counts"] == {"applied": 1, "refused": 1, "skipped": 1}
    assert dry["samples"]["refused"][0]["run_id"] == runs["event"]
    assert "moved on since the plan" in dry["samples"]["refused"][0]["reason"]
    assert all(rt.get(r).version == 1 for r in runs.values())  # the dry run wrote nothing
    batch = migration_plans.apply(rt, plan["id"])
    drain(rt)
    done = batches.get(rt, batch["id"])
    assert (done["done"], done["refused"]) == (1, 1)
    [item] = batches.items(rt, batch["id"], outcome="refused")["items"]
    assert item["run_id"] == runs["event"] and "moved on since the plan" in item["error"]
    refused = rt.get(runs["event"])
    assert (refused.version, refused.state) == (1, "in_transit")
    assert "migrated" not in kinds(rt, refused.id)


def test_a_migrated_run_can_be_migrated_back_while_the_old_version_is_loaded(rt):
    run_id = shipment(rt, "depart")
    forth = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    migration_plans.apply(rt, forth["id"])
    drain(rt)
    back = migration_plans.create(rt, "mig_shipment", 2, 1, mapping={"sailing": "in_transit"})
    assert back["counts"]["mapped"] == 1
    migration_plans.apply(rt, back["id"])
    drain(rt)
    run = rt.get(run_id)
    assert (run.version, run.state) == (1, "in_transit")
    assert kinds(rt, run_id) == ["started", "transition", "migrated", "migrated"]
    [timer] = rows(rt, timers, run_id, "armed")
    assert timer["due_at"] == pytest.approx(entered_at(rt, run_id, 2) + 30 * DAY)
    [task] = rows(rt, tasks, run_id, "queued", "running")
    assert (task["state"], task["max_attempts"]) == ("in_transit", 1)


def test_a_failed_run_moves_when_the_new_version_has_its_step_and_retry_runs_the_new_code(rt):
    run_id = shipment(rt, data={"track_fails": True})
    with rt.worker(2):
        rt.send(run_id, "depart")
        wait_until(lambda: rt.get(run_id).status == "failed", message="v1's tracker to fail")
    plan = migration_plans.create(rt, "mig_shipment", 1, 3)
    assert plan["counts"]["impossible"] == 1  # in_transit is not in v3 without a mapping
    plan = migration_plans.create(rt, "mig_shipment", 1, 3, mapping={"in_transit": "voyage"})
    assert plan["counts"]["mapped"] == 1
    migration_plans.apply(rt, plan["id"])
    drain(rt)
    assert (rt.get(run_id).version, rt.get(run_id).status, rt.get(run_id).state) == (3, "failed", "voyage")
    with rt.worker(2):
        rt.retry(run_id)
        wait_until(lambda: rt.get(run_id).state == "at_port", message="v3's tracker to move the run on")
    assert rt.get(run_id).data["tracked_by"] == 3


def test_a_state_split_in_the_new_version_takes_a_mapping_to_one_of_its_parts(rt):
    run_id = rt.start("mig_claim", {}, version=1).id
    unmapped = migration_plans.create(rt, "mig_claim", 1, 2)
    [verdict] = migration_plans.plan_runs(rt, unmapped["id"])["runs"]
    assert verdict["outcome"] == "impossible" and "review of mig_claim v2 is compound" in verdict["reason"]
    plan = migration_plans.create(rt, "mig_claim", 1, 2, mapping={"review": "approving"})
    [verdict] = migration_plans.plan_runs(rt, plan["id"])["runs"]
    assert verdict["outcome"] == "mapped" and verdict["configuration"] == ["review", "approving"]
    migration_plans.apply(rt, plan["id"])
    drain(rt)
    run = rt.get(run_id)
    assert (run.version, run.state) == (2, "approving")
    rt.send(run_id, "approve")
    assert rt.get(run_id).status == "succeeded"


def test_a_parent_waiting_for_a_map_the_new_version_drops_cannot_move(rt):
    parent = rt.start("mig_consignment", {"parcels": [{"n": 1}, {"n": 2}]}, version=1).id
    plan = migration_plans.create(rt, "mig_consignment", 1, 2)
    [verdict] = migration_plans.plan_runs(rt, plan["id"])["runs"]
    assert verdict["outcome"] == "impossible" and "starts child runs (map of mig_shipment)" in verdict["reason"]
    migration_plans.apply(rt, plan["id"])
    drain(rt)
    assert rt.get(parent).version == 1 and "migrated" not in kinds(rt, parent)


def test_migrate_refuses_a_run_directly_when_it_is_not_in_the_plan(rt):
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    later = shipment(rt)
    with pytest.raises(MigrationRefused, match="not in plan"):
        apply(rt, later, Migrate(migration_plans.stored(rt, plan["id"])))
    assert rt.get(later).version == 1 and kinds(rt, later) == ["started"]


def test_bad_plans_are_refused_and_write_nothing(rt):
    shipment(rt)
    with pytest.raises(InvalidData, match="does not have"):
        migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "nowhere"})
    with pytest.raises(InvalidData, match="does not have"):
        migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"nowhere": "sailing"})
    with pytest.raises(InvalidData, match="same version"):
        migration_plans.create(rt, "mig_shipment", 1, 1)
    with pytest.raises(WorkflowNotFound):
        migration_plans.create(rt, "mig_shipment", 1, 9)
    with pytest.raises(InvalidData, match="unknown filter key"):
        migration_plans.create(rt, "mig_shipment", 1, 2, filter={"colour": "red"})
    assert migration_plans.list_plans(rt) == []
    with pytest.raises(PlanNotFound):
        migration_plans.apply(rt, "0" * 32)
    with pytest.raises(InvalidData, match="migration plan"):
        batches.create(rt, "migrate", {"workflow": "mig_shipment"})


def test_a_plan_takes_the_runs_filter(rt):
    runs = waiting_runs(rt)
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"},
                                  filter={"state": "in_transit"})
    assert plan["counts"] == {"clean": 0, "mapped": 1, "impossible": 0}
    assert plan["samples"]["mapped"] == [runs["step_and_timer"]]


# -- the REST API and the CLI ---------------------------------------------------------------------

def test_the_api_plans_shows_dry_runs_and_applies_a_migration(rt):
    from api import create_app

    client = create_app(interlock=rt).test_client()
    runs = waiting_runs(rt)
    made = client.post("/api/workflows/mig_shipment/migrations",
                       json={"from": 1, "to": 2, "map": {"in_transit": "sailing"}})
    assert made.status_code == 201, made.json
    plan = made.json
    assert plan["counts"] == {"clean": 1, "mapped": 1, "impossible": 1} and plan["batch"] is None
    assert sum(shape["runs"] for shape in plan["shapes"]) == 3
    impossible = client.get(f"/api/migrations/{plan['id']}/runs", query_string={"outcome": "impossible"}).json
    assert [r["run_id"] for r in impossible["runs"]] == [runs["activity"]]
    assert "mig_unload" in impossible["runs"][0]["reason"]
    dry = client.post(f"/api/migrations/{plan['id']}/apply", json={"dry_run": True})
    assert dry.status_code == 200 and dry.json["counts"] == {"applied": 2, "refused": 0, "skipped": 1}
    assert rt.get(runs["event"]).version == 1
    applied = client.post(f"/api/migrations/{plan['id']}/apply", json={})
    assert applied.status_code == 202 and applied.json["action"] == "migrate"
    drain(rt)
    shown = client.get(f"/api/migrations/{plan['id']}").json
    assert shown["batch"]["status"] == "done" and shown["batch"]["done"] == 2
    assert [p["id"] for p in client.get("/api/migrations", query_string={"workflow": "mig_shipment"}).json["plans"]] \
        == [plan["id"]]
    assert rt.get(runs["step_and_timer"]).version == 2


@pytest.mark.parametrize("name, body, status, kind", [
    ("mig_shipment", {"from": 1, "to": 2, "map": {"in_transit": "nowhere"}}, 422, "invalid-data"),
    ("mig_shipment", {"from": 1, "to": 1}, 422, "invalid-data"),
    ("mig_shipment", {"from": 1, "to": 9}, 404, "workflow-not-found"),
    ("nope", {"from": 1, "to": 2}, 404, "workflow-not-found"),
    ("mig_shipment", {"from": "1", "to": 2}, 422, "validation-error"),
    ("mig_shipment", {"from": 1, "to": 2, "filter": {"status": "succeeded"}}, 422, "validation-error"),
    ("mig_shipment", {"from": 1, "to": 2, "filter": {"colour": "red"}}, 422, "validation-error"),
])
def test_the_api_refuses_a_bad_plan_and_writes_nothing(rt, name, body, status, kind):
    from api import create_app

    from .apitools import dump

    client = create_app(interlock=rt).test_client()
    shipment(rt)
    before = dump(rt)
    response = client.post(f"/api/workflows/{name}/migrations", json=body)
    assert response.status_code == status, response.json
    assert response.json["type"].endswith(kind)
    assert dump(rt) == before
    assert client.get("/api/migrations/" + "0" * 32).status_code == 404
    assert client.post("/api/migrations/" + "0" * 32 + "/apply", json={}).status_code == 404


@pytest.fixture
def sqlite_rt(sqlite_settings):
    runtime = Interlock(sqlite_settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def test_the_cli_plans_dry_runs_and_applies_with_exit_code_2_on_bad_input(sqlite_rt):
    """The commands over SQLite (the engine's part is tested on both databases above)."""
    from tests.processes import env_for, interlock

    rt = sqlite_rt
    env = env_for(rt.settings)
    runs = waiting_runs(rt)
    made = interlock("migrate", "plan", "mig_shipment", "--from", "1", "--to", "2", "--map", "in_transit=sailing",
                     "--json", env=env)
    assert made.returncode == 0, made.stderr
    plan = json.loads(made.stdout)
    assert plan["counts"] == {"clean": 1, "mapped": 1, "impossible": 1}
    text = interlock("migrate", "show", plan["id"], "--runs", "impossible", env=env)
    assert "1 clean, 1 mapped, 1 impossible" in text.stdout and runs["activity"] in text.stdout
    dry = interlock("migrate", "apply", plan["id"], "--dry-run", env=env)
    assert "would move 2 run(s), refuse 0" in dry.stdout
    done = interlock("migrate", "apply", plan["id"], "--wait", env=env)
    assert done.returncode == 0 and "migrate done: 2 done, 0 refused" in done.stdout
    assert rt.get(runs["event"]).version == 2
    for args in (["plan", "mig_shipment", "--from", "1", "--to", "2", "--map", "in_transit"],
                 ["plan", "mig_shipment", "--from", "1", "--to", "2", "--map", "in_transit=nowhere"],
                 ["plan", "nope", "--from", "1", "--to", "2"],
                 ["apply", "0" * 32]):
        bad = interlock("migrate", *args, env=env)
        assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].lower().startswith("error:"), \
            (args, bad.stderr)


def test_a_migration_interrupted_by_killing_its_worker_resumes_and_moves_each_run_once(pg_settings, tmp_path):
    """A worker process is SIGKILLed part-way through applying a plan; another takes the batch
    over once the lease has expired: every run is on the new version with exactly one
    `migrated` entry and one armed `nudge` timer."""
    from tests.processes import Process, env_for

    settings = pg_settings.replace(workflows=WORKFLOWS, lease_seconds=2.0)
    rt = Interlock(settings)
    try:
        ids = [shipment(rt) for _ in range(1200)]
        plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
        assert plan["counts"]["clean"] == 1200
        batch = migration_plans.apply(rt, plan["id"])
        env = env_for(settings, INTERLOCK_BATCH_CHUNK="20")
        first = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "first.log")
        try:
            wait_until(lambda: batches.get(rt, batch["id"])["done"] >= 100, timeout=60,
                       message="the first worker to be part-way through")
            first.kill()
        finally:
            first.stop()
        assert batches.get(rt, batch["id"])["done"] < 1200
        second = Process("worker", "--threads", "1", env=env, log_path=tmp_path / "second.log")
        try:
            wait_until(lambda: batches.get(rt, batch["id"])["status"] == "done", timeout=120,
                       message="the second worker to finish the migration")
        finally:
            second.stop()
        done = batches.get(rt, batch["id"])
        assert (done["done"], done["refused"], done["skipped"]) == (1200, 0, 0)
        with rt.db.read() as conn:
            migrated = dict(conn.execute(select(history.c.run_id, func.count()).where(
                history.c.kind == "migrated").group_by(history.c.run_id)).all())
            nudges = dict(conn.execute(select(timers.c.run_id, func.count()).where(
                timers.c.name == "nudge", timers.c.status == "armed").group_by(timers.c.run_id)).all())
            versions = set(conn.execute(select(runs_table.c.version).where(runs_table.c.id.in_(ids))).scalars())
        assert migrated == {run_id: 1 for run_id in ids}
        assert nudges == {run_id: 1 for run_id in ids}
        assert versions == {2}
    finally:
        rt.close()


def test_a_worker_warns_at_start_of_a_version_with_active_runs_that_no_live_worker_loads(rt, caplog):
    from engine.explain import explain
    from engine.registry import Registry
    from tests.migrate_workflows import ShipmentV2

    waiting = shipment(rt, "depart")  # v1, its step queued and its timer armed
    only_v2 = Registry()
    only_v2.add(ShipmentV2)
    narrow = Interlock(rt.settings, registry=only_v2)
    try:
        with caplog.at_level("WARNING", logger="engine.workers"), narrow.worker(1):
            warnings = [r.getMessage() for r in caplog.records if "no live worker loads" in r.getMessage()]
            assert warnings == ["workflow mig_shipment v1 has 1 active run(s) and no live worker loads that "
                                "version: they do not move until one does; or move them: interlock migrate plan "
                                "mig_shipment --from 1 --to 2"]
            why = explain(rt, waiting)
            assert why["version_loaded_nowhere"].startswith("no live worker loads workflow mig_shipment v1")
            assert why["waiting_for"].startswith("no live worker loads workflow mig_shipment v1")
        # With no worker running at all, nothing is said about versions.
        assert explain(rt, waiting)["version_loaded_nowhere"] is None
    finally:
        narrow.close()


def test_a_chunk_moved_together_writes_what_moving_each_run_alone_writes(rt):
    """The batch's chunk path (reads for the whole chunk at once, writes as one executemany per
    statement) against ``transitions.apply`` of ``Migrate`` run by run: the same rows."""
    pairs = [waiting_runs(rt) for _ in range(2)]
    plan = migration_plans.create(rt, "mig_shipment", 1, 2, mapping={"in_transit": "sailing"})
    stored = migration_plans.stored(rt, plan["id"])
    for run_id in pairs[1].values():  # one at a time
        try:
            apply(rt, run_id, Migrate(stored))
        except MigrationRefused:
            pass  # the impossible one
    migration_plans.apply(rt, plan["id"])
    drain(rt)  # the other set, a chunk at a time

    def written(run_id):
        run = rt.get(run_id)
        with rt.db.read() as conn:
            task_rows = conn.execute(select(tasks.c.state, tasks.c.name, tasks.c.status, tasks.c.max_attempts).where(
                tasks.c.run_id == run_id).order_by(tasks.c.name)).all()
            timer_rows = conn.execute(select(timers.c.state, timers.c.name, timers.c.status, timers.c.event,
                                             timers.c.due_at - run.created_at).where(
                timers.c.run_id == run_id).order_by(timers.c.name)).all()
        entries = [(h.kind, h.source, h.target, {k: v for k, v in (h.detail or {}).items() if k != "plan"})
                   for h in rt.history(run_id)]
        with rt.db.read() as conn:
            counters = tuple(conn.execute(select(runs_table.c.open_tasks, runs_table.c.open_timers).where(
                runs_table.c.id == run_id)).one())
        return (run.version, run.status, run.state, run.configuration, counters,
                [tuple(r) for r in task_rows], [tuple(r[:4]) + (round(r[4]),) for r in timer_rows], entries)

    for kind in pairs[0]:
        assert written(pairs[0][kind]) == written(pairs[1][kind]), kind
    assert written(pairs[0]["step_and_timer"])[0] == 2 and written(pairs[0]["activity"])[0] == 1


def test_a_run_waiting_on_an_activity_the_new_version_keeps_moves_and_its_task_stays_receivable(rt):
    from engine import activities

    run_id = shipment(rt, "depart", "arrive")  # at_port: the mig_unload activity queued
    plan = migration_plans.create(rt, "mig_shipment", 1, 3, mapping={"in_transit": "voyage"})
    [verdict] = [r for r in migration_plans.plan_runs(rt, plan["id"])["runs"] if r["run_id"] == run_id]
    assert verdict["outcome"] == "clean"
    assert verdict["changes"] == ["keeps activity mig_unload, visibility_timeout 30.0 -> 300.0"]
    migration_plans.apply(rt, plan["id"])
    drain(rt)
    assert rt.get(run_id).version == 3
    [task] = activities.receive(rt, "mig_unload", visibility_timeout=60)
    assert task.run_id == run_id
    activities.complete(rt, task.token, "unloaded", {})
    assert rt.get(run_id).state == "customs"
