"""Transitions taken without python-statemachine must end exactly where the machine would."""

import pytest

from engine import State, Workflow, machine as m
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
