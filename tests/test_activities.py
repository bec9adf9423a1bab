"""Activities: tasks external workers receive, heartbeat and answer by token (SQS semantics).

Engine-level tests call ``engine.activities`` on SQLite and PostgreSQL; the end-to-end tests
run ``interlock serve`` as a real process and an ``ActivityPoller`` in a thread against it.
"""

import socket
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, update

from engine import State, Workflow, activity, step
from engine import activities as act
from engine.client import ActivityPoller, ApiError, Client, StaleToken
from engine.errors import DefinitionError, InvalidData, InvalidTransition, StaleTaskToken
from engine.explain import explain
from engine.models import metadata, tasks
from engine.reconciler import Reconciler
from engine.timeparse import parse_time

from .conftest import TEST_WORKFLOWS, _runtime, wait_until
from .processes import Process, env_for

WORKFLOWS = TEST_WORKFLOWS + ",tests.activity_workflows"
CONTAINER = {"container": "MSCU1234565"}
# Visibility timeout of tasks a test answers and then waits out: time to answer, little to wait.
VT = 1.0


@pytest.fixture(params=["sqlite", "postgres"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    yield from _runtime(settings.replace(workflows=WORKFLOWS))


@pytest.fixture
def pg_rt(pg_settings):
    yield from _runtime(pg_settings.replace(workflows=WORKFLOWS))


def dump(rt) -> dict:
    """Every row of every table, to show that something changed nothing."""
    with rt.db.read() as conn:
        return {table.name: sorted((dict(row._mapping) for row in conn.execute(select(table))), key=repr)
                for table in metadata.sorted_tables}


def task_row(rt, run_id) -> dict:
    with rt.db.read() as conn:
        return dict(conn.execute(select(tasks).where(tasks.c.run_id == run_id, tasks.c.kind == "activity")
                                 .order_by(tasks.c.created_at.desc())).mappings().first())


def kinds(rt, run_id) -> list[str]:
    return [h.kind for h in rt.history(run_id)]


def receive_one(rt, name="customs_review", **kwargs):
    received = act.receive(rt, name, **kwargs)
    assert len(received) == 1, received
    return received[0]


def expire(rt, task):
    """Wait (on the clock, not a guess) until the task's lease has ended."""
    wait_until(lambda: time.time() > task.lease_until + 0.01, message="the visibility timeout to end")


# -- definitions ------------------------------------------------------------------------------

def test_an_activity_is_declared_beside_steps_and_defaults_to_the_only_event_out():
    from tests.activity_workflows import Clearance, WarehousePick

    spec = Clearance.activity_for("review")
    assert (spec.name, spec.kind, spec.retries, spec.visibility_timeout) == ("customs_review", "activity", 2, 30.0)
    assert (spec.on_error, spec.default, spec.max_attempts) == ("escalate", "approve", 3)
    assert Clearance.step_for("review") is spec and Clearance.step_for("releasing").kind == "step"
    assert WarehousePick.activity_for("picking").default == "picked"
    assert WarehousePick.activity_for("picking").name == "warehouse.pick"


@pytest.mark.parametrize("body, message", [
    ("work = activity(a, name='x')\n    @step(a)\n    def also(self, run): pass", "both a step"),
    ("one = activity(a)\n    two = activity(a)", "two activities"),
    ("work = activity(b)", "final state"),
    ("work = activity('nowhere')", "unknown state"),
    ("work = activity(a, on_error='nope')", "unknown event"),
    ("work = activity(a, default='nope')", "unknown event"),
])
def test_activity_definitions_are_checked_at_import(body, message):
    source = (f"class W(Workflow):\n    name, version = 'w', 1\n    a = State(initial=True)\n"
              f"    b = State(final=True)\n    go = a.to(b)\n    {body}\n")
    with pytest.raises(DefinitionError, match=message):
        exec(source, {"Workflow": Workflow, "State": State, "activity": activity, "step": step})


@pytest.mark.parametrize("kwargs", [{"name": "has space"}, {"name": ""}, {"retries": -1},
                                    {"visibility_timeout": 0}, {"visibility_timeout": timedelta(days=1)}])
def test_bad_activity_arguments_are_definition_errors(kwargs):
    with pytest.raises(DefinitionError):
        activity("a", **kwargs)


# -- the engine ---------------------------------------------------------------------------------

def test_entering_the_state_queues_an_activity_task_that_is_never_sent(rt):
    run = rt.start("clearance", CONTAINER)
    row = task_row(rt, run.id)
    assert (row["kind"], row["name"], row["status"], row["attempt"], row["max_attempts"]) == (
        "activity", "customs_review", "queued", 0, 3)
    assert row["sent_at"] is None and row["token"] is None
    assert rt.get(run.id).status == "running"
    assert "activity customs_review to be picked up" in explain(rt, run.id)["waiting_for"]
    with rt.worker(2):  # a worker's outbox sends steps, never activities
        rt.worker().reconciler.tick()
        assert task_row(rt, run.id)["sent_at"] is None


def test_receive_then_complete_moves_the_run_on(rt):
    run = rt.start("clearance", CONTAINER, business_key="MSCU1234565")
    task = receive_one(rt, max_messages=10, visibility_timeout=60)
    assert (task.run_id, task.workflow, task.version, task.state, task.activity) == (
        run.id, "clearance", 1, "review", "customs_review")
    assert (task.data, task.business_key, task.attempt, task.max_attempts) == (CONTAINER, "MSCU1234565", 1, 3)
    assert task.lease_until == pytest.approx(time.time() + 60, abs=5)
    assert act.receive(rt, "customs_review") == []  # invisible while leased
    row = task_row(rt, run.id)
    assert (row["status"], row["token"], row["visibility_timeout"]) == ("running", task.token, 60.0)

    after = act.complete(rt, task.token, data={"officer": "ada"})  # the default event: approve
    assert (after.state, after.data["officer"]) == ("releasing", "ada")
    with rt.worker(2):
        wait_until(lambda: rt.get(run.id).status == "succeeded", message="the release step")
    final = rt.get(run.id)
    assert (final.state, final.data["gate_pass"]) == ("released", "GP-MSCU1234565")
    history = rt.history(run.id)
    done = next(h for h in history if h.kind == "step_succeeded")
    assert (done.event, done.detail["step"], done.detail["attempt"]) == ("approve", "customs_review", 1)
    assert [h.event for h in history if h.kind == "transition"] == ["approve", "done"]


def test_receive_uses_the_declared_visibility_timeout_and_takes_at_most_max_messages(rt):
    for _ in range(3):
        rt.start("clearance", CONTAINER)
    first = act.receive(rt, "customs_review", max_messages=2)
    assert len(first) == 2 and {t.visibility_timeout for t in first} == {30.0}
    assert len(act.receive(rt, "customs_review", max_messages=10)) == 1
    assert act.receive(rt, "warehouse.pick", max_messages=10) == []


def test_an_event_the_run_refuses_changes_nothing_and_the_attempt_can_still_fail(rt):
    run = rt.start("clearance", CONTAINER)
    task = receive_one(rt)
    before = dump(rt)
    with pytest.raises(InvalidTransition):
        act.complete(rt, task.token, "done")
    with pytest.raises(InvalidData):
        act.complete(rt, task.token, data=["not", "an", "object"])
    assert dump(rt) == before
    act.fail(rt, task.token, "ValueError: no such event")
    assert task_row(rt, run.id)["status"] == "queued"


def test_complete_with_another_event_takes_it(rt):
    run = rt.start("clearance", CONTAINER)
    act.complete(rt, receive_one(rt).token, "refuse", {"reason": "undeclared goods"})
    final = rt.get(run.id)
    assert (final.status, final.state, final.data["reason"]) == ("failed", "refused", "undeclared goods")


def test_a_failed_task_is_received_again_when_its_visibility_timeout_ends_not_before(rt):
    run = rt.start("clearance", CONTAINER)
    first = receive_one(rt, visibility_timeout=VT)
    act.fail(rt, first.token, "RuntimeError: scanner offline", "Traceback ...")
    failed = [h for h in rt.history(run.id) if h.kind == "step_failed"]
    assert failed[-1].detail["error"] == "RuntimeError: scanner offline"
    assert failed[-1].detail["traceback"] == "Traceback ..."
    assert 0 < failed[-1].detail["retry_in"] <= VT
    assert act.receive(rt, "customs_review") == []
    second = receive_one(rt, wait_time_seconds=5)
    assert task_row(rt, run.id)["claimed_at"] >= first.lease_until
    assert second.attempt == 2 and second.token != first.token


def test_after_the_last_attempt_the_run_takes_on_error(rt):
    run = rt.start("clearance", CONTAINER)
    for attempt in (1, 2, 3):
        task = receive_one(rt, wait_time_seconds=5, visibility_timeout=VT)
        assert task.attempt == attempt
        act.fail(rt, task.token, f"attempt {attempt} failed")
    final = rt.get(run.id)
    assert (final.status, final.state) == ("failed", "escalated")
    assert task_row(rt, run.id)["status"] == "failed"


def test_without_on_error_the_run_fails_and_retry_queues_the_activity_again(rt):
    run = rt.start("warehouse_pick", {"order": "A-1"})
    for _ in range(2):
        act.fail(rt, receive_one(rt, "warehouse.pick", wait_time_seconds=5, visibility_timeout=VT).token,
                 "shelf empty")
    assert rt.get(run.id).status == "failed"
    assert act.receive(rt, "warehouse.pick") == []
    rt.retry(run.id)
    again = receive_one(rt, "warehouse.pick")
    assert again.attempt == 1
    assert act.complete(rt, again.token).status == "succeeded"


def test_an_expired_lease_is_recovered_by_the_reconciler_and_received_again(rt):
    run = rt.start("clearance", CONTAINER)
    first = receive_one(rt, visibility_timeout=0.2)
    expire(rt, first)
    before = dump(rt)
    for call in (lambda: act.complete(rt, first.token), lambda: act.heartbeat(rt, first.token)):
        with pytest.raises(StaleTaskToken) as caught:
            call()
        assert caught.value.reason == "expired"
    assert dump(rt) == before
    Reconciler(rt).tick()
    lost = [h for h in rt.history(run.id) if h.kind == "step_failed"]
    assert lost[-1].detail["lost"] is True
    assert lost[-1].detail["error"].startswith("VisibilityTimeout")
    second = receive_one(rt)
    assert second.attempt == 2


def test_a_worker_recovers_expired_leases_within_a_poll_interval(rt):
    run = rt.start("clearance", CONTAINER)
    with rt.worker(2):
        for attempt in (1, 2, 3):
            task = receive_one(rt, wait_time_seconds=5, visibility_timeout=0.1)
            assert task.attempt == attempt
        wait_until(lambda: rt.get(run.id).status == "failed", message="the third lost attempt")
    assert rt.get(run.id).state == "escalated"
    lost = [h for h in rt.history(run.id) if h.kind == "step_failed" and h.detail.get("lost")]
    assert len(lost) == 3


def test_a_heartbeat_extends_the_lease(rt):
    run = rt.start("clearance", CONTAINER)
    task = receive_one(rt, visibility_timeout=VT)
    lease = act.heartbeat(rt, task.token, visibility_timeout=30)
    assert lease["visibility_timeout"] == 30 and lease["lease_until"] > task.lease_until + 20
    expire(rt, task)  # the first lease would have ended by now
    Reconciler(rt).tick()
    assert task_row(rt, run.id)["status"] == "running"
    assert act.heartbeat(rt, task.token)["visibility_timeout"] == 30  # the attempt's current one
    assert act.complete(rt, task.token).state == "releasing"


def test_stale_unknown_and_repeated_tokens_change_nothing(rt):
    run = rt.start("clearance", CONTAINER)
    old = receive_one(rt, visibility_timeout=VT)
    act.fail(rt, old.token, "first try")
    current = receive_one(rt, wait_time_seconds=5)
    other = rt.start("clearance", CONTAINER)
    cancelled = receive_one(rt)
    rt.cancel(other.id)

    def attempts(token):
        return [lambda: act.complete(rt, token), lambda: act.fail(rt, token, "x"),
                lambda: act.heartbeat(rt, token)]

    # A task received again has a new token: the old one names nothing any more.
    cases = [("unknown", "no-such-token"), ("unknown", "x" * 500), ("unknown", old.token),
             ("cancelled", cancelled.token)]
    act.complete(rt, current.token, "refuse")
    cases.append(("succeeded", current.token))
    before = dump(rt)
    for reason, token in cases:
        for call in attempts(token):
            with pytest.raises(StaleTaskToken) as caught:
                call()
            assert caught.value.reason == reason, token
            assert caught.value.status == 410
    assert dump(rt) == before
    assert rt.get(run.id).state == "refused"


def test_a_task_whose_run_left_the_state_is_superseded(rt):
    run = rt.start("clearance", CONTAINER)
    task = receive_one(rt)
    rt.send(run.id, "escalate")
    assert task_row(rt, run.id)["status"] == "superseded"
    with pytest.raises(StaleTaskToken) as caught:
        act.complete(rt, task.token)
    assert caught.value.reason == "superseded"


def test_long_poll_returns_empty_after_the_wait(rt):
    began = time.monotonic()
    assert act.receive(rt, "customs_review", wait_time_seconds=0.3) == []
    assert 0.3 <= time.monotonic() - began < 3


def test_long_poll_is_woken_by_a_new_task_not_by_its_recheck(rt, monkeypatch):
    monkeypatch.setattr(act, "RECHECK_SECONDS", 60.0)
    got, sent = [], threading.Event()

    def receiver():
        sent.set()
        got.extend(act.receive(rt, "customs_review", wait_time_seconds=20))

    thread = threading.Thread(target=receiver)
    thread.start()
    sent.wait()
    wait_until(lambda: act._wakeup(rt)._waiting, message="the receiver to wait")
    began = time.monotonic()
    run = rt.start("clearance", CONTAINER)
    thread.join(20)
    assert [t.run_id for t in got] == [run.id]
    assert time.monotonic() - began < 10  # woken by the commit, long before the 20 s wait or a recheck


@pytest.mark.parametrize("kwargs, field", [
    ({"name": "bad name"}, "name"), ({"max_messages": 0}, "max_messages"), ({"max_messages": 11}, "max_messages"),
    ({"wait_time_seconds": 21}, "wait_time_seconds"), ({"visibility_timeout": 0}, "visibility_timeout"),
    ({"visibility_timeout": 43201}, "visibility_timeout"),
])
def test_receive_arguments_are_checked(sqlite_interlock, kwargs, field):
    args = {"name": "customs_review", **kwargs}
    with pytest.raises(InvalidData) as caught:
        act.receive(sqlite_interlock, args.pop("name"), **args)
    assert caught.value.field == field


@pytest.mark.postgres
def test_concurrent_receivers_on_postgresql_never_get_the_same_task(pg_rt):
    runs = {pg_rt.start("clearance", {"container": f"C{i}"}).id for i in range(60)}
    got, errors = [], []
    barrier = threading.Barrier(8)

    def receiver():
        try:
            barrier.wait()
            empty = 0
            while empty < 3:
                received = act.receive(pg_rt, "customs_review", max_messages=3)
                got.extend((t.run_id, t.token) for t in received)
                empty = 0 if received else empty + 1
        except Exception as exc:  # reported below, with the failing thread's error
            errors.append(exc)

    threads = [threading.Thread(target=receiver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    received_runs = [run_id for run_id, _ in got]
    assert len(received_runs) == len(set(received_runs)) == 60
    assert set(received_runs) == runs
    with pg_rt.db.read() as conn:
        rows = conn.execute(select(tasks.c.attempt, tasks.c.token).where(tasks.c.kind == "activity")).all()
    assert {attempt for attempt, _ in rows} == {1}
    assert {token for _, token in rows} == {token for _, token in got}


# -- over HTTP: `interlock serve` and the Python client ------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_up(base) -> bool:
    try:
        return requests.get(f"{base}/api/workflows", timeout=2).status_code == 200
    except requests.RequestException:  # refused, or accepted by a server still booting
        return False


@contextmanager
def serve(rt, log_path, port=None):
    """`interlock serve` on the test's database, as its own process."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    server = Process("serve", "--port", str(port), "--threads", "32", env=env_for(rt.settings),
                     log_path=log_path)
    try:
        wait_until(lambda: is_up(base) or server.proc.poll() is not None, timeout=30, message="the server")
        assert server.proc.poll() is None, server.output()
        yield base
    finally:
        server.stop()


@pytest.fixture
def api(rt, tmp_path):
    with serve(rt, tmp_path / "serve.log") as base:
        yield base


def poll_in_thread(poller, handler):
    result = {}
    thread = threading.Thread(target=lambda: result.update(stats=poller.poll(handler)))
    thread.start()
    return thread, result


@pytest.mark.slow
def test_an_external_poller_completes_activity_tasks(rt, api):
    client = Client(api)
    started = [client.start("clearance", {"container": f"C{i}"}, business_key=f"C{i}") for i in range(3)]
    seen = []

    def review(task):
        seen.append((task.run_id, task.attempt, task.data["container"]))
        return "approve", {"officer": "ada"}

    poller = ActivityPoller(client, "customs_review", idle_timeout=1.0, wait_time_seconds=0.5,
                            visibility_timeout=10)
    with rt.worker(2):  # the release step after the review
        thread, result = poll_in_thread(poller, review)
        finals = [client.wait_for_completion(run["id"], timeout=20) for run in started]
        thread.join(30)
    assert not thread.is_alive()
    stats = result["stats"]
    assert (stats.received, stats.completed, stats.failed, stats.errors) == (3, 3, 0, 0)
    assert stats.elapsed >= 1.0
    assert sorted(seen) == sorted((run["id"], 1, run["data"]["container"]) for run in started)
    assert [(f["status"], f["state"], f["data"]["officer"]) for f in finals] == [
        ("succeeded", "released", "ada")] * 3


@pytest.mark.slow
def test_a_task_whose_handler_raises_is_retried_after_the_visibility_timeout(rt, api):
    client = Client(api)
    run = client.start("clearance", CONTAINER)
    calls = []

    def review(task):
        calls.append((time.time(), task.attempt, parse_time(task.lease_until)))
        if task.attempt == 1:
            raise RuntimeError("the customs system is down")
        return {"officer": "grace"}

    poller = ActivityPoller(client, "customs_review", idle_timeout=3.0, wait_time_seconds=0.5,
                            visibility_timeout=1.0)
    thread, result = poll_in_thread(poller, review)
    thread.join(30)
    stats = result["stats"]
    assert (stats.received, stats.completed, stats.failed, stats.errors) == (2, 1, 1, 0)
    (first_at, first_attempt, first_lease), (second_at, second_attempt, _) = calls
    assert (first_attempt, second_attempt) == (1, 2)
    # Not before the first attempt's visibility timeout ended (the lease is the server's clock;
    # when the handler was called depends on how busy the client was, so it proves nothing).
    assert second_at >= first_lease, "received again before the visibility timeout ended"
    final = client.get(run["id"])
    assert (final["state"], final["data"]["officer"]) == ("releasing", "grace")
    failed = next(h for h in rt.history(run["id"]) if h.kind == "step_failed")
    assert failed.detail["error"] == "RuntimeError: the customs system is down"
    assert "Traceback" in failed.detail["traceback"]


@pytest.mark.slow
def test_the_poller_returns_its_statistics_after_idle_timeout(rt, api):
    began = time.monotonic()
    stats = ActivityPoller(Client(api), "customs_review", idle_timeout=0.6, wait_time_seconds=20).poll(
        lambda task: None)
    assert (stats.received, stats.completed, stats.failed, stats.errors) == (0, 0, 0, 0)
    assert 0.6 <= stats.elapsed <= time.monotonic() - began < 5
    assert stats.requests >= 1


@pytest.mark.slow
@pytest.mark.serial  # heartbeats a third of a 1 s visibility timeout apart: not beside other tests
def test_a_long_handler_is_kept_leased_by_heartbeats(rt, api):
    client = Client(api)
    run = client.start("clearance", CONTAINER)
    release = threading.Event()
    leases = []

    def slow_review(task):
        leases.append(parse_time(task.lease_until))
        release.wait(30)
        return "approve"

    poller = ActivityPoller(client, "customs_review", idle_timeout=0.5, wait_time_seconds=0.5,
                            visibility_timeout=1.0)
    with rt.worker(2):
        thread, result = poll_in_thread(poller, slow_review)
        try:
            wait_until(lambda: leases, message="the handler to start")
            # Outlive the first lease by more than two visibility timeouts while the reconciler runs.
            wait_until(lambda: time.time() > leases[0] + 2.5, timeout=10, message="the leases to pass")
            row = task_row(rt, run["id"])
            assert (row["status"], row["attempt"]) == ("running", 1)
            assert row["lease_until"] > leases[0] + 2.0
        finally:
            release.set()
            thread.join(30)
        assert client.wait_for_completion(run["id"], timeout=20)["status"] == "succeeded"
    stats = result["stats"]
    assert (stats.received, stats.completed, stats.failed) == (1, 1, 0)


@pytest.mark.slow
def test_the_poller_retries_network_errors_with_backoff(rt, tmp_path):
    port = free_port()
    client = Client(f"http://127.0.0.1:{port}", timeout=5)
    poller = ActivityPoller(client, "customs_review", idle_timeout=None, wait_time_seconds=0.5,
                            backoff=0.05, max_backoff=0.5)
    thread, result = poll_in_thread(poller, lambda task: "approve")
    try:
        wait_until(lambda: poller.stats and poller.stats.errors >= 3, message="refused connections")
        run = rt.start("clearance", CONTAINER)
        with serve(rt, tmp_path / "serve.log", port=port):
            wait_until(lambda: poller.stats.completed == 1, timeout=20, message="the task to be completed")
    finally:
        poller.stop()
        thread.join(30)
    assert rt.get(run.id).state == "releasing"
    assert result["stats"].received == 1 and result["stats"].errors >= 3


@pytest.mark.slow
def test_the_client_drives_runs_and_raises_problem_documents(rt, api):
    client = Client(api)
    first = client.start("warehouse_pick", {"order": "A-1"}, idempotency_key="order-A-1")
    assert client.start("warehouse_pick", {"order": "A-1"}, idempotency_key="order-A-1")["id"] == first["id"]
    with pytest.raises(ApiError) as caught:
        client.get("0" * 32)
    assert (caught.value.status, caught.value.code) == (404, "run-not-found")
    assert caught.value.problem["status"] == 404
    with pytest.raises(ApiError) as caught:
        client.send(first["id"], "no_such_event")
    assert caught.value.code == "invalid-transition" and caught.value.problem["allowed_events"] == ["picked"]

    [task] = client.receive("warehouse.pick", max_messages=10, visibility_timeout=VT)
    assert (task.run_id, task.data, task.attempt) == (first["id"], {"order": "A-1"}, 1)
    client.fail(task.token, "scanner offline")
    with pytest.raises(StaleToken) as caught:
        client.complete(task.token)
    assert (caught.value.status, caught.value.reason) == (410, "queued")
    [task] = client.receive("warehouse.pick", wait_time_seconds=5, visibility_timeout=VT)
    client.fail(task.token, "scanner offline")
    assert client.wait_for_completion(first["id"], timeout=5)["status"] == "failed"
    client.retry(first["id"])
    [task] = client.receive("warehouse.pick")
    assert client.heartbeat(task.token, 60)["visibility_timeout"] == 60
    assert client.complete(task.token, data={"bin": "B7"})["status"] == "succeeded"
    page = client.history(first["id"], after=0)
    assert page["history"][0]["kind"] == "started" and page["status"] == "succeeded"

    other = client.start("clearance", CONTAINER)
    assert client.cancel(other["id"], "wrong container")["status"] == "cancelled"
    with pytest.raises(ApiError) as caught:
        client.receive("customs_review", max_messages=11)
    assert (caught.value.status, caught.value.code) == (422, "validation-error")
    paths = requests.get(f"{api}/api/openapi.json", timeout=5).json()["paths"]
    for path in ("/api/activities/{name}/receive", "/api/tasks/{token}/heartbeat",
                 "/api/tasks/{token}/complete", "/api/tasks/{token}/fail"):
        assert "post" in paths[path]


def test_a_task_not_yet_available_is_not_received(rt):
    rt.start("clearance", CONTAINER)
    pick = rt.start("warehouse_pick", {"order": "A-2"})
    with rt.db.write() as conn:  # the review task is far in the future: only the pick is due
        conn.execute(update(tasks).where(tasks.c.name == "customs_review").values(available_at=time.time() + 3600))
    assert act.receive(rt, "customs_review", wait_time_seconds=0.2) == []
    assert receive_one(rt, "warehouse.pick").run_id == pick.id
