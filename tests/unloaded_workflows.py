"""Workflows a test worker deliberately does not load (``tests.unloaded_workflows``): one run of
each needs a different reconciler duty, due timer, outbox send or lost task."""

from datetime import timedelta

from engine import State, Workflow, activity, after, step


class HeldTimer(Workflow):
    """A timer due at once, then a step."""

    name, version = "test_unloaded_timer", 1

    held = State(initial=True)
    releasing = State()
    done = State(final=True)

    release = held.to(releasing)
    released = releasing.to(done)

    due_now = after(0, held, send="release")

    @step(releasing, retries=0)
    def finish(self, run):
        return {"finished": True}


class FirstStep(Workflow):
    """A step on entry: started by a process without a worker, its task waits in the outbox."""

    name, version = "test_unloaded_step", 1

    working = State(initial=True)
    done = State(final=True)

    worked = working.to(done)

    @step(working, retries=0)
    def work(self, run):
        return {"worked": True}


class Review(Workflow):
    """An activity: a receiver that never answers leaves a lost task."""

    name, version = "test_unloaded_activity", 1

    reviewing = State(initial=True)
    done = State(final=True)

    approve = reviewing.to(done)

    review = activity(reviewing, name="test_unloaded_review", retries=2,
                      visibility_timeout=timedelta(seconds=30), default="approve")
