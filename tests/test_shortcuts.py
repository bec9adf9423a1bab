"""Transitions taken without python-statemachine must end exactly where the machine would."""

import json
import re
from contextlib import contextmanager, nullcontext
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from engine import InterlockError, State, Workflow, after, machine as m, queries
from engine.config import Settings
from engine.db import Database
from engine.models import tasks, timers
from engine.registry import Registry
from engine.runtime import Interlock
from engine.testing import Harness
from tests import workflows as w


class Plain(Workflow):
    name, version = "shortcut_plain", 1
    a = State(initial=True)
    b = State()
    done = State(final=True)
    go = a.to(b) | b.to(done)
    again = b.to.itself()
    stay = b.to.itself(internal=True)


class WithEntry(Plain):
    name, version = "shortcut_entry", 1

    def on_enter_b(self, run):
        run.data["entered_b"] = True


class PlainWithEntries(Workflow):
    """No callbacks, but ``enable_self_transition_entries``: an internal self-transition enters
    its state again, which the state's timer shows."""

    name, version = "shortcut_plain_entries", 1
    enable_self_transition_entries = True
    a = State(initial=True)
    b = State()
    done = State(final=True)
    go = a.to(b) | b.to(done)
    again = b.to.itself()
    stay = b.to.itself(internal=True)
    reminder = after(3600, b, send="go")


class PlainTolerant(Plain):
    """No callbacks; an event with no transition here is ignored."""

    name, version = "shortcut_plain_tolerant", 1
    allow_event_without_transition = True


CLASSES = [cls for cls in vars(w).values()
           if isinstance(cls, type) and issubclass(cls, Workflow) and cls is not Workflow
           and getattr(cls, "states_map", None)] + [Plain]


def _by_machine(cls, source, event):
    ctx = m.RunContext(id="r", workflow=cls.workflow_name, version=cls.version, data={})
    machine = m.restore(cls, ctx, [source])
    machine.send(event, run=ctx, db=None, data={})
    return m.configuration(machine), list(ctx.exited), list(ctx.entered)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_every_shortcut_matches_the_machine(cls):
    for (source, event), (target, reenters) in m.shortcuts(cls).items():
        configuration, exited, entered = _by_machine(cls, source, event)
        assert configuration == [target]
        moved = reenters or target != source
        assert (exited, entered) == (([source], [target]) if moved else ([], []))


def test_a_flat_workflow_without_callbacks_has_shortcuts_for_every_transition():
    table = m.shortcuts(Plain)
    assert set(table) == {("a", "go"), ("b", "go"), ("b", "again"), ("b", "stay")}
    assert table[("b", "again")][1] is True and table[("b", "stay")][1] is False


@pytest.mark.parametrize("cls", [WithEntry, w.Guarded, w.Audited], ids=lambda c: c.__name__)
def test_a_workflow_with_callbacks_or_guards_has_none(cls):
    assert m.shortcuts(cls) == {} and not m.is_plain(cls)


@pytest.mark.parametrize("cls", [c for c in CLASSES if m.is_plain(c)], ids=lambda c: c.__name__)
def test_a_plain_workflow_starts_where_the_machine_starts(cls):
    ctx = m.RunContext(id="r", workflow=cls.workflow_name, version=cls.version, data={})
    machine = m.create(cls, ctx, run=ctx, db=None, data={})
    assert m.configuration(machine) == [cls.initial_state.id] and ctx.entered == [cls.initial_state.id]


def test_runs_move_the_same_with_and_without_callbacks():
    with Harness(Plain, WithEntry) as h:
        plain, entry = h.rt.start("shortcut_plain"), h.rt.start("shortcut_entry")
        for run in (plain, entry):
            for event in ("go", "again", "stay", "go"):
                h.rt.send(run.id, event)
        plain, entry = h.rt.get(plain.id), h.rt.get(entry.id)
        assert (plain.status, plain.state) == (entry.status, entry.state) == ("succeeded", "done")
        assert entry.data == {"entered_b": True} and plain.data == {}
        moves = [[(e.event, e.source, e.target) for e in h.rt.history(r.id) if e.kind == "transition"]
                 for r in (plain, entry)]
        assert moves[0] == moves[1] == [("go", "a", "b"), ("again", "b", "b"), ("stay", "b", "b"),
                                        ("go", "b", "done")]


# -- the fast path against the machine path, on every workflow of the repository ------------

def _workflow_modules() -> list[str]:
    """``workflows`` and every module of workflows under tests/ (the differential machines too)."""
    stems = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if not p.stem.startswith("test_")
                   and re.fullmatch(r"(\w+_)?workflows(_v\d+)?|statecharts(_\w+)?", p.stem))
    return ["workflows"] + [f"tests.{stem}" for stem in stems]


WORKFLOW_MODULES = _workflow_modules()
REGISTRY = Registry().load_modules(WORKFLOW_MODULES)
EVERY_WORKFLOW = REGISTRY.all() + [Plain, WithEntry, PlainWithEntries, PlainTolerant]
# A time for the data field of every at() timer: far ahead, so starting never needs real data.
FAR_AHEAD = 4102444800.0  # 2100-01-01
EVENT_DATA = [{}, {"title": "t"}, {"total": 5000}, {"note": "n"}, {"manifest": ["parts"]}]


@pytest.fixture(scope="module")
def paths_engine(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('paths') / 'interlock.db'}"
    Database(url).upgrade()
    registry = Registry()
    for cls in EVERY_WORKFLOW:
        registry.add(cls)
    rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows="",
                            queue="interlock_paths"), registry=registry)
    with rt.db.engine.begin() as conn:  # written by the callbacks of tests.workflows.Audited
        conn.execute(text(f"CREATE TABLE {w.AUDIT_TABLE} "
                          "(run_id VARCHAR(32) NOT NULL, note VARCHAR(200) NOT NULL)"))
    yield rt
    rt.close()


@contextmanager
def _machine_path():
    """Every change through python-statemachine: no shortcut transitions, no plain start."""
    with mock.patch.object(m, "shortcuts", lambda cls: {}), mock.patch.object(m, "is_plain", lambda cls: False):
        yield


PATHS = {"fast path": nullcontext, "machine path": _machine_path}


def _outcome(call):
    try:
        return "accepted", call()
    except InterlockError as exc:
        return type(exc).__name__, None


def _observe(rt, run_id, with_history=False) -> dict:
    """The run as stored, its tasks and timers (and its history); its own id written as
    ``<run>`` (callbacks may store it, and the two runs' ids differ)."""
    with rt.db.read() as conn:
        run = queries.get_run(conn, run_id)
        seen = {"status": run.status, "state": run.state, "configuration": sorted(run.configuration),
                "data": run.data}
        for table in (tasks, timers):
            seen[table.name] = sorted((tuple(r) for r in conn.execute(
                select(table.c.state, table.c.name, table.c.kind, table.c.status)
                .where(table.c.run_id == run_id))), key=repr)
        if with_history:
            seen["history"] = [(h.kind, h.event, h.source, h.target, h.cause, h.data)
                               for h in queries.get_history(conn, run_id, 0, None)]
    return json.loads(json.dumps(seen, default=repr).replace(run_id, "<run>"))


def _start_data(cls) -> dict:
    return {**{t.at_field: FAR_AHEAD for t in cls._timers if t.at_field}, **cls.demo_data}


def _sendable(cls) -> list[str]:
    return [e for e in cls._event_ids if not e.startswith(("done_state", "done.", "error_", "error."))]


def _compare_paths(rt, cls, sequence):
    log = [f"start {cls.workflow_name} v{cls.version} {_start_data(cls)}"]
    started = {}
    for path, entered in PATHS.items():
        with entered():
            started[path] = _outcome(lambda: rt.start(cls.workflow_name, _start_data(cls), version=cls.version).id)
    (fast, fast_id), (slow, slow_id) = started.values()
    assert fast == slow == "accepted", f"start with {_start_data(cls)}: fast path {fast}, machine path {slow}"
    runs = dict(zip(PATHS, (fast_id, slow_id)))

    def compare(with_history=False):
        got, want = (_observe(rt, run_id, with_history) for run_id in runs.values())
        for key in want:
            assert got[key] == want[key], (f"{key} differs after\n  " + "\n  ".join(log)
                                           + f"\nfast path:    {got[key]}\nmachine path: {want[key]}")

    compare()
    for event, data in sequence:
        outcomes = []
        for path, entered in PATHS.items():
            with entered():
                outcomes.append(_outcome(lambda: rt.send(runs[path], event, data))[0])
        log.append(f"send {event} {data}: fast path {outcomes[0]}, machine path {outcomes[1]}")
        assert outcomes[0] == outcomes[1], "\n  ".join(log)
        compare()
    compare(with_history=True)  # append-only: comparing it once, at the end, loses nothing


@pytest.mark.parametrize("cls", EVERY_WORKFLOW, ids=lambda c: f"{c.workflow_name}-v{c.version}")
def test_the_fast_path_and_the_machine_path_agree(paths_engine, cls):
    """Same events, two runs: one may take shortcut transitions, the other never does. A
    workflow with no shortcut takes the same path both ways, so a few sequences suffice."""
    if not _sendable(cls):
        pytest.fail(f"{cls.workflow_name} declares no event to send")

    @settings(max_examples=100 if m.is_plain(cls) else 10 if m.shortcuts(cls) else 4, deadline=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.sampled_from(_sendable(cls)), st.sampled_from(EVENT_DATA)), max_size=8))
    def check(sequence):
        _compare_paths(paths_engine, cls, sequence)

    check()


def test_every_workflow_module_is_compared():
    assert {"workflows", "tests.workflows", "tests.statecharts", "tests.statecharts_compound",
            "tests.activity_workflows", "tests.parallel_workflows"} <= set(WORKFLOW_MODULES)
