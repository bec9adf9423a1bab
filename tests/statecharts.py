"""Machines for the differential test (tests/test_differential.py): flat machines, one per
group of python-statemachine features, each written the way its documentation writes them.

The same class runs in memory (``Cls(model=...)``) and as a run. Callbacks record what they do
in ``self.model.data["trace"]`` and may change other data keys; the test compares the whole
data dict. Compound, parallel and history machines are in tests/statecharts_compound.py.
"""

from enum import Enum
from functools import partial

from statemachine.states import States

from engine import State, Workflow


def note(machine, text: str) -> None:
    machine.model.data.setdefault("trace", []).append(text)


def bump(machine, key: str) -> None:
    machine.model.data[key] = machine.model.data.get(key, 0) + 1


class Callbacks(Workflow):
    """Before/on/after on events, enter/exit on states: generic, inline, decorator and naming
    convention, in python-statemachine's order; ``from_.any()``."""

    name, version = "sc_callbacks", 1

    idle = State(initial=True, enter="greet")
    working = State(exit="stop_clock")
    paused = State()
    done = State(final=True)
    aborted = State(final=True)

    start = idle.to(working, before="check_in", on="begin", after="started")
    pause = working.to(paused)
    resume = paused.to(working)
    finish = working.to(done) | paused.to(done)
    abort = aborted.from_.any()

    def before_transition(self, event, source):
        note(self, f"before_transition {event} {source.id}")

    def on_transition(self, event, source, target):
        note(self, f"on_transition {event} {source.id}->{target.id}")

    def after_transition(self, event, target):
        note(self, f"after_transition {event} {target.id}")

    def on_exit_state(self, state):
        note(self, f"exit_state {state.id}")

    def on_enter_state(self, state, event):
        note(self, f"enter_state {state.id} {event}")

    def greet(self):
        note(self, "greet")

    def stop_clock(self):
        note(self, "stop_clock")
        bump(self, "shifts")

    def check_in(self):
        note(self, "check_in")

    def begin(self):
        note(self, "begin")

    def started(self):
        note(self, "started")

    def before_pause(self):
        note(self, "before_pause")

    def on_pause(self):
        note(self, "on_pause")

    def after_pause(self):
        note(self, "after_pause")

    def on_enter_working(self):
        note(self, "enter_working")

    def on_exit_working(self):
        note(self, "exit_working")

    def on_enter_done(self):
        note(self, "enter_done")

    @resume.on
    def back_to_work(self):
        note(self, "back_to_work")

    @paused.enter
    def take_break(self):
        note(self, "take_break")
        bump(self, "breaks")

    @paused.exit
    def end_break(self):
        note(self, "end_break")

    @finish.after
    def wrap_up(self):
        note(self, "wrap_up")


class Guesses(Workflow):
    """Conditions (``cond``, ``unless``, expressions), a validator, one event with several
    guarded transitions tried in order, and ``prepare_event``; event arguments by name."""

    name, version = "sc_guesses", 1
    secret = 7

    guessing = State(initial=True)
    won = State(final=True)
    lost = State(final=True)

    guess = (guessing.to(won, cond="is_right")
             | guessing.to(lost, cond="misses >= 3")
             | guessing.to.itself(internal=True, on="count_miss"))
    hint = guessing.to.itself(internal=True, unless="hints_used_up", on="give_hint")
    give_up = guessing.to(lost, validators="has_reason", cond="misses > 0 and not hints_used_up")

    @property
    def misses(self):
        return self.model.data.get("misses", 0)

    @property
    def hints_used_up(self):
        return self.model.data.get("hints", 0) >= 2

    def prepare_event(self, number=None):
        return {} if number is None else {"distance": abs(number - self.secret)}

    def is_right(self, number=None):
        return number == self.secret

    def count_miss(self, number=None, distance=None):
        note(self, f"miss {number} by {distance}")
        bump(self, "misses")

    def give_hint(self):
        note(self, "hint")
        bump(self, "hints")

    def has_reason(self, reason=""):
        if not reason:
            raise ValueError("giving up needs a reason")

    def on_give_up(self, reason=""):
        note(self, f"gave up: {reason}")

    def on_enter_won(self, number=None):
        note(self, f"won with {number}")


class Loops(Workflow):
    """A self-transition (``to.itself()``: exits and re-enters its state) and an internal one
    (``internal=True``: neither)."""

    name, version = "sc_loops", 1

    counting = State(initial=True)
    done = State(final=True)

    again = counting.to.itself(on="count")
    tick = counting.to.itself(internal=True, on="count")
    stop = counting.to(done)

    def on_enter_counting(self):
        note(self, "enter_counting")
        bump(self, "entries")

    def on_exit_counting(self):
        note(self, "exit_counting")

    def before_again(self):
        note(self, "before_again")

    def after_again(self):
        note(self, "after_again")

    def count(self, event):
        note(self, f"count on {event}")
        bump(self, "count")


class LoopsWithEntries(Loops):
    """``enable_self_transition_entries``: the internal self-transition runs the state's entry
    callbacks too (python-statemachine 3.2.2: entry only, no exit)."""

    name, version = "sc_loops_entries", 1
    enable_self_transition_entries = True


class Tolerant(Workflow):
    """``allow_event_without_transition``: events with no transition (a refused guard, the
    wrong state, after the end) are accepted and ignored."""

    name, version = "sc_tolerant", 1
    allow_event_without_transition = True

    locked = State(initial=True)
    unlocked = State()
    gone = State(final=True)

    unlock = locked.to(unlocked, cond="has_badge")
    lock = unlocked.to(locked)
    leave = unlocked.to(gone)

    def has_badge(self, badge=False):
        return badge

    def on_enter_unlocked(self):
        note(self, "enter_unlocked")
        bump(self, "openings")

    def on_enter_locked(self):
        note(self, "enter_locked")

    def on_leave(self):
        note(self, "leave")


FAIL_POINTS = ("", "validator", "before", "exit", "on", "enter", "after")


class Fragile(Workflow):
    """A callback that raises propagates (``catch_errors_as_events`` off): the event fails at
    the point its ``fail_at`` argument names, after the callbacks before it changed data."""

    name, version = "sc_fragile", 1

    first = State(initial=True)
    second = State()
    third = State(final=True)

    risky = first.to(second, validators="not_forbidden") | second.to(third, validators="not_forbidden")
    safe = second.to(first)

    def _step(self, where, fail_at):
        note(self, where)
        bump(self, "steps")
        if fail_at == where:
            raise RuntimeError(f"failed in {where}")

    def not_forbidden(self, fail_at=""):
        if fail_at == "validator":
            raise ValueError("forbidden")

    def before_risky(self, fail_at=""):
        self._step("before", fail_at)

    def on_exit_first(self, fail_at=""):
        self._step("exit", fail_at)

    def on_exit_second(self, fail_at=""):
        self._step("exit", fail_at)

    def on_risky(self, fail_at=""):
        self._step("on", fail_at)

    def on_enter_second(self, fail_at=""):
        self._step("enter", fail_at)

    def on_enter_third(self, fail_at=""):
        self._step("enter", fail_at)

    def after_risky(self, fail_at=""):
        self._step("after", fail_at)

    def on_safe(self):
        note(self, "safe")


class Resilient(Workflow):
    """``catch_errors_as_events``: an action's error becomes ``error.execution``, which a
    transition takes (with ``error``); ``after`` still runs; validators still propagate."""

    name, version = "sc_resilient", 1
    catch_errors_as_events = True

    working = State(initial=True)
    broken = State()
    stopped = State(final=True)

    work = working.to.itself(on="do_work")
    error_execution = working.to(broken, on="log_error")
    repair = broken.to(working)
    stop = working.to(stopped, validators="may_stop") | broken.to(stopped)

    def do_work(self, fail=False):
        note(self, "do_work")
        bump(self, "work")
        if fail:
            raise RuntimeError("work failed")

    def after_work(self):
        note(self, "after_work")

    def log_error(self, error):
        note(self, f"error: {error}")
        self.model.data["last_error"] = str(error)

    def on_enter_working(self, fail=False):
        note(self, "enter_working")
        if fail:
            raise RuntimeError("repair failed")

    def on_enter_broken(self):
        note(self, "enter_broken")

    def may_stop(self, force=False):
        if not force:
            raise ValueError("still working")


class Escalation(Workflow):
    """Eventless transitions: one guarded (fires once its condition holds), one unconditional."""

    name, version = "sc_eventless", 1

    normal = State(initial=True)
    escalated = State()
    reviewing = State()
    closed = State(final=True)

    normal.to(escalated, cond="should_escalate")
    escalated.to(reviewing)
    report = normal.to.itself(internal=True, on="add_report")
    approve = reviewing.to(closed)
    reject = reviewing.to(normal, on="reset_reports")

    def should_escalate(self):
        return self.model.data.get("reports", 0) >= 3

    def add_report(self, severity=1):
        note(self, f"report {severity}")
        self.model.data["reports"] = self.model.data.get("reports", 0) + severity

    def reset_reports(self):
        note(self, "reset")
        self.model.data["reports"] = 0

    def on_enter_state(self, state, event):
        note(self, f"enter {state.id} on {event}")


class Chain(Workflow):
    """Internal events with ``raise_()``: one ``send`` runs the chain to a stable state; the
    raised event carries arguments."""

    name, version = "sc_raise", 1

    idle = State(initial=True)
    extracting = State()
    transforming = State()
    loaded = State(final=True)

    begin = idle.to(extracting)
    advance_1 = extracting.to(transforming)
    advance_2 = transforming.to(loaded)
    redo = transforming.to(idle)

    def on_enter_extracting(self, hold=False):
        note(self, "extract")
        self.raise_("advance_1", hold=hold)

    def on_enter_transforming(self, hold=False):
        note(self, f"transform hold={hold}")
        bump(self, "transforms")
        if not hold:
            self.raise_("advance_2")

    def on_enter_loaded(self, event):
        note(self, f"loaded on {event}")


class AuditListener:
    """A class-level listener: it sees every transition and entry, and writes to the model."""

    def __init__(self, prefix="audit"):
        self.prefix = prefix

    def after_transition(self, event, source, target, model):
        model.data.setdefault("trace", []).append(f"{self.prefix}: {source.id} -{event}-> {target.id}")

    def on_enter_state(self, state, model):
        model.data.setdefault("trace", []).append(f"{self.prefix}: enter {state.id}")


class Listened(Workflow):
    """``listeners``: a listener class and a ``functools.partial`` factory, one per machine."""

    name, version = "sc_listeners", 1
    listeners = [AuditListener, partial(AuditListener, prefix="second")]

    draft = State(initial=True)
    review = State()
    published = State(final=True)

    submit = draft.to(review)
    reject = review.to(draft)
    publish = review.to(published)

    def on_submit(self):
        note(self, "submit")
        bump(self, "submissions")


class Status(Enum):
    pending = 1
    approved = 2
    completed = 3


class EnumStates(Workflow):
    """States from an Enum (``States.from_enum``): each state's value is the Enum member."""

    name, version = "sc_enum", 1

    _ = States.from_enum(Status, initial=Status.pending, final=Status.completed)

    approve = _.pending.to(_.approved)
    reopen = _.approved.to(_.pending)
    complete = _.approved.to(_.completed)

    def on_enter_state(self, state):
        note(self, f"enter {state.id} ({state.value.name})")

    def on_enter_completed(self):
        note(self, "completed")


class Campaign(Workflow):
    """States with custom values (``State(value=...)``) and display names."""

    name, version = "sc_values", 1

    draft = State("Draft", value=1, initial=True)
    producing = State("Being produced", value=2)
    closed = State("Closed", value=3, final=True)

    produce = draft.to(producing)
    revise = producing.to(draft)
    deliver = producing.to(closed)

    def on_enter_state(self, state):
        note(self, f"enter {state.id} = {state.value} ({state.name})")


class RunAware(Workflow):
    """Callbacks that take ``run`` on eventless transitions and on events raised with
    ``raise_()``, not only on the event that was sent. (In memory the model passes itself as
    ``run`` from ``prepare_event``.)"""

    name, version = "sc_run", 1

    waiting = State(initial=True)
    checking = State()
    approved = State()
    archived = State(final=True)

    fill = waiting.to.itself(internal=True, on="fill_in")
    submit = waiting.to(checking)
    checking.to(approved, cond="is_complete", on="accept")
    checking.to(waiting, unless="is_complete", on="send_back")
    archive = approved.to(archived, on="store")

    def fill_in(self, run):
        run.data.setdefault("trace", []).append("fill")
        run.data["filled"] = True

    def is_complete(self, run):
        return bool(run.data.get("filled"))

    def accept(self, run):
        run.data.setdefault("trace", []).append("accept")

    def send_back(self, run):
        run.data.setdefault("trace", []).append("send_back")

    def on_enter_approved(self, run):
        run.data.setdefault("trace", []).append("approved")
        self.raise_("archive")

    def store(self, run):
        run.data.setdefault("trace", []).append("store")
        run.data["archived"] = True
