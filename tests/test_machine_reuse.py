"""A machine lent to a change (``machine.restore_lease``/``create_lease``, given back after the
change) must do exactly what a python-statemachine instance built for that change alone does.

Several runs of one workflow take turns on the shared pool of machines, so a machine that served
one run (and ended it, raised in a callback, had a guard refuse, or changed data) serves the
next. Every change is made twice from the same stored run (configuration ids, history memory,
data): on a new instance (``machine.restore``/``create``) and on a lent one. After each, both must
agree on the outcome (accepted, refused, or the error raised), the configuration, the history
memory, the data, the states entered and exited, and whether the machine ended. As in a run, a
change that fails leaves its run as it was.

Every workflow of the repository is driven (tests/test_shortcuts.py lists them): those of
tests/statecharts*.py cover python-statemachine's documented features (guards reading data and
event arguments, before/on/after callbacks, entry and exit callbacks, compound, parallel and
history states, eventless transitions, raised events, callbacks that raise, listeners).
"""

import copy
import importlib.metadata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from statemachine.exceptions import TransitionNotAllowed

from engine import machine as m
from engine.transitions import event_arguments
from tests import test_shortcuts as paths
from tests.test_differential import ARGUMENTS

from bench.flows import Callbacks5  # noqa: E402 - the throughput benchmark's workflow with callbacks

WORKFLOWS = [cls for cls in paths.EVERY_WORKFLOW if not m.is_plain(cls)] + [Callbacks5]
RUNS = 3


class Stored:
    """A run as the database keeps it between changes."""

    def __init__(self, cls, data):
        self.cls, self.data = cls, data
        self.configuration, self.history, self.ended = None, {}, False


def _context(cls, stored: Stored) -> m.RunContext:
    return m.RunContext(id="run", workflow=cls.workflow_name, version=cls.version,
                        data=copy.deepcopy(stored.data), status="running")


def _view(machine, ctx, error) -> dict:
    return {"error": error, "configuration": m.configuration(machine), "history": m.remembered(machine),
            "data": ctx.data, "entered": list(ctx.entered), "exited": list(ctx.exited),
            "ended": m.is_final(machine)}


def _error(exc) -> str:
    return "refused" if isinstance(exc, TransitionNotAllowed) else f"{type(exc).__name__}: {exc}"


def _fresh(cls, stored: Stored, event, data) -> dict:
    ctx = _context(cls, stored)
    if event is None:
        try:
            machine = m.create(cls, ctx, run=ctx, db=None, data=data)
        except Exception as exc:  # noqa: BLE001 - compared with the other side's
            return {"error": _error(exc)}
        return _view(machine, ctx, None)
    machine = m.restore(cls, ctx, stored.configuration, stored.history)
    try:
        machine.send(event, **event_arguments(data), run=ctx, db=None, data=data)
        error = None
    except Exception as exc:  # noqa: BLE001
        error = _error(exc)
    return _view(machine, ctx, error)


def _lent(cls, stored: Stored, event, data) -> dict:
    ctx = _context(cls, stored)
    if event is None:
        try:
            lease = m.create_lease(cls, ctx, run=ctx, db=None, data=data)
        except Exception as exc:  # noqa: BLE001
            return {"error": _error(exc)}
    else:
        lease = m.restore_lease(cls, ctx, stored.configuration, stored.history)
    error = None
    if event is not None:
        try:
            lease.machine.send(event, **event_arguments(data), run=lease.ctx, db=None, data=data)
        except Exception as exc:  # noqa: BLE001
            error, lease.spoiled = _error(exc), True
    seen = _view(lease.machine, lease.ctx, error)
    seen = copy.deepcopy(seen)  # the lent model is reset when the machine is lent again
    m.give_back(lease)
    return seen


def _sendable(cls) -> list[str]:
    return [e for e in cls._event_ids if not e.startswith(("done_state", "done.", "error_", "error."))]


def _steps(cls):
    arguments = ARGUMENTS.get(cls, {})
    event = st.sampled_from(_sendable(cls)).flatmap(
        lambda name: st.tuples(st.just(name), arguments.get(name, st.sampled_from(paths.EVENT_DATA))))
    return st.lists(st.tuples(st.integers(0, RUNS - 1), event), max_size=24)


def _start_data(cls) -> dict:
    return {"trace": [], **paths._start_data(cls), **({"items": 1} if cls is Callbacks5 else {})}


def check(cls, steps):
    runs: list[Stored | None] = [None] * RUNS
    log = []
    for slot, (event, data) in steps:
        stored = runs[slot]
        if stored is None or stored.ended:
            stored = runs[slot] = Stored(cls, _start_data(cls))
            event, data = None, stored.data
        log.append(f"run {slot}: {'start' if event is None else f'send {event} {data}'}")
        want, got = _fresh(cls, stored, event, data), _lent(cls, stored, event, data)
        assert got == want, "\n  ".join(log) + f"\nnew machine:  {want}\nlent machine: {got}"
        if want["error"] is not None:
            if event is None:
                runs[slot] = None
            continue  # the change is rolled back: the run stays as stored
        stored.configuration, stored.history = want["configuration"], want["history"]
        stored.data, stored.ended = copy.deepcopy(want["data"]), want["ended"]


@pytest.mark.parametrize("cls", WORKFLOWS, ids=lambda c: f"{c.workflow_name}-v{c.version}")
def test_a_lent_machine_does_what_a_new_one_does(cls):
    if not _sendable(cls):
        pytest.skip("no event to send")

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(_steps(cls))
    def run(steps):
        check(cls, steps)

    run()


def test_machines_are_lent_again():
    """The pool works: a machine given back serves the next change, also after its run ended."""
    from tests.statecharts import Callbacks as cls

    stored = Stored(cls, {"trace": []})
    ctx = _context(cls, stored)
    lease = m.create_lease(cls, ctx, run=ctx, db=None, data={})
    machine = lease.machine
    lease.machine.send("abort", run=lease.ctx, db=None, data={})
    assert lease.machine.is_terminated
    m.give_back(lease)
    ctx2 = _context(cls, stored)
    again = m.restore_lease(cls, ctx2, ["idle"])
    assert again.machine is machine and not again.machine.is_terminated
    assert again.ctx is not ctx2 and again.ctx.data == ctx2.data and again.ctx.entered == []
    m.give_back(again)


def test_a_machine_a_callback_changed_is_not_lent_again():
    from tests.statecharts import Callbacks as cls

    lease = m.restore_lease(cls, _context(cls, Stored(cls, {})), ["idle"])
    lease.machine.__dict__["left_behind"] = True  # as `self.left_behind = True` in a callback would
    m.give_back(lease)
    other = m.restore_lease(cls, _context(cls, Stored(cls, {})), ["idle"])
    assert other.machine is not lease.machine and not hasattr(other.machine, "left_behind")


def test_a_class_listener_built_per_machine_means_no_reuse():
    from tests.statecharts import Listened

    declared = [entry for klass in Listened.__mro__ for entry in (vars(klass).get("listeners") or ())]
    assert m.reusable(Listened) is not any(callable(entry) for entry in declared)


def test_python_statemachine_is_the_version_range_the_reuse_was_proven_against():
    """Reviving an ended machine reads python-statemachine's engine (``_engine.running``, its
    two event queues), which it does not document: pyproject.toml pins the versions this file
    and tests/test_differential.py were run against. A new version means running them again,
    then widening the pin."""
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    pinned = next(d for d in pyproject["project"]["dependencies"] if d.startswith("python-statemachine"))
    spec = SpecifierSet(pinned.split(";")[0].removeprefix("python-statemachine"))
    assert spec == SpecifierSet(">=3.2.2,<3.3"), pinned
    assert Version(importlib.metadata.version("python-statemachine")) in spec
    from tests.statecharts import Callbacks as cls

    machine = m.restore(cls, _context(cls, Stored(cls, {})), ["idle"])
    engine = machine._engine
    assert engine.running is True and engine.external_queue.is_empty() and engine.internal_queue.is_empty()
    assert engine._root_parallel_final_pending is None
