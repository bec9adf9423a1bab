"""A python-statemachine class behaves the same durably as in memory (issue: statechart fidelity).

Each test drives a machine from tests/fidelity_workflows.py through the engine, restarting the
engine between events, and checks it against the same class run in memory.
"""

import pytest
from sqlalchemy import select
from statemachine import State

from engine import Workflow
from engine.errors import DefinitionError, InvalidTransition, RunNotActive
from engine.models import runs, timers
from engine.runtime import Interlock
from tests import fidelity_workflows as f
from tests.conftest import wait_until


class MemoryRun:
    """The model of an in-memory machine: what a durable run gives callbacks, without a database."""

    def __init__(self, data):
        self.id, self.data = "memory", data

    def prepare_event(self):
        return {"run": self}


def in_memory(cls, data, events):
    """The machine in memory after ``events`` ((event, kwargs) pairs): active state ids, data."""
    model = MemoryRun(dict(data))
    machine = cls(model=model)
    for event, kwargs in events:
        machine.send(event, **kwargs)
    return {s.id for s in machine.configuration}, model.data, machine.is_terminated


@pytest.fixture
def settings(sqlite_settings):
    return sqlite_settings.replace(workflows="tests.fidelity_workflows")


class Restarting:
    """Sends each event from a new engine, as if every event came after a restart."""

    def __init__(self, settings):
        self.settings = settings
        self.rt = Interlock(settings)

    def restart(self):
        self.rt.close()
        self.rt = Interlock(self.settings)

    def start(self, workflow, data=None):
        return self.rt.start(workflow, data)

    def send(self, run_id, event, data=None):
        self.restart()
        return self.rt.send(run_id, event, data)

    def configuration(self, run_id):
        with self.rt.db.read() as conn:
            return set(conn.execute(select(runs.c.configuration).where(runs.c.id == run_id)).scalar())

    def timers(self, run_id):
        with self.rt.db.read() as conn:
            return conn.execute(select(timers.c.name, timers.c.status, timers.c.entry_seq)
                                .where(timers.c.run_id == run_id).order_by(timers.c.created_at)).all()


@pytest.fixture
def engine(settings):
    restarting = Restarting(settings)
    yield restarting
    restarting.rt.close()


def durable(engine, workflow, data, events):
    run = engine.start(workflow, data)
    for event, kwargs in events:
        run = engine.send(run.id, event, kwargs)
    return engine.configuration(run.id), run.data, run.status not in ("running", "waiting"), run


@pytest.mark.parametrize("events, where", [
    ([("enter", {}), ("enter_keep", {}), ("climb", {}), ("leave", {}), ("back", {})],
     {"realm", "keep", "hall"}),        # shallow: the child of realm it was in, entered afresh
    ([("enter", {}), ("enter_keep", {}), ("climb", {}), ("leave", {}), ("back_deep", {})],
     {"realm", "keep", "tower"}),       # deep: every descendant it was in
    ([("back", {})], {"realm", "gate"}),  # nothing remembered yet: realm's initial state
    ([("enter", {}), ("leave", {}), ("back", {}), ("enter_keep", {}), ("leave", {}), ("back_deep", {})],
     {"realm", "keep", "hall"}),
])
def test_history_states_resume_where_the_compound_state_was_left(engine, events, where):
    configuration, _data, ended, run = durable(engine, "fidelity_history", {}, events)
    assert configuration == where == in_memory(f.Dungeon, {}, events)[0]
    assert not ended and run.status == "waiting"
    # And it goes on from there.
    moved = engine.send(run.id, "finish")
    assert (moved.status, moved.state) == ("succeeded", "done")


def test_a_history_default_is_taken_only_until_something_is_remembered(engine):
    first = [("resume", {})]
    assert durable(engine, "fidelity_history_default", {}, first)[0] == {"work", "a"} \
        == in_memory(f.Remembering, {}, first)[0]
    remembered = [("resume", {}), ("step_on", {}), ("pause", {}), ("resume", {})]
    assert durable(engine, "fidelity_history_default", {}, remembered)[0] == {"work", "b"} \
        == in_memory(f.Remembering, {}, remembered)[0]


def test_a_final_child_of_a_compound_state_does_not_end_the_run(engine):
    configuration, _data, ended, run = durable(engine, "fidelity_final_child", {}, [("walk", {})])
    assert configuration == {"realm", "bridge"} == in_memory(f.Realm, {}, [("walk", {})])[0]
    assert not ended and run.status == "waiting"
    done = engine.send(run.id, "go_home")
    assert (done.status, done.state) == ("succeeded", "home")


def test_enum_states_with_int_values_start_move_and_arm_timers(engine):
    run = engine.start("fidelity_enum")
    assert (run.status, run.state) == ("waiting", "pending")
    assert [(name, status) for name, status, _seq in engine.timers(run.id)] == [("remind", "armed")]
    done = engine.send(run.id, "approve")
    assert (done.status, done.state, done.data) == ("succeeded", "approved", {"approved": True})
    assert engine.configuration(run.id) == in_memory(f.EnumApproval, {}, [("approve", {})])[0] == {"approved"}


@pytest.mark.parametrize("workflow", ["fidelity_self_plain", "fidelity_self_callback"])
def test_a_re_entered_state_gets_a_new_timer_and_loses_the_old_one(engine, workflow):
    run = engine.start(workflow)
    engine.send(run.id, "beat")
    engine.send(run.id, "beat")
    rows = engine.timers(run.id)
    assert [status for _name, status, _seq in rows] == ["cancelled", "cancelled", "armed"]
    assert len({seq for _name, _status, seq in rows}) == 3  # one per entry
    # Same entries on both paths: start, then one per beat.
    entries = [e for e in engine.rt.history(run.id) if e.kind == "transition"]
    assert [(e.event, e.source, e.target) for e in entries] == [("beat", "alive", "alive")] * 2


def test_callbacks_of_eventless_transitions_and_raised_events_get_the_run(engine):
    configuration, data, ended, run = durable(engine, "fidelity_run_everywhere", {}, [("go", {})])
    memory = in_memory(f.Forwarding, {}, [("go", {})])
    assert configuration == memory[0] == {"done"} and ended == memory[2] is True
    assert data == {"guard_saw_run": run.id, "raised_saw_run": run.id}
    assert memory[1] == {"guard_saw_run": "memory", "raised_saw_run": "memory"}


def test_a_workflow_that_allows_events_without_transitions_ignores_them(engine):
    run = engine.start("fidelity_tolerant")
    assert engine.send(run.id, "push").state == "open"           # declared, no transition here
    assert engine.send(run.id, "no_such_event").state == "open"  # unknown, as StateChart allows
    closed = engine.send(run.id, "close")
    assert closed.status == "succeeded"
    after_end = engine.send(run.id, "nudge")                     # ended: ignored, not refused
    assert (after_end.status, after_end.state) == ("succeeded", "closed")
    ignored = [(e.event, e.detail["reason"]) for e in engine.rt.history(run.id) if e.kind == "ignored"]
    assert [event for event, _reason in ignored] == ["push", "no_such_event"]
    # A strict workflow still refuses both.
    strict = engine.start("fidelity_final_child")
    with pytest.raises(InvalidTransition):
        engine.send(strict.id, "no_such_event")
    engine.send(strict.id, "walk")
    engine.send(strict.id, "go_home")
    with pytest.raises(RunNotActive):
        engine.send(strict.id, "walk")


def test_event_arguments_reach_callbacks_by_name_and_stay_out_of_the_run_data(engine):
    guesses = [("guess", {"number": 3}), ("guess", {"number": 9}), ("guess", {"number": 7})]
    configuration, data, ended, run = durable(engine, "fidelity_guess", {"number": 7}, guesses)
    memory = in_memory(f.GuessingGame, {"number": 7}, guesses)
    assert data == memory[1] == {"number": 7, "answers": ["low", "high", "won"]}
    assert configuration == memory[0] == {"won"} and ended is memory[2] is True
    # What came with each event is in its history entry.
    sent = [e.data for e in engine.rt.history(run.id) if e.kind == "transition"]
    assert sent == [{"number": 3}, {"number": 9}, {"number": 7}]


def test_async_callbacks_are_refused_at_import():
    with pytest.raises(DefinitionError, match="on_enter_b is async"):
        class AsyncCallback(Workflow):
            name, version = "fidelity_async_callback", 1
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)

            async def on_enter_b(self):
                pass

    with pytest.raises(DefinitionError, match="is async"):
        async def check(run):
            return True

        class AsyncGuard(Workflow):
            name, version = "fidelity_async_guard", 1
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b, cond=check)


def test_delayed_events_are_refused_at_import():
    with pytest.raises(DefinitionError, match="use a durable timer|Use a durable timer"):
        from statemachine import Event

        class Delayed(Workflow):
            name, version = "fidelity_delayed", 1
            a = State(initial=True)
            b = State(final=True)
            go = Event(a.to(b), delay=1000)


def test_async_steps_run_with_retries(settings):
    rt = Interlock(settings)
    try:
        with rt.worker(2):
            run = rt.start("fidelity_async_step", {"fail_first": True})
            done = wait_until(lambda: (r := rt.get(run.id)).status == "succeeded" and r, message="async step")
            assert done.data["body"] == "fetched on attempt 2"
            failures = [e.detail["error"] for e in rt.history(run.id) if e.kind == "step_failed"]
            assert failures == ["ConnectionError: the service hung up"]
    finally:
        rt.close()


def test_an_async_step_past_its_time_limit_fails_its_attempt(settings):
    rt = Interlock(settings)
    try:
        with rt.worker(2):
            run = rt.start("fidelity_async_slow")
            ended = wait_until(lambda: (r := rt.get(run.id)).status == "failed" and r, message="time limit")
            assert ended.state == "timed_out"
            failed = [e.detail for e in rt.history(run.id) if e.kind == "step_failed"]
            assert failed[0]["error"].startswith("TimeLimitExceeded")
            assert failed[0]["duration"] < 5
    finally:
        rt.close()


def test_a_history_state_without_a_default_is_refused_at_import():
    from statemachine import HistoryState

    with pytest.raises(DefinitionError, match="history state 'h' of 'work' has no default transition"):
        class Forgetful(Workflow):
            name, version = "fidelity_forgetful", 1
            idle = State(initial=True)

            class work(State.Compound):
                a = State(initial=True)
                h = HistoryState()

            resume = idle.to(work.h)
            pause = work.to(idle)


def test_the_callbacks_registry_python_statemachine_keeps_is_read_as_pinned():
    """machine.registered_callbacks reads a private registry (pyproject pins 3.2.x): if its shape
    changes, every workflow would look callback-free and skip its callbacks on the shortcut path."""
    from engine import machine as m

    ctx = m.RunContext(id="r", workflow="w", version=1, data={})
    machine = m.restore(f.HeartbeatWithCallback, ctx, ["alive"])
    names = {callback.meta.func for callback in m.registered_callbacks(machine)}
    assert "after_die" in names and {"on_enter_state", "prepare_event"} <= names
    assert m.is_plain(f.Heartbeat) and not m.is_plain(f.HeartbeatWithCallback)
