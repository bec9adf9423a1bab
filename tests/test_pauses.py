"""Pausing a run, or a whole workflow: no step starts and no timer fires until it is resumed;
events are refused, or kept in order and applied on resume; a child's end waits for its
paused parent."""

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from api import create_app
from engine.cli import cli
from engine.explain import explain
from engine.errors import RunNotActive, RunPaused, WorkflowNotFound
from engine.models import signals, tasks
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from engine.testing import fast_forward
from tests.conftest import TEST_WORKFLOWS, wait_until
from tests.pause_workflows import BOILED

WORKFLOWS = f"{TEST_WORKFLOWS},tests.pause_workflows"


@pytest.fixture
def rt(settings):
    runtime = Interlock(settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def _task(rt, run_id):
    with rt.db.read() as conn:
        return conn.execute(select(tasks).where(tasks.c.run_id == run_id)).mappings().one()


def _boiling(rt):
    """A kettle whose step is committed but not yet run (no worker runs in this process)."""
    run = rt.start("pause_kettle")
    rt.send(run.id, "switch_on")
    return run.id


def test_a_paused_runs_due_timer_fires_only_on_resume(rt):
    run_id = _boiling(rt)
    rt.executor.execute(_task(rt, run_id)["id"])  # the step runs: the kettle cools, its timer armed
    assert rt.get(run_id).state == "cooling"
    rt.pause(run_id, "inspection")
    fast_forward(rt, run_id)  # the timer is due now
    reconciler = Reconciler(rt)
    assert reconciler.fire_due_timers() == 0
    assert (rt.get(run_id).state, explain(rt, run_id)["paused"]["by"]) == ("cooling", "run")
    rt.resume(run_id)
    assert reconciler.fire_due_timers() == 1
    assert rt.get(run_id).status == "succeeded"
    kinds = [e.kind for e in rt.history(run_id)]
    assert kinds[-4:] == ["paused", "resumed", "timer_fired", "transition"]
    assert [e.detail for e in rt.history(run_id) if e.kind == "paused"] == [{"reason": "inspection"}]


def test_a_timer_read_as_due_before_the_pause_committed_does_not_fire_while_paused(rt):
    # A reconciler reads the due timers, then fires each under its run's lock (one by one when
    # a batch failed): what the run says once locked decides.
    from engine.models import timers
    from engine.operations import TimerFired
    from engine.transitions import apply

    run_id = _boiling(rt)
    rt.executor.execute(_task(rt, run_id)["id"])
    fast_forward(rt, run_id)
    with rt.db.read() as conn:
        timer_id = conn.execute(select(timers.c.id).where(timers.c.run_id == run_id,
                                                          timers.c.status == "armed")).scalar_one()
    rt.pause(run_id)
    apply(rt, run_id, TimerFired(timer_id))
    assert rt.get(run_id).state == "cooling"
    assert "timer_fired" not in [e.kind for e in rt.history(run_id)]
    rt.resume(run_id)
    assert Reconciler(rt).fire_due_timers() == 1
    assert rt.get(run_id).status == "succeeded"


def test_a_paused_runs_step_is_handed_back_unrun_and_sent_on_resume(rt):
    run_id = _boiling(rt)
    task = _task(rt, run_id)
    rt.pause(run_id)
    rt.executor.execute(task["id"])  # its message arrives while the run is paused
    assert BOILED.get(run_id) is None
    assert (_task(rt, run_id)["status"], _task(rt, run_id)["sent_at"]) == ("queued", None)
    assert Reconciler(rt).send_outbox() == 0  # held: not sent again either
    with rt.worker(4):
        rt.resume(run_id)
        wait_until(lambda: rt.get(run_id).state == "cooling", message="the step to run after resume")
    assert BOILED[run_id] == 1


def test_events_to_a_paused_run_are_refused_or_queued_and_applied_in_order_on_resume(rt):
    run = rt.start("pause_kettle")
    rt.pause(run.id)
    with pytest.raises(RunPaused):
        rt.send(run.id, "switch_on")
    with pytest.raises(RunPaused):
        rt.update_data(run.id, {"water": 1})
    rt.send(run.id, "descale", {"by": "ann"}, queue=True)
    rt.send(run.id, "descale", {"by": "bob"}, queue=True)
    rt.send(run.id, "switch_on", queue=True)
    assert rt.get(run.id).state == "idle"
    resumed = rt.resume(run.id)
    assert resumed.paused_at is None
    wait_until(lambda: rt.get(run.id).state == "boiling", message="the queued events to apply")
    assert rt.get(run.id).data["descaled"] == ["ann", "bob"]
    applied = [(e.event, e.detail) for e in rt.history(run.id) if e.kind == "transition"]
    assert applied == [("descale", {"queued": True}), ("descale", {"queued": True}), ("switch_on", {"queued": True})]


def test_a_queued_event_whose_callback_raises_is_refused_alone(rt):
    run = rt.start("pause_kettle")
    rt.pause(run.id)
    rt.send(run.id, "descale", {"explode": True}, queue=True)
    rt.send(run.id, "descale", {"by": "cy"}, queue=True)
    rt.resume(run.id)
    wait_until(lambda: rt.get(run.id).data.get("descaled") == ["cy"], message="the second event to apply")
    [refused] = [e for e in rt.history(run.id) if e.kind == "signal_refused"]
    assert refused.event == "descale" and "the descaler exploded" in refused.detail["error"]
    with rt.db.read() as conn:
        assert sorted(conn.execute(select(signals.c.status).where(signals.c.run_id == run.id)).scalars()) == [
            "applied", "refused"]


def test_a_childs_end_waits_for_its_paused_parent(rt):
    parent = rt.start("pause_household")
    [kid] = rt.children(parent.id).runs
    rt.pause(parent.id)
    rt.send(kid.id, "switch_on")
    rt.executor.execute(_task(rt, kid.id)["id"])
    fast_forward(rt, kid.id)
    Reconciler(rt).fire_due_timers()
    assert rt.get(kid.id).status == "succeeded"
    assert rt.get(parent.id).state == "waiting"  # the end waits, pending
    rt.resume(parent.id)
    wait_until(lambda: rt.get(parent.id).status == "succeeded", message="the parent to take the child's end")


def test_cancelling_a_paused_parent_cancels_its_children(rt):
    parent = rt.start("pause_household")
    [kid] = rt.children(parent.id).runs
    rt.pause(parent.id)
    cancelled = rt.cancel(parent.id)
    assert (cancelled.status, cancelled.paused_at) == ("cancelled", None)
    wait_until(lambda: rt.get(kid.id).status == "cancelled", message="the child to be cancelled")


def test_a_paused_workflow_holds_new_steps_and_timers_of_all_its_runs_until_resumed(rt):
    cooling = _boiling(rt)
    rt.executor.execute(_task(rt, cooling)["id"])
    rt.pause_workflow("pause_kettle", reason="descaling day")
    assert [p["reason"] for p in rt.paused_workflows()] == ["descaling day"]
    boiling = _boiling(rt)
    assert _task(rt, boiling)["sent_at"] is None  # committed, not sent
    fast_forward(rt, cooling)
    reconciler = Reconciler(rt)
    assert (reconciler.fire_due_timers(), reconciler.send_outbox()) == (0, 0)
    rt.executor.execute(_task(rt, boiling)["id"])  # a message that arrives anyway is handed back
    assert BOILED.get(boiling) is None
    assert explain(rt, boiling)["paused"]["by"] == "workflow"
    assert rt.resume_workflow("pause_kettle") is True
    with rt.worker(4):
        wait_until(lambda: rt.get(cooling).status == "succeeded" and rt.get(boiling).state == "cooling",
                   message="the held timer and step after the workflow resumed")
    assert rt.resume_workflow("pause_kettle") is False


def test_bad_pauses_change_nothing(rt):
    run = rt.start("pause_kettle")
    rt.cancel(run.id)
    with pytest.raises(RunNotActive):
        rt.pause(run.id)
    with pytest.raises(WorkflowNotFound):
        rt.pause_workflow("no_such_workflow")
    with pytest.raises(WorkflowNotFound):
        rt.pause_workflow("pause_kettle", version=9)
    assert rt.paused_workflows() == []
    assert rt.resume(rt.start("pause_kettle").id).paused_at is None  # not paused: nothing to do


def test_the_api_pauses_and_resumes_runs_and_workflows(rt):
    client = create_app(interlock=rt).test_client()
    run = rt.start("pause_kettle")
    paused = client.post(f"/api/runs/{run.id}/pause", json={"reason": "audit"})
    assert paused.status_code == 200 and paused.json["paused_at"] is not None
    refused = client.post(f"/api/runs/{run.id}/events", json={"event": "switch_on"})
    assert (refused.status_code, refused.json["type"]) == (409, "urn:interlock:problem:run-paused")
    queued = client.post(f"/api/runs/{run.id}/events", json={"event": "switch_on", "queue": True})
    assert queued.status_code == 200 and queued.json["state"] == "idle"
    explained = client.get(f"/api/runs/{run.id}/explain").json
    assert explained["paused"]["by"] == "run" and explained["waiting_for"].startswith("an operator to resume it")
    assert client.post(f"/api/runs/{run.id}/resume", json={}).json["paused_at"] is None
    wait_until(lambda: rt.get(run.id).state == "boiling", message="the queued event")
    assert client.post("/api/workflows/pause_kettle/pause", json={"version": 1}).json["version"] == 1
    assert [p["version"] for p in client.get("/api/pauses").json["pauses"]] == [1]
    bad = client.post("/api/workflows/pause_kettle/pause", json={"version": "1"})
    assert bad.status_code == 422  # the body does not match its schema
    assert client.post("/api/workflows/nope/pause", json={}).status_code == 404
    assert client.post("/api/workflows/pause_kettle/resume", json={"version": 1}).json["resumed"] is True
    assert client.get("/api/pauses").json["pauses"] == []


def test_the_cli_pauses_and_resumes(rt, settings):
    run = rt.start("pause_kettle")
    runner = CliRunner()
    env = {"INTERLOCK_DATABASE_URL": settings.database_url, "INTERLOCK_WORKFLOWS": WORKFLOWS,
           "INTERLOCK_BROKER_URL": settings.broker_url, "INTERLOCK_QUEUE": settings.queue}
    paused = runner.invoke(cli, ["pause", run.id, "--reason", "night"], env=env)
    assert paused.exit_code == 0 and "paused since" in paused.output
    assert rt.get(run.id).paused_at is not None
    assert runner.invoke(cli, ["resume", run.id], env=env).exit_code == 0
    assert rt.get(run.id).paused_at is None
    both = runner.invoke(cli, ["pause", run.id, "--workflow", "pause_kettle"], env=env)
    assert both.exit_code == 2 and "not both" in both.output
    assert runner.invoke(cli, ["pause", "--workflow", "pause_kettle"], env=env).exit_code == 0
    assert rt.paused_workflows()[0]["version"] is None
    assert "resumed" in runner.invoke(cli, ["resume", "--workflow", "pause_kettle"], env=env).output
