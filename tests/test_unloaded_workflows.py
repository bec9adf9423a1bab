"""Runs of a workflow no running worker has loaded: the reconciler skips them, reports each
once, keeps every other run on time, and a worker that loads the workflow finishes them."""

import contextlib
import logging
import time

import pytest
from sqlalchemy import select

from api import create_app
from engine import activities
from engine.explain import explain
from engine.models import tasks
from engine.reconciler import UNLOADED_EVERY
from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS, wait_until

ORPHANS = "tests.unloaded_workflows"
TICKS = 100


@pytest.fixture(params=["sqlite", "postgresql"])
def db_settings(request):
    return request.getfixturevalue(f"{'pg' if request.param == 'postgresql' else 'sqlite'}_settings")


@contextlib.contextmanager
def runtime(settings, workflows):
    rt = Interlock(settings.replace(workflows=workflows))
    try:
        yield rt
    finally:
        rt.close()


def skipped_reports(caplog, run_id) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "engine.reconciler" and getattr(r, "run_id", None) == run_id
            and "skipped" in r.getMessage()]


def start_orphans(client) -> dict:
    """One run per duty the reconciler has, all of workflows the first worker lacks."""
    timer = client.start("test_unloaded_timer")        # a timer due at once
    outbox = client.start("test_unloaded_step")        # a step never sent: the client has no worker
    lost = client.start("test_unloaded_activity")      # an activity whose receiver goes silent
    [task] = activities.receive(client, "test_unloaded_review", visibility_timeout=0.2)
    wait_until(lambda: client.get(lost.id).status == "running" and time.time() > task.lease_until,
               message="the activity's visibility timeout to end")
    return {"a due timer": timer.id, "a step to send": outbox.id, "a lost task": lost.id}


def test_runs_of_unloaded_workflows_are_skipped_reported_once_and_finished_by_a_worker_that_loads_them(
        db_settings, caplog):
    caplog.set_level(logging.INFO, logger="engine")
    with runtime(db_settings, f"{TEST_WORKFLOWS},{ORPHANS}") as client, \
            runtime(db_settings, TEST_WORKFLOWS) as narrow:
        orphans = start_orphans(client)
        narrow.worker().start()
        ticks = [client.start("test_short_timer").id for _ in range(TICKS)]

        # The 100 fire on time, beside the orphans.
        wait_until(lambda: len(client.list_runs(workflow="test_short_timer", status="succeeded",
                                                limit=500).runs) == TICKS, timeout=20, message="the 100 timers to fire")
        lags = [e.detail["lag"] for run_id in ticks for e in client.history(run_id) if e.kind == "timer_fired"]
        assert len(lags) == TICKS
        assert max(lags) < 1.0, sorted(lags)[-5:]

        # Each orphan is reported once, naming what waits and why, over many passes.
        wait_until(lambda: all(skipped_reports(caplog, run_id) for run_id in orphans.values()),
                   message="each orphan run to be reported")
        for _ in range(3 * UNLOADED_EVERY):  # passes that look for them again
            narrow.worker().reconciler.tick()
        for what, run_id in orphans.items():
            [report] = skipped_reports(caplog, run_id)
            message = report.getMessage()
            assert report.levelno == logging.WARNING
            assert f"has {what}, skipped" in message
            assert f"v1 is not loaded in this process (INTERLOCK_WORKFLOWS={TEST_WORKFLOWS})" in message
        failures = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR
                    or "failed" in r.getMessage() and r.name == "engine.reconciler"]
        assert failures == []

        # Nothing of theirs moved.
        assert client.get(orphans["a due timer"]).state == "held"
        assert client.get(orphans["a step to send"]).status == "running"
        assert [e.kind for e in client.history(orphans["a lost task"])] == ["started"]

        # explain and the run page, served by the process that lacks the workflow, say why.
        why = explain(narrow, orphans["a due timer"])
        assert why["workflow_not_loaded"].startswith("workflow test_unloaded_timer v1 is not loaded in this process")
        assert why["waiting_for"].startswith("a worker that loads workflow test_unloaded_timer v1")
        # A worker runs, and it does not load that version either: nothing will move the run.
        assert why["version_loaded_nowhere"].startswith("no live worker loads workflow test_unloaded_timer v1")
        assert "timer due_now (release)" in why["waiting_for"]
        assert [t["name"] for t in why["timers"]] == ["due_now"]
        web = create_app({"SECRET_KEY": "test-secret"}, interlock=narrow).test_client()
        answer = web.get(f"/api/runs/{orphans['a step to send']}/explain")
        assert answer.status_code == 200
        assert "test_unloaded_step v1 is not loaded in this process" in answer.json["workflow_not_loaded"]
        assert "step work to be picked up by a worker" in answer.json["waiting_for"]
        page = web.get(f"/runs/{orphans['a lost task']}")
        assert page.status_code == 200
        html = page.get_data(as_text=True)
        assert 'id="not-loaded"' in html
        assert "workflow test_unloaded_activity v1 is not loaded in this process" in html

        # A worker that loads them finishes every one.
        with runtime(db_settings, f"{TEST_WORKFLOWS},{ORPHANS}") as full:
            full.worker().start()
            wait_until(lambda: {client.get(orphans[w]).status for w in ("a due timer", "a step to send")}
                       == {"succeeded"}, timeout=15, message="the timer and outbox orphans to finish")
            [again] = wait_until(lambda: activities.receive(client, "test_unloaded_review"),
                                 message="the lost activity task to be received again")
            assert again.attempt == 2
            activities.complete(client, again.token)
            assert client.get(orphans["a lost task"]).status == "succeeded"
            lost = [e for e in client.history(orphans["a lost task"]) if e.kind == "step_failed"]
            assert len(lost) == 1 and "VisibilityTimeout" in lost[0].detail["error"]
        assert explain(narrow, orphans["a due timer"])["waiting_for"] == "nothing: the run is succeeded"
        assert all(len(skipped_reports(caplog, run_id)) == 1 for run_id in orphans.values())


@pytest.mark.parametrize("backend", ["postgres-redis", "postgres-rabbitmq"])
def test_a_step_delivered_to_a_worker_without_its_workflow_is_handed_back_not_failed(settings, caplog):
    caplog.set_level(logging.INFO, logger="engine")
    with runtime(settings, f"{TEST_WORKFLOWS},{ORPHANS}") as client, runtime(settings, TEST_WORKFLOWS) as narrow:
        with narrow.worker(2):
            run = client.start("test_unloaded_step")  # sent to the broker, which only `narrow` consumes
            handed_back = wait_until(lambda: [r for r in caplog.records if r.name == "engine.steps"
                                              and getattr(r, "run_id", None) == run.id], message="the hand-back")
            assert "is not loaded in this process" in handed_back[0].getMessage()
            with client.db.read() as conn:
                sent_at, status = conn.execute(
                    select(tasks.c.sent_at, tasks.c.status).where(tasks.c.run_id == run.id)).one()
            assert (sent_at, status) == (None, "queued")  # unsent: a loading worker sends it at once
            assert client.get(run.id).status == "running"
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
        with client.worker(2):
            done = wait_until(lambda: (r := client.get(run.id)).status == "succeeded" and r,
                              message="the loading worker to run it")
        assert done.data == {"worked": True}
        assert [e.kind for e in client.history(run.id)].count("step_started") == 1
