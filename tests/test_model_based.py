"""Random event sequences against the transition function, compared with a reference model.

For each example workflow (cargo, orders) a small pure-Python model says which events each
state accepts, what the guards and entry callbacks do with the data, what each step answers
for given data and attempt number, and where timers, retries, cancels and data triggers
lead. Hypothesis draws a run's data and a sequence of actions (events, with or without data,
including ones the state refuses; data updates; running the open step; firing an armed
timer; cancel; retry); the engine (SQLite, no worker: steps are run by calling
``StepExecutor.execute`` on the queued task, timers by making them due and calling the
reconciler) and the model each perform them. After every action the outcome (done, or which
refusal), status, state and open task agree; at the end the whole history (kind, event,
source, target, cause of every row) and the data do.

The model is written from the workflows' documented behaviour, not from the engine's code.
"""

import copy
import time
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, update

from engine import CallbackError, InvalidTransition, RunNotActive
from engine.config import Settings
from engine.db import Database
from engine.models import tasks, timers
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from engine.steps import StepExecutor
from workflows import simulators

EXAMPLES = 100


# -- the reference model ------------------------------------------------------------------------

class Refused(Exception):
    """The event is not accepted in this state, or its guard does not hold."""


class CallbackFailed(Exception):
    """An entry callback raised: the whole change is rolled back."""


class NotActive(Exception):
    """The run is not running or waiting (or, for retry, not failed with a step to run again)."""


class StepRaised(Exception):
    """The step's function raised."""


@dataclass
class StepModel:
    name: str
    max_attempts: int
    run: object  # run(data, attempt, run_id) -> ("event", name, extra) | ("recheck", extra); may raise
    on_error: str | None = None


@dataclass
class Spec:
    initial: str
    finals: dict  # final state -> run status
    transitions: dict  # (state, event) -> target
    steps: dict  # state -> StepModel
    timers: dict = field(default_factory=dict)  # state -> [(timer name, event)]
    guards: dict = field(default_factory=dict)  # (state, event) -> guard(data)
    on_enter: dict = field(default_factory=dict)  # state -> callback(data)
    triggers: list = field(default_factory=list)  # (field, event, states, when(old, new))

    @property
    def events(self):
        return sorted({event for _, event in self.transitions})

    def accepted(self, state):
        return [event for (source, event) in self.transitions if source == state]


def _track(data, attempt, run_id):
    data["checks"] = data.get("checks", 0) + 1
    if data["checks"] >= data.get("arrives_after_checks", 3):
        return ("event", "arrive", {"port": data.get("destination", "unknown")})
    return ("recheck", {})


def _file_customs(data, attempt, run_id):
    if attempt <= data.get("customs_outages", 0):
        raise StepRaised("customs unavailable")
    if data.get("customs_holds", 0) <= data.get("holds_so_far", 0):
        return ("event", "cleared", {"customs_ref": simulators.reference("CUS", run_id, data["container"])})
    data["holds_so_far"] = data.get("holds_so_far", 0) + 1
    return ("event", "held", {})


def _delivered(data):
    data["delivered"] = True


CARGO = Spec(
    initial="booked",
    finals={"delivered": "succeeded", "lost": "failed"},
    transitions={("booked", "depart"): "in_transit", ("in_transit", "arrive"): "at_port",
                 ("at_port", "inspect"): "customs", ("customs", "cleared"): "delivered",
                 ("customs", "held"): "at_port", ("in_transit", "declare_lost"): "lost"},
    guards={("in_transit", "arrive"): lambda data: bool(data.get("manifest"))},
    steps={"in_transit": StepModel("track", 11, _track),
           "customs": StepModel("file_customs", 6, _file_customs, on_error="held")},
    timers={"in_transit": [("timeout", "declare_lost")]},
    on_enter={"delivered": _delivered},
)


def _reserve(data, attempt, run_id):
    try:
        total = round(sum(item["qty"] * item["price"] for item in data["items"]), 2)
    except KeyError as exc:
        raise StepRaised(f"no {exc}") from None
    return ("event", "reserved", {"total": total, "reservation": simulators.reference("RES", run_id)})


def _charge(data, attempt, run_id):
    if attempt <= data.get("gateway_timeouts", 0):
        raise StepRaised("gateway timeout")
    if data.get("card") == "declined":
        return ("event", "payment_failed", {"payment": "declined"})
    if "total" not in data:
        raise StepRaised("no total")
    return ("event", "charged", {"payment": simulators.reference("PAY", run_id, data["total"])})


def _review(data):
    if "total" not in data:
        raise CallbackFailed("no total")
    data["review_reason"] = f"total {data['total']} is over 1000"


ORDERS = Spec(
    initial="placed",
    finals={"completed": "succeeded", "cancelled": "cancelled"},
    transitions={("placed", "reserved"): "payment", ("payment", "charged"): "shipping",
                 ("payment", "payment_failed"): "releasing", ("payment", "hold_for_review"): "review",
                 ("review", "approve"): "payment", ("review", "reject"): "releasing",
                 ("shipping", "shipped"): "completed", ("releasing", "released"): "cancelled"},
    steps={"placed": StepModel("reserve_inventory", 4, _reserve),
           "payment": StepModel("charge_payment", 3, _charge, on_error="payment_failed"),
           "releasing": StepModel("release_inventory", 6, lambda d, a, r: (
               "event", "released", {"reservation": None, "released": d.get("reservation")})),
           "shipping": StepModel("ship", 6, lambda d, a, r: (
               "event", "shipped", {"tracking": simulators.reference("TRK", r)}))},
    on_enter={"review": _review},
    triggers=[("total", "hold_for_review", ("payment",), lambda old, new: new is not None and new > 1000)],
)


class ModelRun:
    """One run of a Spec, changed the way the engine documents it: each operation all or nothing."""

    def __init__(self, spec: Spec, run_id: str, data: dict):
        self.spec, self.id = spec, run_id
        self.data = copy.deepcopy(data)
        self.history: list = []
        self.state = spec.initial
        self.entry = 0
        self.status = "running"
        self.task = None  # the open task of the current entry: {"attempt", "status"}
        self.failed_task = False  # a task of the current entry failed its last attempt
        self.timers: dict = {}  # name -> [kind, event, status]
        self._change(lambda: self._start())

    # -- all or nothing ------------------------------------------------------------------------

    def _change(self, operation):
        saved = copy.deepcopy({k: v for k, v in self.__dict__.items() if k != "spec"})
        try:
            operation()
            self._finish()
        except BaseException:
            self.__dict__.update(saved)
            raise

    def _record(self, kind, event=None, source=None, target=None, cause=None):
        self.history.append((kind, event, source, target, cause))
        return len(self.history)

    def _start(self):
        seq = self._record("started", target=self.state, cause="start")
        self._enter(self.state, seq)

    def _finish(self):
        if self.status in ("running", "waiting"):
            if self.state in self.spec.finals:
                self.status = self.spec.finals[self.state]
                self._close_everything()
            else:
                self.status = "running" if self.task else "waiting"

    def _close_everything(self):
        self.task = None
        for timer in self.timers.values():
            if timer[2] == "armed":
                timer[2] = "cancelled"

    def _enter(self, state, seq):
        self.state, self.entry = state, seq
        self.failed_task = False
        if state in self.spec.steps:
            self.task = {"attempt": 0}
        for name, event in self.spec.timers.get(state, []):
            self.timers[name] = ["timer", event, "armed"]

    def _exit(self):
        self.task = None
        self.timers = {n: t if t[2] != "armed" else [t[0], t[1], "cancelled"] for n, t in self.timers.items()}

    def _send(self, event, data, cause, triggers=True, merge=False):
        target = self.spec.transitions.get((self.state, event))
        guard = self.spec.guards.get((self.state, event))
        if target is None or (guard is not None and not guard(self.data)):
            raise Refused(event)
        before = copy.deepcopy(self.data) if triggers and self.spec.triggers else None
        callback = self.spec.on_enter.get(target)
        if callback is not None:
            callback(self.data)  # before a step's result data is merged
        if merge:  # a step's result is the run's data; an event's data is the event's
            self.data.update(data)
        source = self.state
        seq = self._record("transition", event, source, target, cause)
        self._exit()
        self._enter(target, seq)
        if before is not None:
            self._triggers(before)

    def _triggers(self, before):
        for _ in range(10):
            due = [t for t in self.spec.triggers if before.get(t[0]) != self.data.get(t[0])
                   and self.state in t[2] and t[3](before.get(t[0]), self.data.get(t[0]))]
            if not due:
                return
            before = copy.deepcopy(self.data)
            for _field, event, states, _when in due:
                if self.state in self.spec.finals:
                    return
                if event not in self.spec.accepted(self.state) or self.state not in states:
                    continue
                try:
                    self._send(event, {}, "trigger", triggers=False)
                except Refused:
                    continue

    def _require_active(self):
        if self.status not in ("running", "waiting"):
            raise NotActive(self.status)

    # -- what the outside world does -------------------------------------------------------------

    def send(self, event, data):
        def op():
            self._require_active()
            self._send(event, dict(data), "api")
        self._change(op)

    def update_data(self, patch):
        def op():
            self._require_active()
            before = copy.deepcopy(self.data) if self.spec.triggers else None
            self.data.update(patch)
            self._record("data_updated", cause="data")
            if before is not None:
                self._triggers(before)
        self._change(op)

    def cancel(self):
        def op():
            self._require_active()
            self._close_everything()
            self.status = "cancelled"
            self._record("cancelled", source=self.state, cause="cancel")
        self._change(op)

    def retry(self):
        def op():
            if self.status != "failed" or not self.failed_task:
                raise NotActive(self.status)
            for timer in self.timers.values():
                if timer[2] == "suspended":
                    timer[2] = "armed"
            self.status = "running"
            self._record("retried", cause="retry")
            self.failed_task = False
            self.task = {"attempt": 0}
        self._change(op)

    def run_step(self):
        """The worker runs the open task's step and applies its result (or its failure)."""
        step = self.spec.steps[self.state]
        attempt = self.task["attempt"] + 1
        scratch = copy.deepcopy(self.data)
        try:
            outcome = step.run(scratch, attempt, self.id)
        except StepRaised:
            self._change(lambda: self._failed(step, attempt))
            return
        changed = {k: v for k, v in scratch.items() if k not in self.data or self.data[k] != v}

        def done():
            self._record("step_started", cause="step")
            self.task = None
            if outcome[0] == "recheck":
                self._record("step_rechecked", cause="step")
                self.timers[step.name] = ["recheck", None, "armed"]
                self.data.update({**changed, **outcome[1]})
                return
            self._record("step_succeeded", outcome[1], cause="step")
            self._send(outcome[1], {**changed, **outcome[2]}, "step", merge=True)

        try:
            self._change(done)
        except (Refused, CallbackFailed):
            self._change(lambda: self._failed(step, attempt))

    def _failed(self, step, attempt):
        self._record("step_started", cause="step")
        self._record("step_failed", cause="step")
        if attempt < step.max_attempts:
            self.task["attempt"] = attempt
            return
        self.task = None
        self.failed_task = True
        if step.on_error:
            try:
                self._send(step.on_error, {}, "step_error")
                return
            except Refused:
                pass
        self.status = "failed"
        for timer in self.timers.values():
            if timer[2] == "armed":
                timer[2] = "suspended"
        self._record("failed", source=self.state, cause="step")

    def fire(self, name):
        def op():
            kind, event, _ = self.timers[name]
            self.timers[name][2] = "fired"
            self._record("timer_fired", event=event, cause="timer")
            if kind == "recheck":
                self.task = {"attempt": 0}
                return
            try:
                self._send(event, {}, "timer")
            except Refused:
                self._record("event_rejected", event=event, cause="timer")
        self._change(op)

    def armed(self):
        return sorted(n for n, t in self.timers.items() if t[2] == "armed")


# -- driving the engine and the model together ---------------------------------------------------------

ENGINE_ERRORS = {InvalidTransition: "refused", RunNotActive: "not active", CallbackError: "callback failed"}
MODEL_ERRORS = {Refused: "refused", NotActive: "not active", CallbackFailed: "callback failed"}


def outcome_of(call, errors):
    try:
        call()
        return "done"
    except tuple(errors) as exc:
        return next(name for kind, name in errors.items() if isinstance(exc, kind))


@pytest.fixture(scope="module")
def rt(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('model') / 'interlock.db'}"
    Database(url).upgrade()
    engine = Interlock(Settings(database_url=url, broker_url="memory://", workflows="workflows",
                                queue="interlock_model"))
    yield engine
    engine.close()


class Driver:
    def __init__(self, rt, workflow, spec, data):
        self.rt = rt
        self.run_id = rt.start(workflow, data).id
        self.model = ModelRun(spec, self.run_id, data)
        self.executor = StepExecutor(rt)
        self.reconciler = Reconciler(rt)
        self.log = [f"start {workflow} {data}"]

    def open_tasks(self):
        with self.rt.db.read() as conn:
            return [dict(r) for r in conn.execute(select(tasks.c.id, tasks.c.attempt, tasks.c.state).where(
                tasks.c.run_id == self.run_id, tasks.c.status.in_(("queued", "running")))).mappings()]

    def armed(self):
        with self.rt.db.read() as conn:
            return sorted(conn.execute(select(timers.c.name).where(
                timers.c.run_id == self.run_id, timers.c.status == "armed")).scalars())

    def check(self):
        run = self.rt.get(self.run_id)
        m = self.model
        where = "\n".join(self.log)
        assert (run.status, run.state) == (m.status, m.state), where
        open_tasks = self.open_tasks()
        assert [(t["state"], t["attempt"]) for t in open_tasks] == \
            ([(m.state, m.task["attempt"])] if m.task else []), where
        assert self.armed() == m.armed(), where

    def act(self, action):
        kind, arg = action
        m = self.model
        if kind == "accepted":  # an event the state accepts now (its guard may still refuse it)
            events = m.spec.accepted(m.state)
            if not events:
                return
            kind, arg = "event", (events[arg[0] % len(events)], arg[1])
        if kind == "event":
            event, data = arg
            self.log.append(f"send {event} {data}")
            got = outcome_of(lambda: self.rt.send(self.run_id, event, data, cause="api"), ENGINE_ERRORS)
            want = outcome_of(lambda: m.send(event, data), MODEL_ERRORS)
        elif kind == "data":
            self.log.append(f"update_data {arg}")
            got = outcome_of(lambda: self.rt.update_data(self.run_id, arg), ENGINE_ERRORS)
            want = outcome_of(lambda: m.update_data(arg), MODEL_ERRORS)
        elif kind == "cancel":
            self.log.append("cancel")
            got = outcome_of(lambda: self.rt.cancel(self.run_id), ENGINE_ERRORS)
            want = outcome_of(m.cancel, MODEL_ERRORS)
        elif kind == "retry":
            self.log.append("retry")
            got = outcome_of(lambda: self.rt.retry(self.run_id), ENGINE_ERRORS)
            want = outcome_of(m.retry, MODEL_ERRORS)
        elif kind == "step":
            if m.task is None or m.status not in ("running", "waiting"):
                return
            self.log.append(f"run step {m.spec.steps[m.state].name} (attempt {m.task['attempt'] + 1})")
            [task] = self.open_tasks()
            with self.rt.db.write() as conn:  # a retry's backoff has passed
                conn.execute(update(tasks).where(tasks.c.id == task["id"]).values(available_at=time.time()))
            self.executor.execute(task["id"])
            m.run_step()
            got = want = "done"
        elif kind == "timer":
            # Rechecks first: the 30-day timeout would otherwise end most cargo runs in transit.
            armed = sorted(m.armed(), key=lambda n: m.timers[n][0] != "recheck")
            if not armed:
                return
            name = armed[0] if arg < 4 else armed[-1]
            self.log.append(f"fire timer {name}")
            with self.rt.db.write() as conn:
                conn.execute(update(timers).where(timers.c.run_id == self.run_id, timers.c.name == name,
                                                  timers.c.status == "armed").values(due_at=time.time() - 1))
            self.reconciler.fire_due_timers()
            m.fire(name)
            got = want = "done"
        assert got == want, "\n".join(self.log) + f"\nengine: {got}, model: {want}"
        self.check()

    def finish(self):
        entries = self.rt.history(self.run_id)
        got = [(h.kind, h.event, h.source, h.target, h.cause) for h in entries]
        assert got == self.model.history, "\n".join(self.log)
        assert [h.seq for h in entries] == list(range(1, len(entries) + 1))
        assert self.rt.get(self.run_id).data == self.model.data, "\n".join(self.log)


def actions(spec, patches, event_data):
    """Mostly steps and events the state accepts; some events it refuses, data updates, timers;
    now and then a cancel or a retry (one_of picks its branches evenly: repeats are weights)."""
    any_event = st.tuples(st.sampled_from(spec.events), st.sampled_from(event_data)).map(lambda a: ("event", a))
    accepted = st.tuples(st.integers(0, 3), st.sampled_from(event_data)).map(lambda a: ("accepted", a))
    step = st.just(("step", None))
    return st.lists(st.one_of(
        step, step, step, step, step, accepted, accepted, accepted, any_event,
        st.integers(0, 4).map(lambda i: ("timer", i)),
        st.sampled_from(patches).map(lambda p: ("data", p)),
        st.sampled_from([("cancel", None), ("retry", None), ("retry", None), ("step", None)]),
    ), min_size=8, max_size=40)


cargo_data = st.fixed_dictionaries({
    "container": st.sampled_from(["MSCU1234565", "C2"]),
    "arrives_after_checks": st.integers(0, 3),
    "customs_outages": st.sampled_from([0, 1, 2, 6]),
    "customs_holds": st.integers(0, 2),
}, optional={"manifest": st.sampled_from([[], ["parts"]]), "destination": st.just("Rotterdam")})

orders_data = st.fixed_dictionaries({
    "card": st.sampled_from(["4242", "declined"]),
    "gateway_timeouts": st.sampled_from([0, 1, 3]),
}, optional={"items": st.sampled_from([[{"sku": "A", "qty": 2, "price": 12.5}],
                                       [{"sku": "B", "qty": 3, "price": 700.0}]])})


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=cargo_data, script=actions(CARGO, [{"manifest": ["x"]}, {"manifest": []}, {"arrives_after_checks": 0}],
                                        [{}, {}, {"manifest": ["y"]}]))
def test_cargo_matches_its_model(rt, data, script):
    driver = Driver(rt, "cargo", CARGO, data)
    driver.check()
    for action in script:
        driver.act(action)
    driver.finish()


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=orders_data, script=actions(ORDERS, [{"total": 50}, {"total": 1500}, {"card": "declined"},
                                                 {"gateway_timeouts": 0}],
                                        [{}, {}, {"total": 2000}, {"total": 10}]))
def test_orders_match_their_model(rt, data, script):
    driver = Driver(rt, "orders", ORDERS, data)
    driver.check()
    for action in script:
        driver.act(action)
    driver.finish()


def test_the_models_know_every_event_and_state_of_the_workflows(rt):
    """The models are written by hand: they must cover what the definitions declare."""
    for name, spec in (("cargo", CARGO), ("orders", ORDERS)):
        cls = rt.registry.get(name)
        assert set(spec.events) == {e.id for e in cls._events}
        declared = {(s.id, e.id): t.target.id for s in cls.states_map.values()
                    for t in s.transitions for e in t.events}
        assert spec.transitions == declared
        assert set(spec.steps) == set(cls._steps)
        assert {s: m.max_attempts for s, m in spec.steps.items()} == \
            {s: cls.step_for(s).max_attempts for s in cls._steps}
        assert set(spec.finals) == {s.id for s in cls.states_map.values() if s.final}
