"""A run must behave exactly as the same python-statemachine machine does in memory.

Each machine of tests/statecharts.py and tests/statecharts_compound.py (together they use
every feature python-statemachine documents) is driven by the same random event sequence
twice: as a plain machine in memory, ``Cls(model=MemoryModel(data=...))``, and as a run of
the engine on SQLite, with the engine restarted (a new ``Interlock``) before some events.
After the start and after every event both sides must agree on: accepted, refused or error;
the configuration (state ids); the data, whose ``trace`` lists the callbacks in the order
they ran; and whether the machine ended.

A callback that raises leaves an in-memory machine halfway through its microstep, while a run
rolls the whole event back. So after an error the in-memory machine is put back as it was
before the event (rebuilt by sending the events it accepted before), and the run must be
unchanged too.
"""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from statemachine.exceptions import TransitionNotAllowed

from engine import CallbackError, DefinitionError, InvalidTransition, RunNotActive, State, Workflow
from engine.config import Settings
from engine.db import Database
from engine.runtime import Interlock
from tests import statecharts as flat
from tests import statecharts_compound as nested

MODULES = "tests.statecharts,tests.statecharts_compound"
START_DATA = {"trace": []}
ACTIVE = ("running", "waiting")

MACHINES = [flat.Callbacks, flat.Guesses, flat.Loops, flat.LoopsWithEntries, flat.Tolerant,
            flat.Fragile, flat.Resilient, flat.Escalation, flat.Chain, flat.Listened,
            flat.EnumStates, flat.Campaign, flat.RunAware,
            nested.Journey, nested.Spaceship, nested.War, nested.Player]


def optional(**arguments):
    """Keyword arguments, each present or not."""
    return st.fixed_dictionaries({}, optional=arguments)


# The keyword arguments an event may carry, by machine and event.
ARGUMENTS = {
    flat.Guesses: {"guess": optional(number=st.integers(5, 8)),
                   "give_up": optional(reason=st.sampled_from(["", "bored"]))},
    flat.Tolerant: {"unlock": optional(badge=st.booleans())},
    flat.Fragile: {"risky": optional(fail_at=st.sampled_from(flat.FAIL_POINTS))},
    flat.Resilient: {"work": optional(fail=st.booleans()), "repair": optional(fail=st.booleans()),
                     "stop": optional(force=st.booleans())},
    flat.Escalation: {"report": optional(severity=st.integers(1, 2))},
    flat.Chain: {"begin": optional(hold=st.booleans())},
}


def external_events(cls) -> list[str]:
    """The events a caller sends: not the ones the machine raises itself."""
    internal = ("done_state", "done.", "error_", "error.")
    return [e.id for e in cls.events if not e.id.startswith(internal)]


def sequences(cls):
    """(event, keyword arguments, restart the engine before it) lists."""
    arguments = ARGUMENTS.get(cls, {})
    event = st.sampled_from(external_events(cls)).flatmap(
        lambda name: st.tuples(st.just(name), arguments.get(name, st.just({}))))
    restart = st.integers(0, 4).map(lambda n: n == 0)
    return st.lists(st.tuples(event, restart), max_size=12)


class MemoryModel:
    """The model of an in-memory machine: only the data its callbacks write."""

    def __init__(self, data):
        self.data = data


class MemoryModelWithRun(MemoryModel):
    """Hands itself to every callback as ``run``, the way the engine hands over the run."""

    def prepare_event(self):
        return {"run": self}


class InMemory:
    def __init__(self, cls):
        self.cls = cls
        self.machine = self._new()
        self.accepted: list = []  # to rebuild the machine as it was before a failed event

    def _new(self):
        model = MemoryModelWithRun if self.cls is flat.RunAware else MemoryModel
        return self.cls(model=model(data=copy.deepcopy(START_DATA)))

    def send(self, event, arguments) -> str:
        try:
            self.machine.send(event, **arguments)
        except TransitionNotAllowed:
            return "refused"
        except Exception:
            # What a run does: the failed event leaves nothing behind. (A machine with a
            # history state cannot be deep-copied, so it is rebuilt from the events before.)
            self.machine = self._new()
            for earlier, earlier_arguments in self.accepted:
                self.machine.send(earlier, **earlier_arguments)
            return "error"
        self.accepted.append((event, arguments))
        return "accepted"

    def view(self) -> dict:
        return {"configuration": {s.id for s in self.machine.configuration},
                "data": self.machine.model.data, "ended": self.machine.is_terminated}


class Engines:
    """The engine over one database, restarted on demand."""

    def __init__(self, settings):
        self.settings = settings
        self.rt = Interlock(settings)

    def restart(self):
        """A new engine: nothing from the old one's memory survives (the schema check, a
        third of a restart's cost, has nothing to do with it)."""
        self.rt.close()
        self.rt = Interlock(self.settings, check_schema=False)

    def close(self):
        self.rt.close()


class Durable:
    def __init__(self, engines: Engines, cls):
        self.engines = engines
        self.run_id = engines.rt.start(cls.workflow_name, copy.deepcopy(START_DATA)).id

    def send(self, event, arguments, restart) -> str:
        if restart:
            self.engines.restart()
        try:
            self.engines.rt.send(self.run_id, event, arguments)
        except (InvalidTransition, RunNotActive):
            return "refused"
        except CallbackError:
            return "error"
        return "accepted"

    def view(self) -> dict:
        run = self.engines.rt.get(self.run_id)
        return {"configuration": set(run.configuration), "data": run.data,
                "ended": run.status not in ACTIVE}


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('differential') / 'interlock.db'}"
    Database(url).upgrade()
    engines = Engines(Settings(database_url=url, broker_url="memory://", workflows=MODULES,
                               queue="interlock_differential"))
    yield engines
    engines.close()


def compare(memory: InMemory, durable: Durable, log: list):
    want, got = memory.view(), durable.view()
    where = "\n  ".join(log)
    for key in ("configuration", "data", "ended"):
        assert got[key] == want[key], f"{key} differs after\n  {where}\nin memory: {want[key]}\nrun:       {got[key]}"
    return want


def check_sequence(engines, cls, sequence):
    log = [f"start {cls.__name__}"]
    memory, durable = InMemory(cls), Durable(engines, cls)
    compare(memory, durable, log)
    for (event, arguments), restart in sequence:
        before = copy.deepcopy(memory.view())
        want = memory.send(event, arguments)
        got = durable.send(event, arguments, restart)
        log.append(f"{'(restart) ' if restart else ''}send {event} {arguments}: "
                   f"in memory {want}, run {got}")
        assert got == want, "outcome differs after\n  " + "\n  ".join(log)
        after = compare(memory, durable, log)
        if want != "accepted":
            assert after == before, "a refused or failed event changed something:\n  " + "\n  ".join(log)


@pytest.mark.parametrize("cls", MACHINES, ids=lambda cls: cls.workflow_name)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_run_does_what_the_machine_does_in_memory(engines, cls, data):
    check_sequence(engines, cls, data.draw(sequences(cls), label="events"))


def test_every_machine_is_in_the_differential_test():
    workflows = [obj for module in (flat, nested) for obj in vars(module).values()
                 if isinstance(obj, type) and issubclass(obj, Workflow) and obj.__module__ == module.__name__]
    assert sorted(cls.__name__ for cls in workflows) == sorted(cls.__name__ for cls in MACHINES)


def test_an_async_callback_is_refused_when_the_class_is_created():
    with pytest.raises(DefinitionError):
        class AsyncEntry(Workflow):
            name, version = "sc_async_entry", 1

            waiting = State(initial=True)
            done = State(final=True)

            finish = waiting.to(done)

            async def on_enter_waiting(self):
                pass
