"""The engine as a user sees it: runs, steps, timers, triggers, errors and transactions.

Tests that need a worker use the ``interlock`` fixture (SQLite + in-memory broker,
PostgreSQL + Redis, PostgreSQL + RabbitMQ); the others run on SQLite and PostgreSQL.
"""

import json
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select, text

from engine import (CallbackError, InvalidData, InvalidTransition, RunNotActive, RunNotFound,
                    WorkflowNotFound)
from engine.models import metadata, runs, tasks, timers
from engine.runtime import Interlock
from tests import workflows as tw
from tests.conftest import wait_until

THIRTY_DAYS = timedelta(days=30).total_seconds()


@pytest.fixture(params=["sqlite", "postgres"])
def db_interlock(request):
    """An engine without a worker, where only the database matters."""
    return request.getfixturevalue(f"{'pg' if request.param == 'postgres' else 'sqlite'}_interlock")


# -- helpers ---------------------------------------------------------------------------


def rows(rt, table, run_id=None):
    query = select(table).order_by(*table.primary_key.columns)
    if run_id is not None:
        query = query.where(table.c.run_id == run_id)
    with rt.db.read() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def dump(rt, *extra_tables):
    """Every row of the engine's tables (and any named extra table), for before/after checks."""
    out = {t.name: rows(rt, t) for t in metadata.sorted_tables}
    with rt.db.read() as conn:
        for name in extra_tables:
            out[name] = sorted(tuple(r) for r in conn.execute(text(f"SELECT * FROM {name}")))
    return out


def entries(rt, run_id, kind=None):
    return [h for h in rt.history(run_id) if kind is None or h.kind == kind]


def steps_started(rt, run_id, step_name):
    return sum(1 for h in entries(rt, run_id, "step_started") if h.detail["step"] == step_name)


def has_status(rt, run_id, *statuses):
    return lambda: rt.get(run_id).status in statuses


def assert_contiguous(rt, run_id):
    run = rt.get(run_id)
    assert [h.seq for h in rt.history(run_id)] == list(range(1, run.last_seq + 1))


# -- running to the end ------------------------------------------------------------------


def test_pipeline_runs_every_step_once_and_succeeds(interlock):
    with interlock.worker(4):
        run = interlock.start("test_pipeline", {"n": 4})
        assert run.status == "running" and run.state == "fetching"
        wait_until(has_status(interlock, run.id, "succeeded"), message="pipeline to succeed")

    done = interlock.get(run.id)
    assert done.state == "done"
    assert done.finished_at is not None
    assert done.data == {"n": 4, "rows": [1, 2, 3, 4], "total": 1 + 2 + 3 + 4, "loaded": True}
    assert_contiguous(interlock, run.id)
    moves = [(h.event, h.source, h.target, h.cause) for h in entries(interlock, run.id, "transition")]
    assert moves == [("fetched", "fetching", "transforming", "step"),
                     ("transformed", "transforming", "loading", "step"),
                     ("loaded", "loading", "done", "step")]
    for name in ("fetch", "transform", "load"):
        assert steps_started(interlock, run.id, name) == 1
    assert {t["status"] for t in rows(interlock, tasks, run.id)} == {"succeeded"}
    assert tw.CALLS[run.id] == 1


def test_many_runs_progress_side_by_side(interlock):
    with interlock.worker(4):
        ids = [interlock.start("test_pipeline", {"n": i}).id for i in range(1, 11)]
        wait_until(lambda: all(interlock.get(i).status == "succeeded" for i in ids),
                   timeout=20, message="all pipelines to succeed")
    for n, run_id in enumerate(ids, start=1):
        assert interlock.get(run_id).data["total"] == n * (n + 1) // 2
        assert_contiguous(interlock, run_id)


def test_versions_run_side_by_side(db_interlock):
    latest = db_interlock.start("test_versioned")
    old = db_interlock.start("test_versioned", version=1)
    assert (latest.version, old.version) == (2, 1)
    # Each run keeps following the definition it started on.
    assert db_interlock.send(old.id, "go").status == "succeeded"
    moved = db_interlock.send(latest.id, "go")
    assert (moved.status, moved.state) == ("waiting", "reviewing")
    assert db_interlock.send(latest.id, "sign_off").status == "succeeded"
    assert [r.version for r in db_interlock.list_runs(workflow="test_versioned", status="succeeded").runs] \
        == [1, 2]


# -- starting, finding and paging ----------------------------------------------------------


def test_idempotency_key_returns_the_first_run(db_interlock):
    first = db_interlock.start("test_approval", {"amount": 1}, idempotency_key="order-17")
    again = db_interlock.start("test_approval", {"amount": 2}, idempotency_key="order-17")
    assert again.id == first.id
    assert again.data == {"amount": 1}
    assert db_interlock.get(first.id).last_seq == 1
    with db_interlock.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 1
    # The key is scoped to the workflow: another workflow may use it too.
    other = db_interlock.start("test_counter", idempotency_key="order-17")
    assert other.id != first.id


def test_list_runs_filters_by_business_key(db_interlock):
    mine = [db_interlock.start("test_approval", business_key="customer-1").id for _ in range(3)]
    db_interlock.start("test_approval", business_key="customer-2")
    db_interlock.start("test_approval")
    found = db_interlock.list_runs(business_key="customer-1")
    assert sorted(r.id for r in found.runs) == sorted(mine)
    assert all(r.business_key == "customer-1" for r in found.runs)
    assert found.next is None
    assert db_interlock.list_runs(business_key="customer-3").runs == []


def test_list_runs_pages_newest_first_without_gaps_or_repeats(db_interlock):
    started = []
    for i in range(7):
        if started:
            # Ids begin with their creation millisecond: let the clock move on so that
            # "newest first" has one right answer.
            wait_until(lambda: int(time.time() * 1000) > int(started[-1][:12], 16), message="the clock")
        started.append(db_interlock.start("test_approval", {"i": i}).id)
    db_interlock.start("test_counter")  # filtered out below

    seen, cursor, pages = [], None, 0
    while True:
        page = db_interlock.list_runs(workflow="test_approval", limit=3, cursor=cursor)
        pages += 1
        seen.extend(r.id for r in page.runs)
        if page.next is None:
            break
        assert page.next == page.runs[-1].id
        cursor = page.next
    assert pages == 3
    assert seen == list(reversed(started))
    assert [db_interlock.get(i).data["i"] for i in seen] == list(range(6, -1, -1))


def test_history_pages_by_seq(db_interlock):
    run = db_interlock.start("test_counter")
    for _ in range(5):
        db_interlock.send(run.id, "add")
    assert [h.seq for h in db_interlock.history(run.id, after=2, limit=2)] == [3, 4]
    assert [h.seq for h in db_interlock.history(run.id, after=6)] == []
    assert db_interlock.get(run.id).data == {"count": 5}


# -- refusing bad input ----------------------------------------------------------------


def test_invalid_input_raises_typed_errors_and_changes_nothing(db_interlock):
    rt = db_interlock
    waiting = rt.start("test_callbacks")
    finished = rt.start("test_versioned", version=1)
    rt.send(finished.id, "go")
    before = dump(rt)
    missing = uuid.uuid4().hex

    with pytest.raises(WorkflowNotFound) as exc:
        rt.start("no_such_workflow")
    assert exc.value.name == "no_such_workflow"
    with pytest.raises(WorkflowNotFound):
        rt.start("test_pipeline", version=9)

    for call in (lambda: rt.send(missing, "record"), lambda: rt.update_data(missing, {"a": 1}),
                 lambda: rt.cancel(missing), lambda: rt.retry(missing), lambda: rt.get(missing),
                 lambda: rt.history(missing)):
        with pytest.raises(RunNotFound) as exc:
            call()
        assert exc.value.run_id == missing

    with pytest.raises(InvalidTransition) as exc:
        rt.send(waiting.id, "finish")
    assert exc.value.states == ["new"]
    assert exc.value.allowed == ["record"]
    assert "finish" in str(exc.value) and "new" in str(exc.value) and "record" in str(exc.value)
    with pytest.raises(InvalidTransition):
        rt.send(waiting.id, "no_such_event")

    with pytest.raises(RunNotActive) as exc:
        rt.send(finished.id, "go")
    assert exc.value.status_value == "succeeded"
    with pytest.raises(RunNotActive):
        rt.retry(waiting.id)

    for call in (lambda: rt.start("test_pipeline", [1, 2]),
                 lambda: rt.start("test_pipeline", "text"),
                 lambda: rt.start("test_pipeline", {"when": datetime.now()}),
                 lambda: rt.start("test_pipeline", {"x": float("nan")}),
                 lambda: rt.start("test_pipeline", {1: "not a string key"}),
                 lambda: rt.start("test_pipeline", business_key=""),
                 lambda: rt.start("test_pipeline", idempotency_key="k" * 256),
                 lambda: rt.start("test_at_timer", {}),  # the timer needs data["fire_at"]
                 lambda: rt.start("test_at_timer", {"fire_at": "next tuesday"}),
                 lambda: rt.send(waiting.id, "record", ["not", "an", "object"]),
                 lambda: rt.send(waiting.id, ""),
                 lambda: rt.update_data(waiting.id, 5),
                 lambda: rt.list_runs(limit=0),
                 lambda: rt.list_runs(cursor="not-a-cursor")):
        with pytest.raises(InvalidData):
            call()

    assert dump(rt) == before


@pytest.fixture
def audit_table(db_interlock):
    """A table of the application's own, written by the workflow's callbacks."""
    with db_interlock.db.engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE {tw.AUDIT_TABLE} "
                          "(run_id VARCHAR(32) NOT NULL, note VARCHAR(200) NOT NULL)"))
    yield tw.AUDIT_TABLE
    with db_interlock.db.engine.begin() as conn:
        conn.execute(text(f"DROP TABLE {tw.AUDIT_TABLE}"))


def test_a_callback_error_rolls_back_the_whole_transition(db_interlock, audit_table):
    rt = db_interlock
    run = rt.start("test_callbacks", {"kept": 1})
    before = dump(rt, audit_table)

    with pytest.raises(CallbackError) as exc:
        rt.send(run.id, "record", {"explode": True, "note": "lost"})
    assert exc.value.event == "record"
    assert isinstance(exc.value.error, ValueError)
    # The callback's own write, its data change and the transition are all gone.
    assert dump(rt, audit_table) == before
    assert rt.get(run.id).state == "new"

    with pytest.raises(CallbackError) as exc:
        rt.start("test_callbacks", {"explode_on_start": True})
    assert exc.value.event == "start"
    assert dump(rt, audit_table) == before

    # Without the error the callback's write commits with the transition.
    moved = rt.send(run.id, "record", {"note": "kept"})
    assert moved.state == "recorded"
    # The event's data went to the callback, not into the run's data.
    assert moved.data == {"kept": 1, "recorded": True}
    with rt.db.read() as conn:
        assert conn.execute(text(f"SELECT run_id, note FROM {audit_table}")).all() == [(run.id, "kept")]


def test_a_guard_decides_whether_an_event_is_taken(db_interlock):
    run = db_interlock.start("test_guard")
    before = dump(db_interlock)
    with pytest.raises(InvalidTransition) as exc:
        db_interlock.send(run.id, "publish")
    assert exc.value.reason == "a guard did not hold"
    assert exc.value.allowed == []  # the only event is the one its guard refuses
    assert dump(db_interlock) == before

    db_interlock.update_data(run.id, {"title": "Hello"})
    published = db_interlock.send(run.id, "publish")
    assert (published.status, published.state) == ("succeeded", "published")


# -- failing, retrying, cancelling --------------------------------------------------------


def test_a_failing_step_fails_the_run_and_retry_runs_only_that_step(interlock, tmp_path):
    flag = tmp_path / "fail-while-here"
    flag.touch()
    with interlock.worker(4):
        run = interlock.start("test_flaky", {"flag": str(flag)})
        wait_until(has_status(interlock, run.id, "failed"), message="the run to fail")

        failed = interlock.get(run.id)
        assert failed.state == "working"
        assert failed.finished_at is not None
        failures = entries(interlock, run.id, "step_failed")
        spec = tw.Flaky.step_for("working")
        assert [f.detail["attempt"] for f in failures] == list(range(1, spec.max_attempts + 1))
        assert all("RuntimeError: flag file" in f.detail["traceback"] for f in failures)
        assert failures[-1].detail.get("final") is True
        assert entries(interlock, run.id)[-1].kind == "failed"
        assert [t["status"] for t in rows(interlock, tasks, run.id) if t["name"] == "work"] == ["failed"]
        with pytest.raises(RunNotActive):
            interlock.send(run.id, "worked")

        flag.unlink()
        retried = interlock.retry(run.id)
        assert retried.status == "running"
        wait_until(has_status(interlock, run.id, "succeeded"), message="the retried run to succeed")

    done = interlock.get(run.id)
    assert (done.state, done.data["worked"]) == ("done", True)
    assert steps_started(interlock, run.id, "get_ready") == 1
    assert steps_started(interlock, run.id, "work") == spec.max_attempts + 1
    assert len(entries(interlock, run.id, "retried")) == 1
    assert_contiguous(interlock, run.id)
    with pytest.raises(RunNotActive):
        interlock.retry(run.id)


def test_cancel_ends_the_run_and_everything_it_waits_for(interlock):
    waiting = interlock.start("test_approval")
    busy = interlock.start("test_pipeline")  # its first step is queued: no worker yet
    assert [t["status"] for t in rows(interlock, timers, waiting.id)] == ["armed"]

    cancelled = interlock.cancel(waiting.id, reason="customer changed their mind")
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None
    assert [t["status"] for t in rows(interlock, timers, waiting.id)] == ["cancelled"]
    last = entries(interlock, waiting.id)[-1]
    assert (last.kind, last.detail) == ("cancelled", {"reason": "customer changed their mind"})

    assert interlock.cancel(busy.id).status == "cancelled"
    assert [t["status"] for t in rows(interlock, tasks, busy.id)] == ["cancelled"]

    for call in (lambda: interlock.send(waiting.id, "approve"),
                 lambda: interlock.update_data(waiting.id, {"late": True}),
                 lambda: interlock.cancel(waiting.id)):
        with pytest.raises(RunNotActive):
            call()

    # A worker started now never runs the cancelled run's step (a later run's it does).
    with interlock.worker(4):
        control = interlock.start("test_pipeline")
        wait_until(has_status(interlock, control.id, "succeeded"), message="the control run")
    assert entries(interlock, busy.id, "step_started") == []
    assert interlock.get(busy.id).status == "cancelled"
    assert interlock.get(waiting.id).last_seq == last.seq


# -- timers ------------------------------------------------------------------------------


def test_a_short_timer_fires_soon_after_it_is_due(interlock):
    with interlock.worker(2):
        run = interlock.start("test_short_timer")
        [timer] = rows(interlock, timers, run.id)
        assert timer["due_at"] == pytest.approx(run.created_at + tw.ShortTimer.nudge.delay, abs=1e-6)
        wait_until(has_status(interlock, run.id, "succeeded"), timeout=5, message="the timer")

    done = interlock.get(run.id)
    assert done.state == "reminded"
    [fired] = entries(interlock, run.id, "timer_fired")
    [moved] = entries(interlock, run.id, "transition")
    assert (moved.event, moved.cause) == ("remind", "timer")
    assert timer["due_at"] <= moved.at < timer["due_at"] + 1.0
    assert 0 <= fired.detail["lag"] < 1.0
    assert [t["status"] for t in rows(interlock, timers, run.id)] == ["fired"]


def test_a_timer_whose_state_was_left_never_fires(interlock):
    with interlock.worker(2):
        answered = interlock.start("test_short_timer")
        interlock.send(answered.id, "answer")
        assert [t["status"] for t in rows(interlock, timers, answered.id)] == ["cancelled"]
        # A later run's timer, due after the first one would have been, fires...
        control = interlock.start("test_short_timer")
        wait_until(lambda: interlock.get(control.id).state == "reminded", timeout=5,
                   message="the control run's timer")
    # ...and by then the first one has still not.
    assert interlock.get(answered.id).state == "answered"
    assert [h.kind for h in entries(interlock, answered.id)] == ["started", "transition"]
    assert [t["status"] for t in rows(interlock, timers, answered.id)] == ["cancelled"]


def test_an_at_timer_fires_at_the_time_in_the_data(interlock):
    with interlock.worker(2):
        due = time.time() + 0.3
        iso_due = datetime.fromtimestamp(due, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        by_text = interlock.start("test_at_timer", {"fire_at": iso_due})
        by_number = interlock.start("test_at_timer", {"fire_at": due})
        overdue = interlock.start("test_at_timer", {"fire_at": due - 3600})
        called_off = interlock.start("test_at_timer", {"fire_at": due})
        interlock.send(called_off.id, "call_off")
        for run in (by_text, by_number, overdue):
            wait_until(lambda run=run: interlock.get(run.id).state == "fired", timeout=5,
                       message="the at() timer")

    for run in (by_text, by_number):
        [timer] = rows(interlock, timers, run.id)
        assert timer["due_at"] == pytest.approx(due, abs=1e-5)
        [moved] = entries(interlock, run.id, "transition")
        assert (moved.event, moved.cause) == ("fire", "timer")
        assert due - 0.001 <= moved.at < due + 1.0
    assert [t["status"] for t in rows(interlock, timers, called_off.id)] == ["cancelled"]
    assert interlock.get(called_off.id).state == "called_off"


def test_a_run_waiting_thirty_days_holds_only_a_timer_row(interlock):
    with interlock.worker(2):
        run = interlock.start("test_approval", {"amount": 250})
        assert run.status == "waiting"
        [timer] = rows(interlock, timers, run.id)
        assert timer["status"] == "armed"
        assert timer["due_at"] == pytest.approx(run.created_at + THIRTY_DAYS, abs=1e-6)
        assert rows(interlock, tasks, run.id) == []
        with interlock.db.read() as conn:
            open_tasks = conn.execute(select(func.count()).select_from(tasks).where(
                tasks.c.status.in_(["queued", "running"]))).scalar()
        assert open_tasks == 0
        assert interlock.get(run.id).status == "waiting"

        approved = interlock.send(run.id, "approve")
    assert (approved.status, approved.state) == ("succeeded", "approved")
    assert [t["status"] for t in rows(interlock, timers, run.id)] == ["cancelled"]


def test_a_final_state_can_end_the_run_as_failed(db_interlock):
    run = db_interlock.start("test_approval")
    expired = db_interlock.send(run.id, "expire")
    assert (expired.status, expired.state) == ("failed", "expired")
    # A run that ended this way has no failed step to retry.
    with pytest.raises(RunNotActive):
        db_interlock.retry(run.id)


# -- data triggers -----------------------------------------------------------------------


def test_a_data_trigger_fires_only_when_its_field_changes_and_the_condition_holds(db_interlock):
    rt = db_interlock
    run = rt.start("test_trigger", {"limit": 100})

    assert rt.update_data(run.id, {"total": 50}).state == "tracking"      # condition false
    assert rt.update_data(run.id, {"note": "x"}).state == "tracking"      # another field
    assert rt.update_data(run.id, {"limit": 10}).state == "tracking"      # total unchanged
    assert entries(rt, run.id, "transition") == []

    moved = rt.update_data(run.id, {"total": 150})
    assert moved.state == "review"
    [fired] = entries(rt, run.id, "transition")
    assert (fired.event, fired.cause) == ("over_budget", "trigger")
    assert fired.detail == {"trigger": "watch_total", "field": "total", "old": 50, "new": 150}

    # Not accepted in "review": the change is saved, nothing fires.
    assert rt.update_data(run.id, {"total": 500}).state == "review"
    assert rt.get(run.id).data["total"] == 500
    assert len(entries(rt, run.id, "transition")) == 1
    assert_contiguous(rt, run.id)


# -- the caller's transaction --------------------------------------------------------------


def test_start_in_the_callers_session_follows_its_transaction(interlock):
    published = []
    interlock.notifier.subscribe(lambda run_id, seq, status: published.append(run_id))
    with interlock.worker(4), interlock.session() as session:
        dropped = interlock.start("test_pipeline", session=session)
        session.rollback()
        with pytest.raises(RunNotFound):
            interlock.get(dropped.id)
        assert interlock.list_runs().runs == []

        # The same session, used again: this time the caller commits.
        kept = interlock.start("test_pipeline", session=session)
        # Not visible outside the caller's transaction, and nothing handed to the worker yet.
        with pytest.raises(RunNotFound):
            interlock.get(kept.id)
        assert published == []
        committed_at = time.time()
        session.commit()
        wait_until(has_status(interlock, kept.id, "succeeded"), message="the committed run")

    first_step = entries(interlock, kept.id, "step_started")[0]
    assert first_step.at >= committed_at
    assert dropped.id not in published and kept.id in published
    assert [r.id for r in interlock.list_runs().runs] == [kept.id]


def test_send_in_the_callers_session_follows_its_transaction(interlock):
    run = interlock.start("test_approval")
    with interlock.session() as session:
        assert interlock.send(run.id, "approve", {"by": "ann"}, session=session).state == "approved"
        session.rollback()
    still = interlock.get(run.id)
    assert (still.state, still.status, still.data) == ("pending", "waiting", {})
    assert [t["status"] for t in rows(interlock, timers, run.id)] == ["armed"]

    with pytest.raises(RuntimeError, match="the caller's own work failed"):
        with interlock.session() as session, session.begin():
            interlock.send(run.id, "approve", session=session)
            raise RuntimeError("the caller's own work failed")
    assert interlock.get(run.id).state == "pending"

    with interlock.session() as session, session.begin():
        interlock.send(run.id, "approve", {"by": "bob"}, session=session)
    done = interlock.get(run.id)
    assert (done.state, done.status, done.data) == ("approved", "succeeded", {})
    assert [e.data for e in interlock.history(run.id) if e.kind == "transition"] == [{"by": "bob"}]
    assert [t["status"] for t in rows(interlock, timers, run.id)] == ["cancelled"]
    assert_contiguous(interlock, run.id)


# -- delivery: at least once in, exactly once out ----------------------------------------


def _only_open_task(rt, run_id):
    [task] = [t for t in rows(rt, tasks, run_id) if t["status"] == "queued"]
    return task["id"]


def test_a_task_delivered_twice_runs_its_step_once(db_interlock):
    run = db_interlock.start("test_pipeline")  # no worker: the task waits in the table
    task_id = _only_open_task(db_interlock, run.id)

    db_interlock.executor.execute(task_id)
    db_interlock.executor.execute(task_id)

    assert tw.CALLS[run.id] == 1
    assert steps_started(db_interlock, run.id, "fetch") == 1
    assert [h.event for h in entries(db_interlock, run.id, "transition")] == ["fetched"]
    assert db_interlock.get(run.id).state == "transforming"


def test_a_task_delivered_to_two_workers_at_once_runs_its_step_once(db_interlock):
    run = db_interlock.start("test_pipeline")
    task_id = _only_open_task(db_interlock, run.id)
    barrier = threading.Barrier(4)
    errors = []

    def deliver():
        try:
            barrier.wait(5)
            db_interlock.executor.execute(task_id)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errors == []
    assert tw.CALLS[run.id] == 1
    assert [h.event for h in entries(db_interlock, run.id, "transition")] == ["fetched"]
    assert_contiguous(db_interlock, run.id)


def test_a_step_result_for_a_state_already_left_is_ignored(interlock):
    key, gate = uuid.uuid4().hex, threading.Event()
    tw.GATES[key] = gate
    try:
        with interlock.worker(2):
            run = interlock.start("test_gated", {"gate": key})
            wait_until(lambda: tw.CALLS.get(run.id) == 1, message="the step to start")
            skipped = interlock.send(run.id, "skip")
            assert (skipped.status, skipped.state) == ("succeeded", "skipped")
            gate.set()
            wait_until(lambda: entries(interlock, run.id, "ignored"), message="the late result")
    finally:
        gate.set()
        tw.GATES.pop(key, None)

    done = interlock.get(run.id)
    assert done.state == "skipped"
    assert [h.event for h in entries(interlock, run.id, "transition")] == ["skip"]
    [ignored] = entries(interlock, run.id, "ignored")
    assert ignored.detail["task"] == rows(interlock, tasks, run.id)[0]["id"]
    assert [t["status"] for t in rows(interlock, tasks, run.id)] == ["superseded"]
    assert_contiguous(interlock, run.id)


def test_a_step_whose_worker_died_is_run_again_once_its_lease_expires(interlock, tmp_path):
    run = interlock.start("test_flaky", {"flag": str(tmp_path / "absent")})
    task_id = _only_open_task(interlock, run.id)
    # Another worker process takes the task, runs it long enough to claim it, and dies.
    dead = Interlock(interlock.settings)
    try:
        assert dead.executor.load(task_id) is not None
        dead.executor.running[task_id].started_at -= dead.executor.claim_after
        dead.executor.keep_leases()
    finally:
        dead.close()
    claimed = rows(interlock, tasks, run.id)[0]
    assert claimed["status"] == "running"

    with interlock.worker(2):
        wait_until(has_status(interlock, run.id, "succeeded"), timeout=15,
                   message="the lost task to be recovered")

    [lost] = entries(interlock, run.id, "step_failed")
    assert lost.detail["lost"] is True and lost.detail["step"] == "get_ready"
    assert "WorkerLost" in lost.detail["error"]
    assert lost.at >= claimed["lease_until"]
    assert steps_started(interlock, run.id, "get_ready") == 2
    assert steps_started(interlock, run.id, "work") == 1
    assert_contiguous(interlock, run.id)


# -- re-entering a state ---------------------------------------------------------------------


def test_a_self_transition_re_arms_the_states_timers(db_interlock):
    rt = db_interlock
    run = rt.start("test_heartbeat")
    [first] = rows(rt, timers, run.id)
    rt.send(run.id, "ping")
    by_status = {t["status"]: t for t in rows(rt, timers, run.id)}
    assert set(by_status) == {"cancelled", "armed"}
    assert by_status["cancelled"]["id"] == first["id"]
    assert by_status["armed"]["due_at"] >= first["due_at"]
    assert by_status["armed"]["entry_seq"] == rt.get(run.id).last_seq > first["entry_seq"]
    assert_contiguous(rt, run.id)


def test_a_trigger_refused_by_its_guard_does_not_hide_the_others(db_interlock):
    rt = db_interlock
    run = rt.start("test_two_triggers")
    moved = rt.update_data(run.id, {"a": 1, "b": 1})
    assert moved.state == "took_b"
    assert [(h.event, h.cause) for h in entries(rt, run.id, "transition")] == [("go_b", "trigger")]


def test_due_timers_fire_in_batches_once_each_with_two_reconcilers_at_once(db_interlock):
    from engine.reconciler import Reconciler

    rt = db_interlock
    started = [rt.start("test_short_timer").id for _ in range(30)]
    with rt.db.write() as conn:
        conn.execute(timers.update().values(due_at=time.time() - 1))
    reconcilers = [Reconciler(rt), Reconciler(rt)]
    threads = [threading.Thread(target=r.fire_due_timers) for r in reconcilers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    while reconcilers[0].fire_due_timers():  # whatever a skipped lock left for a later pass
        pass
    for run_id in started:
        assert rt.get(run_id).state == "reminded"
        assert len(entries(rt, run_id, "timer_fired")) == 1
        assert_contiguous(rt, run_id)
    assert {t["status"] for t in rows(rt, timers)} == {"fired"}


def test_a_task_waiting_behind_a_long_queue_is_sent_again_less_and_less_often(sqlite_interlock):
    from engine.reconciler import Reconciler

    rt = sqlite_interlock
    run = rt.start("test_pipeline")  # no worker in this process: the task stays in the outbox
    task_id = _only_open_task(rt, run.id)
    queue = rt.broker.queues[rt.settings.queue]
    rt.dispatcher.delivers = True
    reconciler = Reconciler(rt)

    assert reconciler.send_outbox() == 1 and queue.qsize() == 1     # never sent: sent at once
    assert reconciler.send_outbox() == 0 and queue.qsize() == 1     # just sent: left alone

    def waited(total, since_sent):
        now = time.time()
        with rt.db.write() as conn:
            conn.execute(tasks.update().where(tasks.c.id == task_id).values(
                available_at=now - total, sent_at=now - since_sent))

    waited(100, 10)   # sent 10 s ago, after it had already waited 90 s: not yet
    assert reconciler.send_outbox() == 0 and queue.qsize() == 1
    waited(100, 60)   # sent 60 s ago, after it had waited 40 s: again
    assert reconciler.send_outbox() == 1 and queue.qsize() == 2


# -- data every database stores and every reader can follow ----------------------------------


@pytest.mark.parametrize("data, field", [
    (json.loads('{"a":' * 900 + "1" + "}" * 900), "data"),      # nested too deep to read back
    ({"k": "\ud800"}, "data"),                                    # a lone surrogate is not UTF-8
])
def test_data_no_reader_could_use_is_refused_and_nothing_is_stored(db_interlock, data, field):
    before = dump(db_interlock)
    with pytest.raises(InvalidData) as refused:
        db_interlock.start("test_counter", data)
    assert refused.value.field == field
    assert dump(db_interlock) == before


def test_a_business_key_with_nul_is_invalid_data(db_interlock):
    with pytest.raises(InvalidData) as refused:
        db_interlock.start("test_counter", business_key="a\x00b")
    assert refused.value.field == "business_key"


def test_an_event_refused_by_its_guard_is_not_listed_as_allowed(db_interlock):
    run = db_interlock.start("cargo", {"container": "C1"})   # no manifest: arrive's guard fails
    db_interlock.send(run.id, "depart")
    with pytest.raises(InvalidTransition) as refused:
        db_interlock.send(run.id, "arrive")
    assert refused.value.reason == "a guard did not hold"
    assert refused.value.allowed == ["declare_lost"]


def test_an_event_named_like_a_machine_attribute_is_an_unknown_event(db_interlock):
    run = db_interlock.start("test_counter")
    with pytest.raises(InvalidTransition) as refused:
        db_interlock.send(run.id, "configuration")
    assert refused.value.reason == "the workflow declares no such event"
