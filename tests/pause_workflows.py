"""Workflows an operator pauses (tests/test_pauses.py)."""

from datetime import timedelta

from engine import State, Workflow, after, child, step

BOILED: dict = {}  # run id -> how many times its step ran (the worker runs in the test's process)


class Kettle(Workflow):
    """Waits to be switched on, boils (a step), then cools for an hour (a timer)."""

    name, version = "pause_kettle", 1

    idle = State(initial=True)
    boiling = State()
    cooling = State()
    done = State(final=True)

    switch_on = idle.to(boiling)
    boiled = boiling.to(cooling)
    cooled = cooling.to(done)
    descale = idle.to.itself()

    @step(boiling)
    def boil(self, run):
        BOILED[run.id] = BOILED.get(run.id, 0) + 1
        return "boiled"

    cool_down = after(timedelta(hours=1), cooling, send="cooled")

    def on_descale(self, run, data):
        if data.get("explode"):
            raise RuntimeError("the descaler exploded")
        run.data.setdefault("descaled", []).append(data.get("by"))


class Household(Workflow):
    """A parent waiting for its kettle (a child that waits for an event)."""

    name, version = "pause_household", 1

    waiting = State(initial=True)
    done = State(final=True)
    tea = waiting.to(done)

    kettle = child(waiting, workflow="pause_kettle", on_done="tea")
