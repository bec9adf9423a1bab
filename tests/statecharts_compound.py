"""Machines for the differential test: compound and parallel states, history states,
``done.state`` events and ``In()`` conditions, written as python-statemachine's documentation
writes them (see tests/statecharts.py for the conventions)."""

from statemachine import HistoryState

from engine import State, Workflow
from tests.statecharts import note


class Tracing:
    """Exit and entry of every level, in the order python-statemachine runs them."""

    def on_exit_state(self, state):
        note(self, f"exit {state.id}")

    def on_enter_state(self, state):
        note(self, f"enter {state.id}")


class Journey(Tracing, Workflow):
    """Compound states: transitions across their boundaries, a child's transition winning
    over its ancestor's for the same event, ``done.state`` with ``donedata``, and a final
    child with no ``done.state`` transition, which does not end the machine."""

    name, version = "sc_compound", 1

    class shire(State.Compound):
        bag_end = State(initial=True)
        green_dragon = State()
        packed = State(final=True, donedata="packing_list")

        visit_pub = bag_end.to(green_dragon)
        go_home = green_dragon.to(bag_end)
        pack = bag_end.to(packed) | green_dragon.to(packed)

    class road(State.Compound):
        walking = State(initial=True)
        resting = State()
        arrived = State(final=True)

        rest = walking.to(resting)
        walk = resting.to(walking)
        arrive = walking.to(arrived)

    mordor = State(final=True)

    done_state_shire = shire.to(road, on="set_off")
    shortcut = shire.bag_end.to(road.resting)
    rest = shire.to(road)  # a child of road has its own ``rest``: that one wins there
    turn_back = road.to(shire)
    climb = road.to(mordor)

    def packing_list(self):
        return {"items": len(self.model.data.get("trace", []))}

    def set_off(self, items=None):
        note(self, f"set off with {items}")
        self.model.data["items"] = items

    def on_rest(self, source):
        note(self, f"rest from {source.id}")


class Spaceship(Tracing, Workflow):
    """A parallel state whose regions move independently; ``In()`` in a condition."""

    name, version = "sc_parallel", 1

    class systems(State.Parallel):
        class engine(State.Compound):
            off = State(initial=True)
            on = State()
            ignite = off.to(on)
            shut_down = on.to(off)

        class hatch(State.Compound):
            open = State(initial=True)
            sealed = State()
            seal = open.to(sealed)
            unseal = sealed.to(open)

    orbit = State(final=True)

    launch = systems.to(orbit, cond="In('on') and In('sealed')")

    def on_ignite(self):
        note(self, "ignite")
        self.model.data["ignitions"] = self.model.data.get("ignitions", 0) + 1


class War(Tracing, Workflow):
    """``done.state`` of a parallel state: it fires once every region reached a final state."""

    name, version = "sc_parallel_done", 1

    class war(State.Parallel):
        class quest(State.Compound):
            start_q = State(initial=True)
            end_q = State(final=True)
            finish_q = start_q.to(end_q)

        class battle(State.Compound):
            start_b = State(initial=True)
            regroup = State()
            end_b = State(final=True)
            retreat = start_b.to(regroup)
            rally = regroup.to(start_b)
            finish_b = start_b.to(end_b)

    peace = State(final=True)

    done_state_war = war.to(peace, on="celebrate")

    def celebrate(self):
        note(self, "celebrate")


class Player(Tracing, Workflow):
    """History pseudo-states: shallow (``HistoryState()``) restores ``mode``'s last child,
    deep (``HistoryState(type="deep")``) its last leaf in the nested compound; before anything
    is remembered, each takes its default transition."""

    name, version = "sc_history", 1

    standby = State(initial=True)

    class mode(State.Compound):
        class playing(State.Compound):
            track_one = State(initial=True)
            track_two = State()
            skip = track_one.to(track_two) | track_two.to(track_one)

        tuning = State()
        shallow = HistoryState()
        deep = HistoryState(type="deep")

        configure = playing.to(tuning)
        play = tuning.to(playing)
        shallow.to(tuning)
        deep.to(playing.track_two)

    off = State(final=True)

    sleep = mode.to(standby)
    wake = standby.to(mode.shallow)
    wake_exactly = standby.to(mode.deep)
    wake_fresh = standby.to(mode)
    power_off = standby.to(off)
