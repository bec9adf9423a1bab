"""The engine as separate processes: the CLI, a worker killed mid-step, runs started from another shell."""

import json

import pytest
from sqlalchemy import select

from engine.models import tasks
from engine.runtime import Interlock

from .conftest import wait_until
from .processes import Process, clean_env, env_for, interlock

pytestmark = pytest.mark.slow
PROCESS_WORKFLOWS = "tests.process_workflows"


@pytest.mark.parametrize("workflow", ["cargo", "orders"])
def test_run_demo_in_a_fresh_directory_then_show_it(workflow, tmp_path):
    env = clean_env()
    done = interlock("run", workflow, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    run_id = lines[0].split()[1]
    assert lines[-1].startswith(f"run {run_id} succeeded")
    transitions = [line for line in lines if " transition " in line]
    assert transitions, done.stdout

    shown = interlock("show", run_id, "--json", env=env, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert document["run"]["status"] == "succeeded"
    seqs = [entry["seq"] for entry in document["history"]]
    assert seqs == list(range(1, document["run"]["last_seq"] + 1))
    # Everything printed as it happened is in the stored history, in the same order.
    stored = [f"{e['event']} {e['source']} → {e['target']}" for e in document["history"]
              if e["kind"] == "transition"]
    assert [line.split("transition")[1].split("[")[0].strip() for line in transitions] == stored


def test_run_exits_1_when_the_run_does_not_succeed(tmp_path):
    data = json.dumps({"items": [{"sku": "A", "qty": 1, "price": 5}], "card": "declined"})
    done = interlock("run", "orders", "--data", data, env=clean_env(), cwd=tmp_path)
    assert done.returncode == 1
    assert "cancelled" in done.stdout.splitlines()[-1]


def test_commands_refuse_a_database_behind_the_migrations(tmp_path):
    env = clean_env()
    env["INTERLOCK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    done = interlock("runs", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "interlock db upgrade" in done.stderr


def _process_settings(settings):
    return settings.replace(workflows=PROCESS_WORKFLOWS)


def _start_worker(settings, tmp_path, name, *args):
    return Process("worker", "--threads", "2", *args, env=env_for(settings),
                   log_path=tmp_path / f"{name}.log")


@pytest.mark.parametrize("when", ["claimed", "before-claim"])
def test_worker_killed_mid_step_the_run_still_finishes_once(settings, tmp_path, when):
    """Killed after its task was claimed (found by the expired lease) or before (the broker
    delivers its unacknowledged message again)."""
    # A safety re-send interval the test never reaches: the killed worker's message comes back
    # from the broker, and a first delivery runs lazily (claims after a second).
    settings = _process_settings(settings).replace(resend_after=30.0)
    first = _start_worker(settings, tmp_path, "first")
    rt = Interlock(settings)
    try:
        run = rt.start("crashy", {"marker_dir": str(tmp_path)})
        wait_until(lambda: list(tmp_path.glob("attempt-*")), timeout=20, message="the step to start")
        if when == "claimed":
            wait_until(lambda: _task_status(rt, run.id) == "running", timeout=10, message="the claim")
        first.kill()
        assert _task_status(rt, run.id) == ("running" if when == "claimed" else "queued")
        second = _start_worker(settings, tmp_path, "second")
        try:
            final = wait_until(lambda: (r := rt.get(run.id)).status == "succeeded" and r, timeout=40,
                               message="the run to finish after the crash")
        finally:
            second.stop()
        history = rt.history(run.id)
        assert [h.seq for h in history] == list(range(1, final.last_seq + 1))
        done = [h for h in history if h.kind == "transition" and h.event == "done"]
        assert len(done) == 1
        lost = [h for h in history if h.kind == "step_failed" and h.detail.get("lost")]
        assert len(lost) == (1 if when == "claimed" else 0)
        killed_pid = int(sorted(tmp_path.glob("attempt-*"), key=lambda p: p.stat().st_mtime)[0].name.split("-")[-1])
        assert final.data["finished_by"] != killed_pid
    finally:
        first.stop()
        rt.close()


def _task_status(rt, run_id):
    with rt.db.read() as conn:
        return conn.execute(select(tasks.c.status).where(tasks.c.run_id == run_id)).scalar()


def test_run_started_from_another_shell_starts_within_a_second(settings, tmp_path):
    settings = _process_settings(settings)
    worker = _start_worker(settings, tmp_path, "worker")
    rt = Interlock(settings)
    try:
        # Wait until the worker is up: a first run finishes.
        warm = interlock("start", "quick", "--wait", env=env_for(settings), timeout=60)
        assert warm.returncode == 0, warm.stdout + warm.stderr + worker.output()
        started = interlock("start", "quick", "--json", env=env_for(settings))
        assert started.returncode == 0, started.stderr
        run = json.loads(started.stdout)
        created = rt.get(run["id"]).created_at
        wait_until(lambda: rt.get(run["id"]).status == "succeeded", timeout=10)
        first_step = next(h for h in rt.history(run["id"]) if h.kind == "step_started")
        assert first_step.at - created < 1.0
    finally:
        worker.stop()
        rt.close()


def test_cli_start_send_cancel_and_list(sqlite_settings, tmp_path):
    env = env_for(sqlite_settings)
    started = interlock("start", "cargo", "--data", json.dumps({"container": "C1", "manifest": ["x"]}),
                        "--key", "C1", "--json", env=env)
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]
    sent = interlock("send", run_id, "depart", env=env)
    assert sent.returncode == 0 and "in_transit" in sent.stdout
    refused = interlock("send", run_id, "depart", env=env)
    assert refused.returncode == 2 and "allowed now" in refused.stderr
    listed = json.loads(interlock("runs", "--key", "C1", "--json", env=env).stdout)
    assert [r["id"] for r in listed["runs"]] == [run_id]
    cancelled = interlock("cancel", run_id, env=env)
    assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout
    bad = interlock("start", "cargo", "--data", "[1, 2]", env=env)
    assert bad.returncode == 2 and "JSON object" in bad.stderr
