"""Steps of a parallel state's regions run at the same time; the state is done when every region
is (done.state), and a failing region can end it early."""

import pytest

from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS, wait_until


@pytest.fixture
def rt(settings):
    runtime = Interlock(settings.replace(workflows=f"{TEST_WORKFLOWS},tests.branch_workflows"))
    yield runtime
    runtime.close()


def ended(rt, run_id, timeout=20):
    return wait_until(lambda: (r := rt.get(run_id)).status not in ("running", "waiting") and r,
                      timeout=timeout, message="the run to end")


def attempts(rt, run_id):
    """(step, started at, ended at) of each applied attempt, from the history."""
    history = rt.history(run_id)
    started = {e.detail["task"]: e.at for e in history if e.kind == "step_started"}
    return {e.detail["step"]: (started[e.detail["task"]], started[e.detail["task"]] + e.detail["duration"])
            for e in history if e.kind in ("step_succeeded", "step_failed")}


def test_the_regions_steps_run_at_the_same_time_and_done_state_moves_on(rt):
    with rt.worker(4):
        run = rt.start("test_branches", {"filing_seconds": 1.0, "scanning_seconds": 1.0})
        assert sorted(run.state.split(",")) == ["filing", "scanning"]
        done = ended(rt, run.id)
    assert (done.status, done.state, done.data["scanned"]) == ("succeeded", "released", True)
    (file_start, file_end), (scan_start, scan_end) = attempts(rt, run.id).values()
    assert max(file_start, scan_start) < min(file_end, scan_end)  # they overlapped
    # The second region to finish completes the parallel state: done.state.checking is taken in
    # the same macrostep, so its transition lands in released.
    moves = [(e.event, e.source, e.target) for e in rt.history(run.id) if e.kind == "transition"]
    assert [target for _event, _source, target in moves] == [moves[0][2], "released"]
    assert {moves[0][0], moves[1][0]} == {"file", "scan"}


def test_a_failing_region_ends_the_parallel_state_without_waiting_for_the_others(rt):
    with rt.worker(4):
        run = rt.start("test_branches", {"customs_refuses": True, "filing_seconds": 0.1, "scanning_seconds": 3.0})
        done = ended(rt, run.id)
        assert (done.status, done.state) == ("failed", "refused")
        assert "scan_container" not in attempts(rt, run.id)  # refused before the scan finished
        # The scan's late result is recorded and changes nothing.
        wait_until(lambda: any(e.kind == "ignored" for e in rt.history(run.id)), timeout=10,
                   message="the scan's late result")
    assert rt.get(run.id).state == "refused"
