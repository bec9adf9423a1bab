"""Upgrades: a new workflow version deployed beside the old one, and a database created by the first
migration, with runs in flight written by the engine of that time, upgraded to head and finished.

The engine of revision 0001 is the commit that added that migration, taken from this repository's
history (``git archive``) into a temporary directory and run as its own process.
"""

import json
import shutil
import subprocess
import sys
import tarfile
import time

import pytest
from sqlalchemy import func, select

from engine import WorkflowNotFound
from engine.config import Settings
from engine.db import Database
from engine.models import runs, tasks, timers
from engine.runtime import Interlock

from .conftest import wait_until
from .processes import ROOT
from .test_migrations import fresh_database

V1 = "tests.upgrade_workflows"
V1_AND_V2 = "tests.upgrade_workflows,tests.upgrade_workflows_v2"
FIRST_MIGRATION = "migrations/versions/0001_runs_history_tasks_and_timers.py"


def settings_for(url, workflows):
    return Settings(database_url=url, broker_url="memory://", workflows=workflows, queue="interlock_upgrade",
                    lease_seconds=1.0, resend_after=1.0, poll_interval=0.05)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


def transitions(rt, run_id):
    entries = rt.history(run_id)
    assert [h.seq for h in entries] == list(range(1, rt.get(run_id).last_seq + 1))
    return [h.event for h in entries if h.kind == "transition"]


def open_work(rt, run_id):
    with rt.db.read() as conn:
        open_tasks = conn.execute(select(func.count()).select_from(tasks).where(
            tasks.c.run_id == run_id, tasks.c.status.in_(("queued", "running")))).scalar()
        armed = conn.execute(select(func.count()).select_from(timers).where(
            timers.c.run_id == run_id, timers.c.status.in_(("armed", "suspended")))).scalar()
    return open_tasks, armed


# -- a second version deployed beside the first ----------------------------------------------------

def test_a_run_started_on_version_1_keeps_running_on_version_1_after_version_2_is_deployed(empty_url):
    Database(empty_url).upgrade()
    first = Interlock(settings_for(empty_url, V1))
    waiting = first.start("upgrade_shipment", {})
    packing = first.start("upgrade_shipment", {"checks_needed": 2})
    first.send(packing.id, "pick_up")  # its task is queued: no worker runs in the first deployment
    first.close()

    second = Interlock(settings_for(empty_url, V1_AND_V2))
    try:
        assert second.registry.versions("upgrade_shipment") == [1, 2]
        with second.worker(4):
            new = second.start("upgrade_shipment", {})
            assert new.version == 2  # new runs get the latest version
            for run in (waiting, new):
                second.send(run.id, "pick_up")
            for run in (waiting, packing, new):
                wait_until(lambda r=run: second.get(r.id).status == "succeeded", timeout=20,
                           message=f"run {run.id} to be delivered")
        for run in (waiting, packing):
            final = second.get(run.id)
            assert (final.version, final.state, final.data["packed_by"]) == (1, "delivered", "v1")
            assert transitions(second, run.id) == ["pick_up", "packed", "labelled", "arrive"]
        assert second.get(packing.id).data["checks"] == 2  # version 1's recheck, in the second deployment
        final = second.get(new.id)
        assert (final.version, final.data["packed_by"], final.data["kg"]) == (2, "v2", 12)
        assert transitions(second, new.id) == ["pick_up", "packed", "weighed", "labelled", "arrive"]
    finally:
        second.close()


def test_removing_version_1_while_its_runs_are_in_flight_fails_loudly_and_changes_nothing(empty_url):
    Database(empty_url).upgrade()
    first = Interlock(settings_for(empty_url, V1))
    run = first.start("upgrade_shipment", {})
    first.close()
    only_v2 = Interlock(settings_for(empty_url, "tests.upgrade_workflows_v2"))
    try:
        with pytest.raises(WorkflowNotFound):
            only_v2.send(run.id, "pick_up")
        after = only_v2.get(run.id)
        assert (after.version, after.state, after.last_seq) == (1, "waiting_pickup", 1)
    finally:
        only_v2.close()


# -- a database of revision 0001 with runs in flight -------------------------------------------------

OLD_ENGINE_SCRIPT = r"""
import json, sys
from sqlalchemy import select
from engine.config import Settings
from engine.models import tasks
from engine.runtime import Interlock
from engine.steps import StepExecutor

url, flag = sys.argv[1], sys.argv[2]
rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows="tests.upgrade_workflows",
                        lease_seconds=0.5))
executor = StepExecutor(rt)

def queued(run_id):
    with rt.db.engine.connect() as conn:
        return conn.execute(select(tasks.c.id).where(tasks.c.run_id == run_id, tasks.c.status == "queued")).scalar()

def picked_up(data):
    run = rt.start("upgrade_shipment", data)
    rt.send(run.id, "pick_up")
    return run.id

out = {"waiting": rt.start("upgrade_shipment", {}).id, "queued": picked_up({})}
out["claimed"] = picked_up({})
assert executor.claim(queued(out["claimed"])) is not None  # and then its worker died
out["rechecking"] = picked_up({"checks_needed": 2})
executor.execute(queued(out["rechecking"]))
out["in_transit"] = picked_up({})
executor.execute(queued(out["in_transit"]))
executor.execute(queued(out["in_transit"]))
out["failed"] = picked_up({"flag": flag})
executor.execute(queued(out["failed"]))
executor.execute(queued(out["failed"]))
cancelled = picked_up({})
rt.cancel(cancelled)
out["cancelled"] = cancelled
out["states"] = {name: [rt.get(i).status, rt.get(i).state] for name, i in out.items()}
import engine
out["engine"] = engine.__file__
rt.close()
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def engine_at_0001(tmp_path_factory):
    """The engine of the commit that added the first migration, in a directory of its own."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and this repository's history")
    commit = subprocess.run([git, "log", "--format=%H", "--diff-filter=A", "--", FIRST_MIGRATION], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.split()[-1]
    directory = tmp_path_factory.mktemp("engine-0001")
    archive = directory / "engine.tar"
    subprocess.run([git, "archive", "--format=tar", "-o", str(archive), commit, "engine", "migrations",
                    "alembic.ini"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(directory, filter="data")
    return directory


def test_runs_in_flight_at_revision_0001_finish_after_the_upgrade_to_head(empty_url, engine_at_0001, tmp_path):
    Database(empty_url).upgrade("0001")
    flag = tmp_path / "printer-jammed"
    flag.touch()
    env = {"PYTHONPATH": f"{engine_at_0001}:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", OLD_ENGINE_SCRIPT, empty_url, str(flag)], cwd=engine_at_0001,
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    old = json.loads(done.stdout.strip().splitlines()[-1])
    assert old.pop("engine").startswith(str(engine_at_0001))
    assert old["states"] == {
        "waiting": ["waiting", "waiting_pickup"], "queued": ["running", "packing"],
        "claimed": ["running", "packing"], "rechecking": ["waiting", "packing"],
        "in_transit": ["waiting", "in_transit"], "failed": ["failed", "labelling"],
        "cancelled": ["cancelled", "packing"]}

    database = Database(empty_url)
    assert database.current_revision() == "0001"
    database.upgrade()
    assert database.current_revision() == database.head_revision()
    # What later code keeps on the run row agrees with the rows written at 0001.
    with database.engine.connect() as conn:
        for row in conn.execute(select(runs)).mappings():
            live_timers = conn.execute(select(func.count()).select_from(timers).where(
                timers.c.run_id == row["id"], timers.c.status.in_(("armed", "suspended")))).scalar()
            assert row["open_timers"] == live_timers, dict(row)
    database.dispose()

    time.sleep(0.5)  # the claimed task's lease (0.5 s) has certainly ended
    rt = Interlock(settings_for(empty_url, V1_AND_V2))
    try:
        with rt.worker(4):
            rt.send(old["waiting"], "pick_up")
            flag.unlink()
            rt.retry(old["failed"])
            ids = [old[name] for name in ("waiting", "queued", "claimed", "rechecking", "in_transit", "failed")]
            for run_id in ids:
                wait_until(lambda r=run_id: rt.get(r).status == "succeeded", timeout=30,
                           message=f"run {run_id} to finish after the upgrade")
        for run_id in ids:
            final = rt.get(run_id)
            assert (final.version, final.state) == (1, "delivered")
            assert transitions(rt, run_id) == ["pick_up", "packed", "labelled", "arrive"]
            assert open_work(rt, run_id) == (0, 0), run_id  # nothing left queued, armed or suspended
        claimed = rt.history(old["claimed"])
        assert [h.detail["lost"] for h in claimed if h.kind == "step_failed"] == [True]
        rechecked = rt.history(old["rechecking"])
        assert [h.kind for h in rechecked].count("timer_fired") == 2  # the recheck, then the transit time
        failed = [h.kind for h in rt.history(old["failed"])]
        assert failed.index("failed") < failed.index("retried")
        with rt.db.read() as conn:
            its_timers = dict(conn.execute(select(timers.c.name, timers.c.status).where(
                timers.c.run_id == old["failed"])).all())
        # Suspended while it failed at 0001, re-armed by the retry, cancelled when the label was done.
        assert its_timers == {"label_deadline": "cancelled", "transit_time": "fired"}
        assert (rt.get(old["cancelled"]).status, open_work(rt, old["cancelled"])) == ("cancelled", (0, 0))
    finally:
        rt.close()
