"""A workflow's max_active (engine/admission.py): never more runs admitted than the limit, across
worker processes; the others wait in their initial state and are admitted oldest first as runs
end; what is sent to a waiting run is applied once it is admitted; a crash between an end and
the next admission is repaired by the reconciler."""

import threading
import time
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select, text

from engine import Limit, State, Workflow
from engine.cli import cli
from engine.errors import DefinitionError, InvalidTransition
from engine.explain import explain
from engine.models import admission_slots, signals
from engine.operations import Cancel
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from engine.transitions import apply
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.admission_workflows"
ACTIVE = ("running", "waiting")


@pytest.fixture(params=["sqlite", "postgresql"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    runtime = Interlock(settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def kinds(rt, run_id) -> list[str]:
    return [h.kind for h in rt.history(run_id)]


def admitted_at(rt, run_id) -> float:
    """When the run got its slot: its ``admitted`` entry, or its start if it never waited."""
    entries = rt.history(run_id)
    return next((h.at for h in entries if h.kind == "admitted"), entries[0].at)


def most_at_once(spans) -> int:
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    now = top = 0
    for _, step in events:
        now += step
        top = max(top, now)
    return top


def parked(rt, ids):
    wait_until(lambda: all(rt.get(r).state == "parked" for r in ids), message="the runs to park")


class Sampler(threading.Thread):
    """Reads, every few milliseconds, how many runs of adm_gate are active past their initial state
    and how many slots are held."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.engine, self.stop, self.past, self.held = create_engine(url), threading.Event(), [], []

    def run(self):
        with self.engine.connect() as conn:
            while not self.stop.is_set():
                self.past.append(conn.execute(text(
                    "SELECT count(*) FROM runs WHERE workflow = 'adm_gate' AND status IN ('running', 'waiting') "
                    "AND state <> 'pending'")).scalar())
                self.held.append(conn.execute(text(
                    "SELECT count(*) FROM admission_slots WHERE run_id IS NOT NULL")).scalar())
                conn.commit()
                time.sleep(0.005)

    def finish(self):
        self.stop.set()
        self.join(5)
        self.engine.dispose()


def check_ten_runs(rt, ids, sampler):
    """At most three at once, from the sampler and from the history; all admitted in start order."""
    assert max(sampler.past) <= 3 and max(sampler.held) <= 3, (max(sampler.past), max(sampler.held))
    assert max(sampler.past) >= 1  # it saw the runs working
    runs = [rt.get(r) for r in ids]
    assert all(run.status == "succeeded" for run in runs)
    spans = [(admitted_at(rt, r), run.finished_at) for r, run in zip(ids, runs)]
    assert most_at_once(spans) == 3
    past_initial = [(next(h.at for h in rt.history(r) if h.kind == "transition"), run.finished_at)
                    for r, run in zip(ids, runs)]
    assert most_at_once(past_initial) <= 3
    assert sorted(ids, key=lambda r: admitted_at(rt, r)) == ids  # arrival order
    waited = [r for r in ids if "admission_waiting" in kinds(rt, r)]
    assert waited == ids[3:] and all(kinds(rt, r).count("admitted") == 1 for r in waited)


def test_ten_runs_with_max_active_3_never_have_more_than_3_past_their_initial_state(rt):
    sampler = Sampler(rt.settings.database_url)
    sampler.start()
    try:
        with rt.worker(6):
            ids = [rt.start("adm_gate", {"group": "g", "sleep": 0.2}).id for _ in range(10)]
            wait_until(lambda: all(rt.get(r).status == "succeeded" for r in ids), timeout=60,
                       message="all ten runs to succeed")
    finally:
        sampler.finish()
    check_ten_runs(rt, ids, sampler)


def test_a_waiting_run_holds_nothing_queues_what_it_is_sent_and_applies_it_once_admitted(rt):
    with rt.worker(4):
        first = [rt.start("adm_gate", {"group": "q", "park": True}).id for _ in range(3)]
        parked(rt, first)
        waiting = rt.start("adm_gate", {"group": "q", "park": True}).id
        why = explain(rt, waiting)
        assert why["tasks"] == [] and why["timers"] == [] and rt.get(waiting).state == "pending"
        assert why["admission"]["active"] == 3 and why["admission"]["ahead"] == 0
        assert why["waiting_for"].startswith("a slot of workflow adm_gate (key q): 3 of 3 active, 0 ahead")
        rt.send(waiting, "note", {"text": "a"})
        rt.update_data(waiting, {"x": 1})
        rt.send(waiting, "note", {"text": "b"})
        with pytest.raises(InvalidTransition):
            rt.send(waiting, "no_such_event")
        assert rt.get(waiting).data.get("notes") is None and "x" not in rt.get(waiting).data
        assert kinds(rt, waiting) == ["started", "admission_waiting", "event_queued", "data_queued", "event_queued"]
        rt.send(first[0], "finished")
        parked(rt, [waiting])
    run = rt.get(waiting)
    assert run.data["notes"] == ["a", "b"] and run.data["x"] == 1 and run.admission_since is None
    after = kinds(rt, waiting)[5:]
    assert after[:4] == ["admitted", "transition", "data_updated", "transition"]  # before its first step
    entries = rt.history(waiting)
    admitted = next(h for h in entries if h.kind == "admitted")
    assert admitted.detail["freed_by"] == first[0] and admitted.detail["waited"] > 0
    assert entries[6].event == "note" and entries[6].at == admitted.at
    for run_id in first[1:] + [waiting]:
        rt.send(run_id, "finished")


def test_cancelling_a_waiting_run_frees_nothing_and_drops_it_from_the_queue(rt):
    with rt.worker(4):
        first = [rt.start("adm_gate", {"group": "c", "park": True}).id for _ in range(3)]
        parked(rt, first)
        dropped, kept = (rt.start("adm_gate", {"group": "c", "park": True}).id for _ in range(2))
        assert explain(rt, kept)["admission"]["ahead"] == 1
        rt.cancel(dropped, "not needed")
        assert kinds(rt, dropped) == ["started", "admission_waiting", "cancelled"]
        assert explain(rt, kept)["admission"] == {**explain(rt, kept)["admission"], "ahead": 0, "active": 3}
        assert [row for row in rt_limits(rt) if row["key"] == "c"] == [
            {"kind": "workflow", "name": "adm_gate", "key": "c", "slots": 3, "in_use": 3, "waiting": 1}]
        rt.send(first[0], "finished")
        parked(rt, [kept])
        assert "admitted" not in kinds(rt, dropped) and rt.get(dropped).admission_since is None
        for run_id in first[1:] + [kept]:
            rt.send(run_id, "finished")


def rt_limits(rt):
    from engine import admission

    return admission.list_slots(rt)


def test_a_cancelled_run_frees_its_slot_and_a_failed_one_keeps_it_until_it_ends(rt):
    with rt.worker(4):
        fail_until = time.time() + 2.0  # both attempts fail
        failing = rt.start("adm_gate", {"group": "f", "fail_until": fail_until}).id
        others = [rt.start("adm_gate", {"group": "f", "park": True}).id for _ in range(2)]
        wait_until(lambda: rt.get(failing).status == "failed", message="the first run to fail")
        parked(rt, others)
        waiting = rt.start("adm_gate", {"group": "f", "park": True}).id
        assert explain(rt, waiting)["admission"]["active"] == 3  # the failed run still counts
        rt.cancel(others[0])
        parked(rt, [waiting])
        later = rt.start("adm_gate", {"group": "f"}).id
        assert rt.get(later).admission_since is not None
        wait_until(lambda: time.time() > fail_until, message="the work to be able to succeed")
        assert rt.get(later).admission_since is not None
        rt.retry(failing)  # its second attempt succeeds: it ends, and the slot goes on
        wait_until(lambda: rt.get(later).status == "succeeded", message="the next run, admitted once the failed one ended")
        assert rt.get(failing).status == "succeeded"
        for run_id in (others[1], waiting):
            rt.send(run_id, "finished")


def test_a_higher_priority_waiter_is_admitted_first(rt):
    with rt.worker(4):
        first = [rt.start("adm_gate", {"group": "p", "park": True}).id for _ in range(3)]
        parked(rt, first)
        low = rt.start("adm_gate", {"group": "p", "park": True}).id
        high = rt.start("adm_gate", {"group": "p", "park": True}, priority=5).id
        raised = rt.start("adm_gate", {"group": "p", "park": True}).id
        rt.set_priority(raised, 9)
        assert explain(rt, low)["admission"]["ahead"] == 2
        rt.send(first[0], "finished")
        parked(rt, [raised])
        rt.send(first[1], "finished")
        parked(rt, [high])
        assert rt.get(low).admission_since is not None
        rt.send(first[2], "finished")
        parked(rt, [low])
        for run_id in (raised, high, low):
            rt.send(run_id, "finished")


def test_a_crash_between_an_end_and_the_next_admission_is_repaired_by_the_reconciler(rt):
    """No worker: the admitted runs wait in pending with their first step queued."""
    ids = [rt.start("adm_gate", {"group": "x"}).id for _ in range(4)]
    assert [rt.get(r).admission_since is None for r in ids] == [True, True, True, False]
    # The cancel commits (the slot handed to the waiter, its signal written), and the process
    # dies before the after-commit work delivers the signal.
    apply(rt, ids[0], Cancel("crash test"), after_commit=lambda outcome: None)
    why = explain(rt, ids[3])
    assert why["admission"]["handed"] and rt.get(ids[3]).admission_since is not None
    assert why["waiting_for"].startswith("its admission to workflow adm_gate")
    reconciler = Reconciler(rt)

    def repaired():
        reconciler.tick()
        return rt.get(ids[3]).admission_since is None

    wait_until(repaired, timeout=15, message="the reconciler to admit the waiting run")
    for _ in range(3):
        reconciler.tick()
    assert kinds(rt, ids[3]).count("admitted") == 1
    with rt.db.read() as conn:
        sent = conn.execute(select(signals.c.status).where(signals.c.run_id == ids[3])).scalars().all()
        holders = conn.execute(select(admission_slots.c.run_id).where(admission_slots.c.key == "x")).scalars().all()
    assert sent == ["applied"] and sorted(filter(None, holders)) == sorted(ids[1:])
    why = explain(rt, ids[3])
    assert [t["name"] for t in why["tasks"]] == ["begin"]
    # Its state is entered at its admission: the timer counts from then, not from its start.
    [timer] = why["timers"]
    assert timer["name"] == "reminder" and 3590 < timer["fires_in_seconds"] <= 3600


def test_the_slot_of_a_run_deleted_behind_the_engines_back_comes_back(rt):
    """A run holding a slot that disappears (deleted by hand): the reconciler's look for stale
    slots frees it and admits the next."""
    ids = [rt.start("adm_gate", {"group": "d"}).id for _ in range(4)]
    with rt.db.write() as conn:
        for table in ("history", "tasks", "timers", "runs"):
            conn.execute(text(f"DELETE FROM {table} WHERE {'id' if table == 'runs' else 'run_id'} = :r"),
                         {"r": ids[0]})
    reconciler = Reconciler(rt)

    def repaired():
        reconciler.tick()
        return rt.get(ids[3]).admission_since is None

    wait_until(repaired, timeout=20, message="the stale slot freed and handed on")
    assert kinds(rt, ids[3]).count("admitted") == 1


def test_the_api_the_cli_and_the_run_page_show_the_wait(rt):
    from api import create_app

    ids = [rt.start("adm_gate", {"group": "w"}).id for _ in range(5)]
    client = create_app(interlock=rt).test_client()
    listed = client.get("/api/limits", query_string={"name": "adm_gate"}).json["limits"]
    assert {"kind": "workflow", "name": "adm_gate", "key": "w", "slots": 3, "in_use": 3, "waiting": 2} in listed
    why = client.get(f"/api/runs/{ids[4]}/explain").json
    assert why["admission"]["ahead"] == 1 and why["waiting_for"].startswith(
        "a slot of workflow adm_gate (key w): 3 of 3 active, 1 ahead")
    assert client.get(f"/api/runs/{ids[4]}").json["admission_since"] is not None
    page = client.get(f"/runs/{ids[4]}").get_data(as_text=True)
    assert 'id="run-admission"' in page and "3 of 3 active, 1 ahead" in page
    assert 'id="run-admission"' not in client.get(f"/runs/{ids[0]}").get_data(as_text=True)
    env = {"INTERLOCK_DATABASE_URL": rt.settings.database_url, "INTERLOCK_WORKFLOWS": WORKFLOWS,
           "INTERLOCK_BROKER_URL": rt.settings.broker_url, "INTERLOCK_QUEUE": rt.settings.queue}
    shown = CliRunner().invoke(cli, ["limits", "--name", "adm_gate"], env=env)
    assert shown.exit_code == 0 and "workflow adm_gate [w]: 3 of 3 active, 2 waiting to start" in shown.output


@pytest.mark.parametrize("bad", [0, -1, "3", 2.5, True, 10_001])
def test_a_bad_max_active_is_refused_at_definition(bad):
    with pytest.raises(DefinitionError, match="max_active must be an int from 1 to 10000"):
        class Bad(Workflow):
            name, version = "adm_bad", 1
            max_active = bad
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)


def test_max_active_takes_no_name_and_no_eventless_way_out_of_the_initial_state():
    with pytest.raises(DefinitionError, match="takes no name"):
        class Named(Workflow):
            name, version = "adm_named", 1
            max_active = Limit(2, name="shared")
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)
    with pytest.raises(DefinitionError, match="eventless transition"):
        class Eventless(Workflow):
            name, version = "adm_eventless", 1
            max_active = 2
            a = State(initial=True)
            b = State(final=True)
            a.to(b, cond="ready")
            go = a.to(b)

            def ready(self):
                return True


# -- real worker processes on PostgreSQL, with Redis and with RabbitMQ ------------------------------

@pytest.fixture(params=["redis", "rabbitmq"])
def broker_settings(request, pg_settings):
    from tests.conftest import _delete_rabbit_queues, broker_url

    queue = f"interlock_test_{uuid.uuid4().hex[:12]}"
    yield pg_settings.replace(workflows=WORKFLOWS, broker_url=broker_url(request.param), lease_seconds=2.0,
                              queue=queue)
    if request.param == "rabbitmq":
        _delete_rabbit_queues(queue)


def workers(settings, tmp_path, n, first=0):
    from tests.processes import Process, env_for

    return [Process("worker", "--threads", "4", env=env_for(settings), log_path=tmp_path / f"worker{i}.log")
            for i in range(first, first + n)]


def test_two_worker_processes_admit_at_most_three_runs_at_once(broker_settings, tmp_path):
    rt = Interlock(broker_settings)
    procs = workers(broker_settings, tmp_path, 2)
    sampler = Sampler(broker_settings.database_url)
    sampler.start()
    try:
        ids = [rt.start("adm_gate", {"group": "procs", "sleep": 0.3}).id for _ in range(10)]
        wait_until(lambda: all(rt.get(r).status == "succeeded" for r in ids), timeout=90,
                   message="all ten runs to succeed in the worker processes")
    finally:
        sampler.finish()
        for proc in procs:
            proc.stop()
        rt.close()
    rt = Interlock(broker_settings)
    try:
        check_ten_runs(rt, ids, sampler)
    finally:
        rt.close()


def test_a_killed_worker_leaves_the_slots_with_their_runs_whose_steps_run_again(broker_settings, tmp_path):
    """Slots belong to runs, not to workers: a worker killed while three runs work keeps no slot;
    their attempts run again (redelivered, or after their leases), and the waiting runs follow
    as they end, three at most."""
    rt = Interlock(broker_settings)
    ids = [rt.start("adm_gate", {"group": "kill", "sleep": 1.5}).id for _ in range(6)]
    sampler = Sampler(broker_settings.database_url)
    sampler.start()
    [first] = workers(broker_settings, tmp_path, 1)
    try:
        wait_until(lambda: sum(rt.get(r).state == "working" for r in ids) == 3, timeout=30,
                   message="three runs working in the first worker")
        killed_at = rt.clock.now()
        first.kill()
        [second] = workers(broker_settings, tmp_path, 1, first=1)
        try:
            wait_until(lambda: all(rt.get(r).status == "succeeded" for r in ids), timeout=90,
                       message="every run to succeed after the kill")
        finally:
            second.stop()
    finally:
        first.stop()
        sampler.finish()
        rt.close()
    assert max(sampler.past) <= 3 and max(sampler.held) <= 3
    rt = Interlock(broker_settings)
    try:
        # The three runs working at the kill ended after it: their attempts ran again.
        working = [r for r in ids if admitted_at(rt, r) < killed_at]
        assert working == ids[:3] and all(rt.get(r).finished_at > killed_at for r in working)
        assert sorted(ids, key=lambda r: admitted_at(rt, r)) == ids
        spans = [(admitted_at(rt, r), rt.get(r).finished_at) for r in ids]
        assert most_at_once(spans) == 3
    finally:
        rt.close()


def test_a_run_whose_states_cannot_be_entered_at_its_admission_fails_and_passes_the_slot_on(rt):
    first = rt.start("adm_deadline", {"group": "e", "deadline": "2100-01-01T00:00:00Z"}).id
    broken = rt.start("adm_deadline", {"group": "e"}).id  # no deadline: its timer cannot be armed
    after = rt.start("adm_deadline", {"group": "e", "deadline": "2100-01-01T00:00:00Z"}).id
    rt.send(first, "finish")
    wait_until(lambda: rt.get(after).admission_since is None, message="the slot passed on to the third run")
    run = rt.get(broken)
    assert run.status == "failed" and run.admission_since is None
    assert kinds(rt, broken)[-2:] == ["signal_refused", "failed"] and "deadline" in rt.history(broken)[-1].detail["error"]
    assert explain(rt, after)["timers"][0]["name"] == "expires"


def test_a_paused_waiting_run_is_admitted_in_its_turn_and_starts_once_resumed(rt):
    first = rt.start("adm_deadline", {"group": "z", "deadline": "2100-01-01T00:00:00Z"}).id
    waiting = rt.start("adm_deadline", {"group": "z", "deadline": "2100-01-01T00:00:00Z"}).id
    rt.pause(waiting)
    rt.send(waiting, "finish", queue=True)
    rt.send(first, "finish")
    wait_until(lambda: rt.get(waiting).admission_since is None, message="the paused run admitted")
    assert rt.get(waiting).state == "pending" and kinds(rt, waiting)[-1] == "admitted"
    rt.resume(waiting)
    wait_until(lambda: rt.get(waiting).status == "succeeded", message="the queued event applied on resume")
