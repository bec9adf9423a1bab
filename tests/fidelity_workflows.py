"""Machines written the way python-statemachine's documentation writes them, each exercising
a feature whose durable run once differed from the same machine in memory."""

from datetime import timedelta
from enum import Enum

from statemachine import HistoryState, State
from statemachine.states import States

from engine import Workflow, after, step


class Dungeon(Workflow):
    """Shallow and deep history: leaving ``realm`` and coming back resumes where it was."""

    name, version = "fidelity_history", 1

    outside = State(initial=True)

    class realm(State.Compound):
        gate = State(initial=True)

        class keep(State.Compound):
            hall = State(initial=True)
            tower = State()
            climb = hall.to(tower)

        bridge = State(final=True)
        h = HistoryState()
        deep = HistoryState(type="deep")
        h.to(gate)  # before anything is remembered
        deep.to(gate)
        enter_keep = gate.to(keep)
        cross = gate.to(bridge)

    done = State(final=True)

    enter = outside.to(realm)
    leave = realm.to(outside)
    back = outside.to(realm.h)
    back_deep = outside.to(realm.deep)
    finish = realm.to(done)


class Remembering(Workflow):
    """A history state with a default transition: the default only until something is remembered."""

    name, version = "fidelity_history_default", 1

    idle = State(initial=True)

    class work(State.Compound):
        a = State(initial=True)
        b = State()
        h = HistoryState()
        step_on = a.to(b)
        h.to(a)  # where to go the first time, before anything is remembered

    done = State(final=True)

    pause = work.to(idle)
    resume = idle.to(work.h)
    finish = work.to(done)


class Realm(Workflow):
    """A final child of a compound state is not the end of the run."""

    name, version = "fidelity_final_child", 1

    class realm(State.Compound):
        road = State(initial=True)
        bridge = State(final=True)
        walk = road.to(bridge)

    home = State(final=True)
    go_home = realm.to(home)


class Status(Enum):
    pending = 1
    approved = 2
    rejected = 3


class EnumApproval(Workflow):
    """States from an Enum with int values, as python-statemachine's docs declare them."""

    name, version = "fidelity_enum", 1

    _ = States.from_enum(Status, initial=Status.pending, final=[Status.approved, Status.rejected])

    approve = _.pending.to(_.approved)
    reject = _.pending.to(_.rejected)
    remind = after(timedelta(days=1), _.pending, send="reject")

    def on_enter_approved(self, run):
        run.data["approved"] = True


class Heartbeat(Workflow):
    """An internal self-transition that re-enters (``enable_self_transition_entries``): its timer
    is armed again and the old one cancelled, with or without callbacks."""

    name, version = "fidelity_self_plain", 1
    enable_self_transition_entries = True

    alive = State(initial=True)
    dead = State(final=True)

    beat = alive.to.itself(internal=True)
    die = alive.to(dead)
    silence = after(timedelta(minutes=5), alive, send="die")


class HeartbeatWithCallback(Heartbeat):
    name, version = "fidelity_self_callback", 1

    def after_die(self, run):
        run.data["died"] = True


class Forwarding(Workflow):
    """Guards and callbacks of eventless transitions and of raised events get ``run`` too."""

    name, version = "fidelity_run_everywhere", 1

    start = State(initial=True)
    checking = State()
    ready = State()
    done = State(final=True)

    go = start.to(checking)
    checking.to(ready, cond="has_ticket")  # eventless
    proceed = ready.to(done)

    def has_ticket(self, run):
        run.data["guard_saw_run"] = run.id
        return True

    def on_enter_ready(self, run):
        self.raise_("proceed")

    def on_proceed(self, run):
        run.data["raised_saw_run"] = run.id


class Tolerant(Workflow):
    """StateChart behaviour: events without a transition are ignored, also after the end."""

    name, version = "fidelity_tolerant", 1
    allow_event_without_transition = True

    open = State(initial=True)
    ajar = State()
    closed = State(final=True)

    close = open.to(closed) | ajar.to(closed)
    nudge = open.to(ajar)
    push = ajar.to(open)  # declared, but not allowed in `open`


class GuessingGame(Workflow):
    """python-statemachine's style: an event's arguments reach callbacks by name."""

    name, version = "fidelity_guess", 1

    playing = State(initial=True)
    won = State(final=True)

    guess = playing.to(won, cond="is_right") | playing.to.itself(internal=True)

    def is_right(self, run, number):
        return number == run.data["number"]

    def on_guess(self, run, number):
        run.data.setdefault("answers", []).append(
            "won" if number == run.data["number"] else "low" if number < run.data["number"] else "high")


class AsyncFetch(Workflow):
    """A step that is a coroutine function (an async HTTP client, say)."""

    name, version = "fidelity_async_step", 1

    fetching = State(initial=True)
    done = State(final=True)
    fetched = fetching.to(done)

    @step(fetching, retries=1, backoff=timedelta(seconds=0))
    async def fetch(self, run):
        import asyncio
        await asyncio.sleep(0.01)
        if run.attempt == 1 and run.data.get("fail_first"):
            raise ConnectionError("the service hung up")
        return {"body": f"fetched on attempt {run.attempt}"}


class SlowAsync(Workflow):
    """An async step that outlives its time limit."""

    name, version = "fidelity_async_slow", 1

    waiting = State(initial=True)
    done = State(final=True)
    timed_out = State(final=True)
    finished = waiting.to(done)
    gave_up = waiting.to(timed_out)
    final_status = {"timed_out": "failed"}

    @step(waiting, retries=0, time_limit=timedelta(seconds=0.3), on_error="gave_up")
    async def hang(self, run):
        import asyncio
        await asyncio.sleep(60)
