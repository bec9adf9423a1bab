"""The chaos run in CI: `bench/chaos.py --quick` per broker keeps every invariant, the same run
with a deliberately broken reconciler fails, and the checks catch each kind of damage done to
a database on purpose."""

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

pytestmark = pytest.mark.slow
CHAOS = [sys.executable, str(ROOT / "bench" / "chaos.py")]
INVARIANTS = ["final states", "history contiguous", "transitions once per state entry",
              "step results applied once", "timers only in their state entry", "no step run twice without a fault"]


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
    assert result["runs"] == 150 and result["quiet"]
    assert [(i["name"], i["violations"]) for i in result["invariants"]] == [(name, 0) for name in INVARIANTS]
    assert all(i["checked"] > 0 for i in result["invariants"]), result["invariants"]
    # Every kind of fault was injected, and each one really was (none failed to inject).
    assert set(result["fault_counts"]) == {"kill_worker", "kill_api", "restart_broker", "drop_db"}
    assert not any("FAILED" in what for _, _, what, _ in result["faults"]), result["faults"]
    for name in INVARIANTS:
        assert f"ok   {name}" in done.stdout
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
    # Only the runs that needed a lost task recovered are stuck: nothing else is reported.
    assert [i["violations"] for i in result["invariants"][1:]] == [0, 0, 0, 0, 0]
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
