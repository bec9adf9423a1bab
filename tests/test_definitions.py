"""Mistakes in a workflow definition fail when the class is created, not on the first run."""

from datetime import timedelta

import pytest

from engine import (DefinitionError, State, Workflow, WorkflowNotFound, activity, after, step,
                    trigger)
from engine.registry import Registry
from tests import workflows as tw


def test_a_well_formed_workflow_collects_its_steps_timers_and_triggers():
    class Shipment(Workflow):
        name, version = "def_shipment", 3

        packing = State(initial=True)
        shipped = State()
        delivered = State(final=True)
        lost = State(final=True)

        pack = packing.to(shipped)
        deliver = shipped.to(delivered)
        lose = shipped.to(lost)

        @step(packing)
        def do_pack(self, run):
            return None

        @step("shipped", on_error="lose", default="deliver")
        def track(self, run):
            return None

        give_up = after(timedelta(days=7), shipped, send="lose")
        watch = trigger("signal", send="lose", states=[shipped])
        final_status = {"lost": "failed"}

    assert Shipment.name == "def_shipment"
    assert Shipment.version == 3
    assert Shipment.step_for("packing").name == "do_pack"
    # A state left by exactly one event defaults to it.
    assert Shipment.step_for("packing").default == "pack"
    assert Shipment.step_for("shipped").on_error == "lose"
    assert Shipment.step_for("delivered") is None
    assert [(t.name, t.state_id, t.delay) for t in Shipment._timers] == [
        ("give_up", "shipped", timedelta(days=7).total_seconds())]
    assert [(t.name, t.state_ids) for t in Shipment._triggers] == [("watch", ("shipped",))]
    assert Shipment.status_of_final("lost") == "failed"
    assert Shipment.status_of_final("delivered") == "succeeded"


def test_step_on_a_state_of_another_workflow_is_rejected():
    with pytest.raises(DefinitionError, match="not a state of this workflow"):
        class Other(Workflow):
            name, version = "def_other", 1

            start = State(initial=True)
            end = State(final=True)

            go = start.to(end)

            @step(tw.Approval.pending)
            def work(self, run):
                return None


def test_step_on_a_same_named_state_of_another_workflow_is_rejected():
    # The pipeline also has a state called "fetching": it is still not this workflow's state.
    with pytest.raises(DefinitionError, match="not a state of this workflow"):
        class Lookalike(Workflow):
            name, version = "def_lookalike", 1

            fetching = State(initial=True)
            done = State(final=True)

            fetched = fetching.to(done)

            @step(tw.Pipeline.fetching)
            def fetch(self, run):
                return None


def test_step_on_a_misspelled_state_id_is_rejected():
    with pytest.raises(DefinitionError, match="unknown state 'shiped'"):
        class Misspelled(Workflow):
            name, version = "def_misspelled", 1

            shipped = State(initial=True)
            done = State(final=True)

            finish = shipped.to(done)

            @step("shiped")
            def track(self, run):
                return None


def test_two_steps_on_one_state_are_rejected():
    with pytest.raises(DefinitionError, match="two steps"):
        class Doubled(Workflow):
            name, version = "def_doubled", 1

            working = State(initial=True)
            done = State(final=True)

            finish = working.to(done)

            @step(working)
            def first(self, run):
                return None

            @step("working")
            def second(self, run):
                return None


def test_step_on_a_final_state_is_rejected():
    with pytest.raises(DefinitionError, match="final state 'done'"):
        class StepAtTheEnd(Workflow):
            name, version = "def_final_step", 1

            working = State(initial=True)
            done = State(final=True)

            finish = working.to(done)

            @step(done)
            def after_the_end(self, run):
                return None


def test_timer_on_a_final_state_is_rejected():
    with pytest.raises(DefinitionError, match="final state 'done'"):
        class TimerAtTheEnd(Workflow):
            name, version = "def_final_timer", 1

            working = State(initial=True)
            done = State(final=True)

            finish = working.to(done)
            late = after(10, done, send="finish")


def test_timer_sending_an_unknown_event_is_rejected():
    with pytest.raises(DefinitionError, match="timer late sends unknown event 'expire'"):
        class BadTimer(Workflow):
            name, version = "def_bad_timer", 1

            waiting = State(initial=True)
            done = State(final=True)

            finish = waiting.to(done)
            late = after(timedelta(hours=1), waiting, send="expire")


def test_trigger_sending_an_unknown_event_is_rejected():
    with pytest.raises(DefinitionError, match="trigger watch sends unknown event 'alarm'"):
        class BadTrigger(Workflow):
            name, version = "def_bad_trigger", 1

            waiting = State(initial=True)
            done = State(final=True)

            finish = waiting.to(done)
            watch = trigger("level", send="alarm")


def test_trigger_on_an_unknown_state_is_rejected():
    with pytest.raises(DefinitionError, match="unknown state 'nowhere'"):
        class BadTriggerState(Workflow):
            name, version = "def_bad_trigger_state", 1

            waiting = State(initial=True)
            done = State(final=True)

            finish = waiting.to(done)
            watch = trigger("level", send="finish", states=["nowhere"])


@pytest.mark.parametrize("option", ["on_error", "default"])
def test_step_naming_an_unknown_event_is_rejected(option):
    with pytest.raises(DefinitionError, match=f"step work {option} sends unknown event 'explode'"):
        class BadStep(Workflow):
            name, version = "def_bad_step", 1

            working = State(initial=True)
            done = State(final=True)

            finish = working.to(done)

            @step(working, **{option: "explode"})
            def work(self, run):
                return None


@pytest.mark.parametrize("reserved", ["prepare", "id", "states"])
@pytest.mark.parametrize("kind", ["step", "activity", "timer", "trigger"])
def test_a_name_the_state_machine_uses_itself_is_rejected(reserved, kind):
    # python-statemachine sets these on the class itself: the declaration would silently vanish.
    start, end = State(initial=True), State(final=True)
    declared = {
        "step": lambda: step(start)(lambda self, run: None),
        "activity": lambda: activity(start, name="def_reserved"),
        "timer": lambda: after(5, start, send="go"),
        "trigger": lambda: trigger("level", send="go"),
    }[kind]()
    with pytest.raises(DefinitionError, match=f"'{reserved}' is a name python-statemachine uses"):
        type("Shadowed", (Workflow,), {"name": "def_shadowed", "version": 1, "start": start,
                                       "end": end, "go": start.to(end), reserved: declared})


def test_missing_name_is_rejected():
    with pytest.raises(DefinitionError, match="set `name"):
        class Nameless(Workflow):
            version = 1

            start = State(initial=True)
            end = State(final=True)

            go = start.to(end)


@pytest.mark.parametrize("version", [None, 0, "1", 1.5])
def test_missing_or_malformed_version_is_rejected(version):
    attrs = {} if version is None else {"version": version}
    with pytest.raises(DefinitionError, match="set `version`"):
        type("Versionless", (Workflow,), {
            "name": "def_versionless", **attrs,
            "start": (start := State(initial=True)),
            "end": (end := State(final=True)),
            "go": start.to(end),
        })


def test_an_invalid_state_machine_is_a_definition_error():
    with pytest.raises(DefinitionError, match="unreachable"):
        class Orphaned(Workflow):
            name, version = "def_orphaned", 1

            start = State(initial=True)
            end = State(final=True)
            orphan = State()

            go = start.to(end)


def test_final_status_must_name_a_final_state_and_a_final_status():
    with pytest.raises(DefinitionError, match="not a final state"):
        class WrongState(Workflow):
            name, version = "def_final_status_state", 1

            start = State(initial=True)
            end = State(final=True)

            go = start.to(end)
            final_status = {"start": "failed"}

    with pytest.raises(DefinitionError, match="is not one of"):
        class WrongStatus(Workflow):
            name, version = "def_final_status_value", 1

            start = State(initial=True)
            end = State(final=True)

            go = start.to(end)
            final_status = {"end": "exploded"}


@pytest.mark.parametrize("make", [
    lambda: step("working", retries=-1)(lambda self, run: None),
    lambda: step("working", backoff=-1)(lambda self, run: None),
    lambda: step("working", time_limit=timedelta(seconds=-1))(lambda self, run: None),
    lambda: after(-5, "waiting", send="finish"),
    lambda: after("soon", "waiting", send="finish"),
    lambda: trigger("total", send="finish", when="not callable"),
])
def test_bad_options_are_rejected_where_they_are_written(make):
    with pytest.raises(DefinitionError):
        make()


# -- the registry ------------------------------------------------------------------------


def _workflow(class_name, name, version):
    start, end = State(initial=True), State(final=True)
    return type(class_name, (Workflow,), {"name": name, "version": version,
                                          "start": start, "end": end, "go": start.to(end)})


def test_registry_rejects_two_classes_with_the_same_name_and_version():
    first, second = _workflow("First", "def_twins", 1), _workflow("Second", "def_twins", 1)
    registry = Registry()
    registry.add(first)
    registry.add(first)  # the same class again is harmless
    with pytest.raises(DefinitionError, match="defined twice"):
        registry.add(second)
    assert registry.get("def_twins") is first


def test_versions_load_side_by_side_and_the_latest_is_the_default():
    registry = Registry().load_modules(["tests.workflows"])
    assert registry.versions("test_versioned") == [1, 2]
    assert registry.get("test_versioned") is tw.VersionedV2
    assert registry.get("test_versioned", 2) is tw.VersionedV2
    assert registry.get("test_versioned", 1) is tw.VersionedV1
    assert "test_pipeline" in registry.names()


def test_registry_lookups_of_unknown_workflows_raise_workflow_not_found():
    registry = Registry().load_modules(["tests.workflows"])
    with pytest.raises(WorkflowNotFound) as missing_version:
        registry.get("test_versioned", 3)
    assert (missing_version.value.name, missing_version.value.version) == ("test_versioned", 3)
    with pytest.raises(WorkflowNotFound):
        registry.get("no_such_workflow")
    with pytest.raises(WorkflowNotFound):
        registry.get("test_versioned", "two")


def test_loading_a_module_twice_into_one_registry_is_harmless():
    registry = Registry().load_modules(["tests.workflows"]).load_modules(["tests.workflows"])
    assert registry.versions("test_versioned") == [1, 2]
