"""The chaos run in CI: `bench/chaos.py --quick` per broker keeps every invariant (child runs and
Map included), the same run with a deliberately broken reconciler fails, and the checks catch
each kind of damage done to a database on purpose."""

import json
import shutil
import sqlite3
import subprocess
import sys

import pytest

from bench.chaos_checks import check
from engine.registry import Registry
from engine.testing import Harness

from .conftest import require_server
from .processes import ROOT, clean_env

pytestmark = [pytest.mark.slow, pytest.mark.serial]  # it restarts Redis and RabbitMQ
CHAOS = [sys.executable, str(ROOT / "bench" / "chaos.py")]
INVARIANTS = ["final states", "history contiguous", "transitions once per state entry",
              "step results applied once", "timers only in their state entry", "no child orphaned",
              "fan-in counted once", "collected results match children", "map concurrency within its limit",
              "no timer fired while paused", "queued events applied once", "schedule ticks start one run each",
              "no schedule tick lost", "overlap policy kept", "retention deletes whole finished runs",
              "bulk cancel acts on each run once", "migration moves each run once",
              "migrated runs follow the new version", "a concurrency limit is never exceeded",
              "limit slots come back", "no step run twice without a fault"]


def chaos(tmp_path, *args, timeout=300):
    out = tmp_path / "chaos.json"
    done = subprocess.run([*CHAOS, *args, "--json", str(out)], cwd=ROOT, env=clean_env(), capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    results = json.loads(out.read_text())["results"] if out.exists() else []
    return done, results


def servers(broker):
    require_server("PostgreSQL", "127.0.0.1", 5432)
    require_server("Redis" if broker == "redis" else "RabbitMQ", "127.0.0.1", 6379 if broker == "redis" else 5672)


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_quick_chaos_run_keeps_every_invariant(broker, tmp_path):
    servers(broker)
    done, results = chaos(tmp_path, "--quick", "--broker", broker)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    [result] = results
    assert result["runs"] - result["children"] - result["scheduled"] == 150 and result["children"] > 0 and result["quiet"]
    assert [(i["name"], i["violations"]) for i in result["invariants"]] == [(name, 0) for name in INVARIANTS]
    assert all(i["checked"] > 0 for i in result["invariants"]), result["invariants"]
    # Every kind of fault was injected, and each one really was (none failed to inject).
    assert set(result["fault_counts"]) == {"kill_worker", "kill_api", "restart_broker", "drop_db"}
    assert not any("FAILED" in what for _, _, what, _ in result["faults"]), result["faults"]
    for name in INVARIANTS:
        assert f"ok   {name}" in done.stdout
    # The composed runs met what the composition invariants are about: maps ending both ways,
    # parents giving up on a crate they cancel and on one they abandon.
    outcomes = result["outcomes"]
    for outcome in ("chaos_shipment: loaded", "chaos_shipment: short", "chaos_dispatch: gave_up",
                    "chaos_loose_dispatch: gave_up", "chaos_crate: damaged"):
        assert outcomes.get(outcome, 0) > 0, outcomes
    # Duplicate executions are printed, each put down to an injected fault.
    duplicates = result["duplicates"]
    assert sum(duplicates["by_fault"].values()) == duplicates["extra_executions"]
    assert set(duplicates["by_fault"]) <= set(result["fault_counts"])
    assert "duplicate executions:" in done.stdout


def test_the_chaos_run_catches_a_broken_reconciler(tmp_path):
    """Workers whose reconciler never recovers lost tasks: activity tasks dropped by their worker and
    steps of a killed worker stay 'running' forever, and the run says so and exits 1."""
    servers("redis")
    done, results = chaos(tmp_path, "--quick", "--broker", "redis", "--runs", "40", "--load-seconds", "8",
                          "--faults", "1", "--fault-kinds", "kill_worker", "--settle-timeout", "10",
                          "--worker-module", "tests.chaos_broken_worker")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    [result] = results
    finals = result["invariants"][0]
    assert finals["name"] == "final states"
    assert finals["problems"].get("stuck (nothing pending)", 0) > 0, finals
    # Only the runs that needed a lost task recovered are stuck: nothing else is reported. (The
    # duplicate-execution check is left out here: a reconciler that never fails an expired lease
    # is a fault of its own that the check does not model.)
    others = {i["name"]: i["violations"] for i in result["invariants"][1:]}
    others.pop("no step run twice without a fault")
    assert others == {name: 0 for name in INVARIANTS[1:] if name != "no step run twice without a fault"}
    assert "FAIL final states" in done.stdout
    assert "stuck (nothing pending)" in done.stdout


# -- the checks, against a database damaged on purpose ---------------------------------------

@pytest.fixture(scope="module")
def finished_db(tmp_path_factory):
    """A SQLite database where a few runs of the example workflows ended normally."""
    directory = tmp_path_factory.mktemp("checks")
    with Harness("workflows", directory=str(directory)) as h:
        cargo = {"container": "C1", "manifest": ["x"], "check_every_seconds": 0.05, "arrives_after_checks": 2,
                 "customs_outages": 1}
        h.run("cargo", cargo, events={"booked": "depart", "at_port": "inspect"})
        h.run("orders", h.rt.registry.get("orders").demo_data)
        h.run("orders", {**h.rt.registry.get("orders").demo_data, "card": "declined"})
        lost = h.rt.start("cargo", {**cargo, "arrives_after_checks": 10**6, "chaos": {"plan": "lost"}})
        h.rt.send(lost.id, "depart")
        h.wait(lost.id, state="in_transit")
        h.fast_forward(lost.id, "timeout")
        assert h.wait(lost.id).state == "lost"
    return directory / "interlock.db"


def damaged(finished_db, tmp_path, *statements):
    path = tmp_path / "damaged.db"
    shutil.copy(finished_db, path)
    assert not finished_db.with_name(finished_db.name + "-wal").exists() or \
        finished_db.with_name(finished_db.name + "-wal").stat().st_size == 0
    conn = sqlite3.connect(path)
    with conn:
        for sql in statements:
            conn.execute(sql)
    conn.close()
    return check(f"sqlite:///{path}", Registry().load_modules(["workflows", "bench.chaos_workflows"]))


def problems(report):
    return {i.name: dict(i.problems) for i in report.invariants if i.problems}


def test_the_checks_pass_an_undamaged_database(finished_db, tmp_path):
    report = damaged(finished_db, tmp_path)
    assert report.runs == 4 and report.violations == 0, report.render()
    assert report.by_name("timers only in their state entry").checked >= 2  # a recheck and the lost timeout
    assert sorted(report.outcomes) == ["cargo: delivered", "cargo: lost", "orders: cancelled", "orders: completed"]


# Each damage, and what the checks must say about it (and nothing else).
CARGO_DONE = "(SELECT run_id FROM history WHERE event = 'cleared')"
DAMAGE = {
    "a history row lost": (
        [f"DELETE FROM history WHERE run_id = {CARGO_DONE} AND seq = 3"],
        {"history contiguous": {"gap or repeat in seq": 1}}),
    "a transition applied twice": (
        [(f"INSERT INTO history (run_id, seq, at, kind, event, source, target, cause) SELECT run_id, "
          f"seq + 100, at, kind, event, source, target, cause FROM history WHERE run_id = {CARGO_DONE} "
          "AND event = 'depart'"),
         ("UPDATE history SET seq = (SELECT max(seq) FROM history h WHERE h.run_id = history.run_id "
          "AND h.seq < 100) + 1 WHERE seq > 100"),
         f"UPDATE runs SET last_seq = last_seq + 1 WHERE id = {CARGO_DONE}"],
        {"transitions once per state entry": {"state entry left twice": 1},
         "final states": {"run row state differs from its history": 1}}),
    "a step result applied twice": (
        [("INSERT INTO history (run_id, seq, at, kind, event, cause, detail) SELECT run_id, "
          "(SELECT last_seq + 1 FROM runs WHERE id = h.run_id), at, kind, event, cause, detail FROM history h "
          "WHERE kind = 'step_succeeded' AND detail LIKE '%reserve_inventory%' AND run_id = "
          "(SELECT id FROM runs WHERE workflow = 'orders' AND status = 'succeeded')"),
         "UPDATE runs SET last_seq = last_seq + 1 WHERE workflow = 'orders' AND status = 'succeeded'"],
        {"step results applied once": {"task succeeded twice": 1, "step succeeded twice in one state entry": 1,
                                       "step outcome applied outside its state entry": 1,
                                       "step success without its transition": 1}}),
    "a timer fired after its state was left": (
        ["UPDATE timers SET entry_seq = 1 WHERE kind = 'timer' AND status = 'fired'"],
        {"timers only in their state entry": {"timer fired for a state entry already left": 1}}),
    "a run left waiting with nothing to wait for": (
        ["UPDATE runs SET status = 'waiting' WHERE state = 'lost'"],
        {"final states": {"stuck (nothing pending)": 1}}),
    "a run ended where its data does not lead": (
        ["UPDATE runs SET state = 'completed' WHERE workflow = 'orders' AND status = 'cancelled'",
         "UPDATE history SET target = 'completed' WHERE kind = 'transition' AND target = 'cancelled'",
         "UPDATE runs SET status = 'succeeded' WHERE workflow = 'orders' AND status = 'cancelled'"],
        {"final states": {"final state its data does not lead to": 1}}),
    "three calls of one account at once, two allowed": (
        ["CREATE TABLE chaos_limit_probe (task_id varchar(32), attempt integer, account varchar(16), pid integer, "
         "started_at double precision, ended_at double precision)",
         "INSERT INTO chaos_limit_probe VALUES ('t1', 1, 'A0', 1, 10.0, 12.0), ('t2', 1, 'A0', 2, 10.5, 12.5), "
         "('t3', 1, 'A0', 3, 11.0, 13.0), ('t4', 1, 'A1', 3, 11.0, 13.0), ('t5', 1, 'A0', 3, 12.6, 14.0)"],
        {"a concurrency limit is never exceeded": {"more attempts at once than the limit": 1}}),
    "a slot left held by a task that is gone": (
        ["INSERT INTO limit_slots (name, key, slot, task_id) VALUES ('chaos_call.call', 'A0', 0, 'gone'), "
         "('chaos_call.call', 'A0', 1, NULL)"],
        {"limit slots come back": {"a slot still held by an ended task": 1}}),
    "a final run with a task still queued": (
        ["UPDATE tasks SET status = 'queued' WHERE name = 'ship'"],
        {"final states": {"final run with an open task": 1},
         "step results applied once": {"task applied but not marked succeeded": 1}}),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_the_checks_catch_a_damaged_database(finished_db, tmp_path, damage):
    statements, expected = DAMAGE[damage]
    report = damaged(finished_db, tmp_path, *statements)
    assert problems(report) == expected, report.render()
    assert "FAIL" in report.render()


# -- child runs and Map: the composition invariants, against a database damaged on purpose ----

@pytest.fixture(scope="module")
def composed_db(tmp_path_factory):
    """A SQLite database where two maps ended (on_done with one damaged crate tolerated, on_error
    with two), a dispatch got its crate, and two gave up on theirs (one cancelled, one abandoned)."""
    import time

    directory = tmp_path_factory.mktemp("composed")
    with Harness("workflows", "bench.chaos_workflows", directory=str(directory)) as h:
        def crates(prefix, damaged):
            return [{"crate": f"{prefix}{n}", "fail": n in damaged, "work_seconds": 0.02} for n in range(5)]

        def crate(name, seconds=0.0):
            return {"crate": name, "fail": False, "work_seconds": seconds}

        assert h.run("chaos_shipment", {"crates": crates("A", {1})}).state == "loaded"
        assert h.run("chaos_shipment", {"crates": crates("B", {0, 1})}).state == "short"
        assert h.run("chaos_dispatch", {"crate": crate("C"), "crate_deadline": time.time() + 3600}).state == "dispatched"
        for workflow, name in (("chaos_dispatch", "E"), ("chaos_loose_dispatch", "D")):
            late = {"crate": crate(name, seconds=1.0), "crate_deadline": time.time() + 0.2, "deadline_races": True}
            assert h.run(workflow, late).state == "gave_up"
        deadline = time.monotonic() + 15
        while any(r.status in ("running", "waiting") for r in h.rt.list_runs(limit=100).runs):
            assert time.monotonic() < deadline, "the abandoned crate did not end"
            time.sleep(0.05)
    return directory / "interlock.db"


def crate_run(name):
    return f"(SELECT id FROM runs WHERE workflow = 'chaos_crate' AND json_extract(data, '$.crate') = '{name}')"


def history_copied(run_id_sql, kind):
    """A history row of ``kind`` recorded once more, at the end of the run's history."""
    return [(f"INSERT INTO history (run_id, seq, at, kind, event, source, target, cause, detail) SELECT run_id, "
             f"(SELECT last_seq + 1 FROM runs WHERE id = h.run_id), at, kind, event, source, target, cause, detail "
             f"FROM history h WHERE run_id = {run_id_sql} AND kind = '{kind}' ORDER BY seq LIMIT 1"),
            f"UPDATE runs SET last_seq = last_seq + 1 WHERE id = {run_id_sql}"]


LOADED = "(SELECT id FROM runs WHERE workflow = 'chaos_shipment' AND state = 'loaded')"
COMPOSED_DAMAGE = {
    "a child left running after its parent gave up on it": (
        [f"UPDATE runs SET status = 'running', finished_at = NULL WHERE id = {crate_run('E')}"],
        {"no child orphaned": {"child active after its parent ended": 1},
         "final states": {"stuck (nothing pending)": 1}}),
    "a child never told its parent gave up": (
        ["DELETE FROM signals WHERE kind = 'parent_left'",
         f"UPDATE runs SET finished_at = finished_at + 5 WHERE id = {crate_run('E')}"],
        {"no child orphaned": {"child not told its parent left": 1}}),
    "an abandoned child still running (allowed by its parent's policy)": (
        [f"UPDATE runs SET status = 'running', finished_at = NULL WHERE id = {crate_run('D')}"],
        {"final states": {"stuck (nothing pending)": 1}}),
    "a child's end counted twice by the map": (
        ["UPDATE maps SET succeeded = succeeded + 1 WHERE status = 'succeeded'"],
        {"fan-in counted once": {"map counters disagree with its items": 1}}),
    "a child's end recorded twice": (
        history_copied(LOADED, "child_ended"),
        {"fan-in counted once": {"child's end recorded twice": 1, "items ended disagree with the fan-in history": 1}}),
    "a signal never applied": (
        ["UPDATE signals SET status = 'pending' WHERE id = (SELECT min(id) FROM signals WHERE kind = 'child_ended')"],
        {"fan-in counted once": {"signal left pending": 1}}),
    "a collected result that is not its child's": (
        [f"UPDATE runs SET data = json_set(data, '$.packed[3].packed_by', 'someone else') WHERE id = {LOADED}"],
        {"collected results match children": {"result differs from its child's final data": 1}}),
    "a child() result that is not its child's": (
        ["UPDATE runs SET data = json_set(data, '$.crate.packed_by', 'someone else') WHERE state = 'dispatched'"],
        {"collected results match children": {"result differs from the child's final data": 1}}),
    "three crates of a map at once, two allowed": (
        # The parent's count of A0's end lost: A0 still runs, as the parent counts, when A2 starts.
        [f"UPDATE history SET source = 'elsewhere' WHERE kind = 'child_ended' AND run_id = {LOADED} "
         f"AND json_extract(detail, '$.child') = {crate_run('A0')}"],
        {"map concurrency within its limit": {"more children at once than max_concurrency": 1}}),
}


def test_the_composition_checks_pass_an_undamaged_database(composed_db, tmp_path):
    report = damaged(composed_db, tmp_path)
    assert report.violations == 0, report.render()
    # 5 + 2 or 3 crates in the maps (B0 and B1 fail; B2 starts only if their ends reached the map
    # in two transactions, and is then cancelled; B3-B4 never start), 3 dispatched.
    assert report.children in (10, 11)
    checked = {i.name: i.checked for i in report.invariants}
    assert checked["no child orphaned"] == report.children and checked["map concurrency within its limit"] == 2
    assert checked["collected results match children"] == 3  # two maps, one child() result
    assert "1 outlived a parent that abandons them" in report.render()


@pytest.mark.parametrize("damage", list(COMPOSED_DAMAGE))
def test_the_composition_checks_catch_a_damaged_database(composed_db, tmp_path, damage):
    statements, expected = COMPOSED_DAMAGE[damage]
    report = damaged(composed_db, tmp_path, *statements)
    assert problems(report) == expected, report.render()
    assert "FAIL" in report.render()


def test_an_attempt_lost_with_its_worker_is_put_down_to_the_fault_that_cut_it_short(finished_db, tmp_path):
    # The loss is recorded when the lease runs out, seconds after the kill: the attempt's start
    # (the record's time less its duration) is what the fault must be near.
    from bench.duplicates import attribute, count

    path = tmp_path / "lost.db"
    shutil.copy(finished_db, path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO history (run_id, seq, at, kind, cause, detail) SELECT id, last_seq + 1, 1000.0, "
            "'step_failed', 'step', '{\"task\": \"t1\", \"step\": \"ship\", \"attempt\": 1, \"duration\": 4.5, "
            "\"lost\": true, \"error\": \"WorkerLost: the worker stopped renewing its lease\"}' "
            "FROM runs WHERE workflow = 'orders' AND status = 'succeeded'")
    conn.close()
    executions = count(f"sqlite:///{path}")
    [(_run, task, attempt, started_at)] = executions.lost
    assert (task, attempt, started_at) == ("t1", 1, 995.5)
    kill = (0.0, "kill_worker", "SIGKILL worker 0", 0.9, 997.0, 997.9)  # between the start and the record
    assert attribute(executions, [kill], resend_after=10.0).violations == 0
    assert attribute(executions, [], resend_after=10.0).problems == {
        "attempt lost with its worker with no fault near it": 1}


# -- moving runs between versions: the migration invariants, against a database damaged on purpose

@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory):
    """A SQLite database where voyages started on version 1 were planned for version 2 (at sea
    and berthed ones moved, a held one could not, one moved on after the plan, one loading moved
    with its step outstanding), a voyage started after the plan stayed, and all of them ended."""
    import time

    from engine import batches, migration_plans

    directory = tmp_path_factory.mktemp("migrated")
    with Harness("workflows", "bench.chaos_workflows", directory=str(directory)) as h:
        rt = h.rt

        def voyage(route, **extra):
            return rt.start("chaos_voyage", {"route": route, **extra}, version=1).id

        sea, berth, held, moved_on = voyage("sail"), voyage("berth"), voyage("detain"), voyage("sail")
        slow = voyage("sail", work_seconds=3)
        for run_id, state in ((sea, "at_sea"), (berth, "berthed"), (held, "held"), (moved_on, "at_sea")):
            h.wait(run_id, state=state)
        plan = migration_plans.create(rt, "chaos_voyage", 1, 2, mapping={"at_sea": "sailing"})
        assert plan["counts"] == {"clean": 2, "mapped": 2, "impossible": 1}
        rt.send(moved_on, "arrive")
        batch = migration_plans.apply(rt, plan["id"])
        deadline = time.monotonic() + 15
        while batches.get(rt, batch["id"])["status"] != "done":
            assert time.monotonic() < deadline, "the migration did not end"
            time.sleep(0.05)
        later = voyage("berth")
        h.wait(later, state="berthed")
        h.wait(slow, state="sailing")
        for run_id, event in ((sea, "arrive"), (berth, "arrive"), (held, "release"), (later, "arrive"),
                              (slow, "arrive")):
            rt.send(run_id, event)
        h.wait(held, state="at_sea")
        rt.send(held, "arrive")
        ended = {run_id: h.wait(run_id) for run_id in (sea, berth, held, moved_on, later, slow)}
    assert sorted((r.version, r.state) for r in ended.values()) == [(1, "arrived")] * 3 + [(2, "moored")] * 3
    return directory / "interlock.db"


MOVED_SEA = ("(SELECT id FROM runs WHERE version = 2 AND json_extract(data, '$.route') = 'sail' "
             "AND json_extract(data, '$.work_seconds') IS NULL)")
HELD = "(SELECT id FROM runs WHERE json_extract(data, '$.route') = 'detain')"
MIGRATION_DAMAGE = {
    "a run moved twice": (
        history_copied(MOVED_SEA, "migrated"),
        {"migration moves each run once": {"a run moved twice by one plan": 1, "a run migrated more than once": 1,
                                           "applied items differ from the migrated entries": 1},
         "final states": {"run row state differs from its history": 1}}),
    "a run the plan judged impossible moved": (
        [f"UPDATE history SET kind = 'migrated', detail = (SELECT detail FROM history WHERE kind = 'migrated' "
         f"LIMIT 1) WHERE run_id = {HELD} AND kind = 'transition' AND event = 'release'"],
        {"migration moves each run once": {"a run moved that the plan judged impossible": 1,
                                           "a run moved by no plan that judged it movable": 1,
                                           "applied items differ from the migrated entries": 1},
         "transitions once per state entry": {"transition from a state the run was not in": 1}}),
    "the old delay kept": (
        [f"UPDATE timers SET due_at = due_at - 3600 WHERE name = 'overdue' AND run_id = {MOVED_SEA}"],
        {"migrated runs follow the new version": {"a timer not armed as the new version declares": 1}}),
    "a timer left in the old state": (
        [f"UPDATE timers SET state = 'at_sea' WHERE name = 'overdue' AND run_id = {MOVED_SEA}"],
        {"migrated runs follow the new version": {"a moved run without its new version's timer": 1}}),
    "a timer left armed in the old state": (
        [f"UPDATE timers SET state = 'at_sea', status = 'armed' WHERE name = 'overdue' AND run_id = {MOVED_SEA}"],
        {"migrated runs follow the new version": {"a moved run without its new version's timer": 1,
                                                  "an open task or timer in a state the new version lacks": 1},
         "final states": {"final run with an armed timer": 1}}),
    "the new version's timer not armed": (
        ["DELETE FROM timers WHERE name = 'demurrage'"],
        {"migrated runs follow the new version": {"a moved run without its new version's timer": 1}}),
    "an applied item lost": (
        [f"DELETE FROM batch_items WHERE run_id = {MOVED_SEA}"],
        {"migration moves each run once": {"batch counters differ from its items": 1,
                                           "applied items differ from the migrated entries": 1}}),
    "a moved run back on the old version": (
        [f"UPDATE runs SET version = 1 WHERE id = {MOVED_SEA}"],
        {"migration moves each run once": {"a moved run not on the new version": 1},
         "migrated runs follow the new version": {"a state of no version the run was on at seq 6": 2,
                                                  "a migrated run finished outside the new version's final states": 1,
                                                  "a moved run without its new version's timer": 1}}),
}


def test_the_migration_checks_pass_an_undamaged_database(migrated_db, tmp_path):
    report = damaged(migrated_db, tmp_path)
    assert report.violations == 0, report.render()
    assert report.by_name("migration moves each run once").checked == 5
    assert report.by_name("migrated runs follow the new version").checked == 3
    assert sorted(report.outcomes) == ["chaos_voyage: arrived", "chaos_voyage: moored"]


@pytest.mark.parametrize("damage", list(MIGRATION_DAMAGE))
def test_the_migration_checks_catch_a_damaged_database(migrated_db, tmp_path, damage):
    statements, expected = MIGRATION_DAMAGE[damage]
    report = damaged(migrated_db, tmp_path, *statements)
    assert problems(report) == expected, report.render()
    assert "FAIL" in report.render()
