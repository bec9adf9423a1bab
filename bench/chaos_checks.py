"""The chaos run's invariants, checked from the database alone (``bench/chaos.py`` prints them).

    from bench.chaos_checks import check
    report = check("postgresql://postgres@127.0.0.1:5432/some_db", registry)
    print(report.render()); report.violations  # 0 when every invariant holds

Each invariant counts what it looked at and what broke it:

1. ``final states``: every run ended in a final state its definition allows, and the one its
   data (the chaos plan stored in ``data["chaos"]``) leads to; a run still running or waiting
   is either ``stuck`` (no open task, no armed timer, no event anyone will send) or
   ``unfinished`` (work was pending when the checks ran). Final runs hold no open task or
   armed timer, and the run row agrees with its history (state, last seq).
2. ``history contiguous``: each run's history seqs are exactly 1..last_seq.
3. ``transitions once per state entry``: replaying the history, no state entry is left twice
   (a transition applied again), and every transition leaves a state the run was in.
4. ``step results applied once``: per task at most one success, per state entry at most one
   step success, no attempt started twice, no more attempts than the definition allows,
   every step outcome recorded while the run was in the task's state entry, and each
   success followed by exactly one transition with its event.
5. ``timers only in their state entry``: every ``timer_fired`` row belongs to a timer of the
   state entry the run was in, each timer is handled once, and each timer transition
   follows its ``timer_fired`` row.
6-9. Child runs and Map (``no child orphaned``, ``fan-in counted once``, ``collected results
   match children``, ``map concurrency within its limit``): see bench/chaos_composition.py.
10-11. Operator pauses (``no timer fired while paused``, ``queued events applied once``): see
   bench/chaos_pauses.py.
12-14. Schedules (``schedule ticks start one run each``, ``no schedule tick lost``, ``overlap
   policy kept``): see bench/chaos_schedules.py.
15. Retention (``retention deletes whole finished runs``): see bench/chaos_retention.py.
16. Bulk actions (``bulk cancel acts on each run once``): see bench/chaos_batches.py.
17-18. Moving runs between versions (``migration moves each run once``, ``migrated runs follow
   the new version``): see bench/chaos_migrations.py. A ``migrated`` entry renames the states
   of the entries the run is in (its mapping); the replay follows it.
19-20. Concurrency limits (``a concurrency limit is never exceeded``, ``limit slots come back``):
   see bench/chaos_limits.py.

Flat workflows only (a history row's source and target are leaf states).
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import create_engine, select, text

from bench import (chaos_batches, chaos_composition, chaos_limits, chaos_migrations, chaos_pauses, chaos_retention,
                   chaos_schedules)
from engine.db import normalize_url
from engine.models import history, runs, tasks, timers

ACTIVE = ("running", "waiting")
CANCEL = "<cancelled by operator>"
# Errors the example and chaos workflows raise on purpose (their data asks for them): failed
# attempts from anything else (a killed worker, a dropped connection...) are injected faults.
SIMULATED_ERRORS = ("CustomsUnavailable", "GatewayTimeout", "StepBroken", "InspectionFailed", "CrateBroken",
                    "CallRefused")
# Events the chaos script sends from outside, by (workflow, state): a run waiting there is
# waiting for the script, not stuck.
EXTERNAL = {("cargo", "booked"), ("cargo", "at_port"), ("orders", "review"),
            ("chaos_parcel", "awaiting_pickup")} | {(w, s) for w, s, _ in chaos_migrations.WATCHED}


@dataclass
class Invariant:
    name: str
    checked: int = 0
    checked_what: str = "runs"
    problems: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def fail(self, what: str, run_id: str, detail: str = "") -> None:
        self.problems[what] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{what}: run {run_id} {detail}".rstrip())

    @property
    def violations(self) -> int:
        return sum(self.problems.values())

    def render(self) -> str:
        mark = "ok  " if not self.violations else "FAIL"
        found = ", ".join(f"{n} {what}" for what, n in sorted(self.problems.items())) or "none"
        line = f"{mark} {self.name:<36} {self.checked:>7} {self.checked_what} checked, {self.violations} violations ({found})"
        if self.notes:
            line += "; " + "; ".join(self.notes)
        return "\n".join([line] + [f"       e.g. {e}" for e in self.examples])


@dataclass
class Report:
    invariants: list
    runs: int
    transitions: int
    outcomes: Counter
    children: int = 0  # of the runs, those started by a parent run
    scheduled: int = 0  # of the runs, those started by a schedule's tick

    @property
    def violations(self) -> int:
        return sum(i.violations for i in self.invariants)

    def render(self) -> str:
        return "\n".join(i.render() for i in self.invariants)

    def by_name(self, name) -> Invariant:
        return next(i for i in self.invariants if i.name == name)


def _split(leaves) -> tuple:
    return tuple(s for s in (leaves or "").split(",") if s)


def _is_simulated(error) -> bool:
    return bool(error) and error.startswith(SIMULATED_ERRORS)


# -- what each run's plan allows -----------------------------------------------------------

def allowed_outcomes(workflow: str, data: dict) -> set:
    """Final states (or CANCEL) the run's data leads to when nothing but the plan happens."""
    plan = data.get("chaos") or {}
    composed = chaos_composition.allowed_outcomes(workflow, data)
    if composed is not None:
        allowed = composed
    elif workflow == "cargo":
        allowed = {"lost": {"lost"}, "race_lost": {"lost", "delivered"}}.get(plan.get("plan"), {"delivered"})
    elif workflow == "orders":
        if data.get("card") == "declined" or data.get("gateway_timeouts", 0) >= 3:
            allowed = {"cancelled"}
        elif sum(i["qty"] * i["price"] for i in data.get("items", [])) > 1000:
            allowed = {"completed" if plan.get("decision") == "approve" else "cancelled"}
        else:
            allowed = {"completed"}
    elif workflow == chaos_migrations.WORKFLOW:
        allowed = {"arrived", "moored"}  # on version 1, or moved to version 2
    elif workflow == chaos_limits.WORKFLOW:
        allowed = {"called"}
    elif workflow == "chaos_parcel":
        allowed = {"pickup": {"delivered"}, "race": {"delivered", "returned"},
                   "no_pickup": {"returned"}}.get(plan.get("pickup"), {"delivered", "returned"})
    else:
        return set()  # a workflow the chaos run does not start: any final state will do
    if plan.get("cancel_after") is not None or plan.get("bulk_cancel"):
        allowed = allowed | {CANCEL}
    return allowed


def fault_outcomes(cls, entries: list) -> set:
    """Final states reached through a step's ``on_error`` after attempts lost to injected faults.

    At-least-once execution means a killed worker or a dropped connection costs an attempt:
    when a step ran out of attempts and some of them failed for such a reason, its ``on_error``
    event (and where it leads) is allowed too.
    """
    extra = set()
    failures = defaultdict(list)
    for h in entries:
        if h["kind"] == "step_failed":
            failures[h["detail"]["task"]].append(h["detail"])
    for attempts in failures.values():
        final = [d for d in attempts if d.get("final")]
        if final and not all(_is_simulated(d.get("error")) for d in attempts):
            for state in cls.states_map:
                spec = cls.step_for(state)
                if spec is not None and spec.name == final[0]["step"] and spec.on_error:
                    for transition in cls.states_map[state].transitions:
                        if spec.on_error in [e.id for e in transition.events]:
                            extra.update(t.id for t in transition.targets)
    return extra


# -- reading the database ------------------------------------------------------------------

def load(url: str):
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(text("SET application_name = 'interlock-chaos'"))
            run_rows = [dict(r) for r in conn.execute(select(
                runs.c.id, runs.c.workflow, runs.c.version, runs.c.status, runs.c.state, runs.c.data,
                runs.c.last_seq, runs.c.parent_id, runs.c.idempotency_key)).mappings()]
            by_run = defaultdict(list)
            for r in conn.execute(select(
                    history.c.run_id, history.c.seq, history.c.kind, history.c.event, history.c.source,
                    history.c.target, history.c.cause, history.c.detail, history.c.at)
                    .order_by(history.c.run_id, history.c.seq)).mappings():
                by_run[r["run_id"]].append(dict(r))
            task_rows = {r["id"]: dict(r) for r in conn.execute(select(
                tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.entry_seq, tasks.c.name, tasks.c.kind,
                tasks.c.status, tasks.c.attempt, tasks.c.max_attempts, tasks.c.lease_until,
                tasks.c.updated_at)).mappings()}
            timer_rows = {r["id"]: dict(r) for r in conn.execute(select(
                timers.c.id, timers.c.run_id, timers.c.state, timers.c.entry_seq, timers.c.name,
                timers.c.kind, timers.c.event, timers.c.status, timers.c.due_at, timers.c.fired_at)).mappings()}
    finally:
        engine.dispose()
    return run_rows, by_run, task_rows, timer_rows


# -- the checks ----------------------------------------------------------------------------

def check(url: str, registry, now: float | None = None, archive_dir=None) -> Report:
    import time

    now = time.time() if now is None else now
    run_rows, by_run, task_rows, timer_rows = load(url)
    open_by_run = defaultdict(list)
    for t in task_rows.values():
        if t["status"] in ("queued", "running"):
            open_by_run[t["run_id"]].append(t)
    armed_by_run = defaultdict(list)
    for t in timer_rows.values():
        if t["status"] in ("armed", "suspended"):
            armed_by_run[t["run_id"]].append(t)

    finals = Invariant("final states")
    contiguous = Invariant("history contiguous")
    once = Invariant("transitions once per state entry", checked_what="transitions")
    steps = Invariant("step results applied once", checked_what="step outcomes")
    timer_check = Invariant("timers only in their state entry", checked_what="timer firings")
    outcomes = Counter()
    transitions = 0
    fault_ended = 0

    for run in run_rows:
        rid = run["id"]
        entries = by_run.get(rid, [])
        try:
            cls = registry.get(run["workflow"], run["version"])
        except Exception:  # noqa: BLE001 - a run of a workflow this check does not know
            cls = None

        # 2. contiguous history
        contiguous.checked += 1
        seqs = [h["seq"] for h in entries]
        if seqs != list(range(1, len(seqs) + 1)):
            contiguous.fail("gap or repeat in seq", rid, f"seqs {_ranges(seqs)}")
        elif len(seqs) != run["last_seq"]:
            contiguous.fail("last_seq disagrees with history", rid, f"last_seq {run['last_seq']}, {len(seqs)} rows")

        # 3-5. replay
        replay = _replay(rid, entries, task_rows, timer_rows, once, steps, timer_check)
        transitions += replay["transitions"]

        # 1. final states
        finals.checked += 1
        status, state = run["status"], run["state"]
        if replay["leaves"] and ",".join(replay["leaves"]) != state:
            finals.fail("run row state differs from its history", rid,
                        f"row {state!r}, history {','.join(replay['leaves'])!r}")
        final_states = {s.id for s in cls.states_map.values() if s.final} if cls else set()
        in_final = bool(cls) and set(_split(state)) <= final_states
        if status in ACTIVE or (status == "failed" and not in_final):
            kind = _why_not_final(run, cls, open_by_run[rid], armed_by_run[rid], now)
            finals.fail(kind, rid, f"{run['workflow']} {status} in {state}")
            outcomes[f"{run['workflow']}: not final ({status} in {state})"] += 1
            continue
        outcome = CANCEL if status == "cancelled" and not in_final else state
        outcomes[f"{run['workflow']}: {outcome}"] += 1
        if open_by_run[rid]:
            finals.fail("final run with an open task", rid, f"{len(open_by_run[rid])} queued/running")
        if any(t["status"] == "armed" for t in armed_by_run[rid]):
            finals.fail("final run with an armed timer", rid)
        if cls is None:
            continue
        if outcome != CANCEL and status != cls.status_of_final(state):
            finals.fail("status disagrees with final state", rid, f"{status} in {state}")
        allowed = allowed_outcomes(run["workflow"], run["data"] or {})
        if not allowed:
            continue
        if outcome not in allowed:
            extra = fault_outcomes(cls, entries)
            if outcome in extra:
                fault_ended += 1
            else:
                finals.fail("final state its data does not lead to", rid,
                            f"{run['workflow']} ended {outcome}, allowed {sorted(allowed)}")
    if fault_ended:
        finals.notes.append(f"{fault_ended} ended through on_error after attempts lost to injected faults")
    composition = chaos_composition.check(url, registry, by_run, Invariant)
    paused = chaos_pauses.check(by_run, Invariant)
    archived = chaos_retention.archived(archive_dir) if archive_dir is not None else {}
    scheduled = chaos_schedules.check(url, Invariant, {rid: copies[-1]["run"] for rid, copies in archived.items()})
    retained = chaos_retention.check(url, archived, Invariant)
    bulk = chaos_batches.check(url, Invariant)
    migrated = chaos_migrations.check(url, registry, by_run, task_rows, timer_rows, Invariant)
    limited = chaos_limits.check(url, Invariant)
    return Report([finals, contiguous, once, steps, timer_check, *composition, *paused, *scheduled, *retained, *bulk,
                   *migrated, *limited],
                  len(run_rows),
                  transitions, outcomes, children=sum(r["parent_id"] is not None for r in run_rows),
                  scheduled=sum((r["idempotency_key"] or "").startswith("schedule:") for r in run_rows))


def _why_not_final(run, cls, open_tasks, armed, now) -> str:
    if run["status"] == "failed":
        return "failed, not retried"
    live = [t for t in open_tasks if t["status"] == "queued" or (t["lease_until"] or 0) >= now]
    if live or any(t["status"] == "armed" for t in armed):
        return "unfinished (work pending)"
    if (run["workflow"], run["state"]) in EXTERNAL:
        return "unfinished (awaiting an event)"
    return "stuck (nothing pending)"


def _replay(rid, entries, task_rows, timer_rows, once, steps, timer_check) -> dict:
    current: dict = {}  # leaf state -> seq of its entry
    leaves: tuple = ()
    last_entry: dict = {}  # state -> seq of its latest entry, left or not
    left = set()
    transitions = 0
    step_success_by_task = Counter()
    step_success_by_entry = Counter()
    started = Counter()
    handled_timers = Counter()
    by_seq = {h["seq"]: h for h in entries}
    # Old state id -> new, from the run's migrated entries: a task or timer moved keeps its new
    # name for the outcomes recorded before the move too.
    renamed = {k: v for h in entries if h["kind"] == "migrated" for k, v in ((h["detail"] or {}).get("mapping") or {}).items()}

    def entry_of(state):
        """The entry the run is in for ``state``, under the name its rows have now."""
        if state in current:
            return current[state]
        return next((current[old] for old, new in renamed.items() if new == state and old in current), None)

    for h in entries:
        kind, seq, detail = h["kind"], h["seq"], h["detail"] or {}
        if kind == "migrated":
            mapping = detail.get("mapping") or {}
            current = {mapping.get(s, s): e for s, e in current.items()}
            last_entry = {mapping.get(s, s): e for s, e in last_entry.items()}
            left = {(mapping.get(s, s), e) for s, e in left}
            leaves = _split(h["target"])
        elif kind == "started":
            leaves = _split(h["target"])
            current = {s: seq for s in leaves}
            last_entry.update(current)
        elif kind == "transition":
            transitions += 1
            once.checked += 1
            source, target = _split(h["source"]), _split(h["target"])
            for s in source:
                # The entry this transition left: the current one, or else the state's last one.
                key = (s, current.get(s, last_entry.get(s)))
                if key in left:
                    once.fail("state entry left twice", rid, f"seq {seq} {h['event']} left {s}@{key[1]} again")
                elif s not in current:
                    once.fail("transition from a state the run was not in", rid,
                              f"seq {seq} {h['event']} from {h['source']} while in {','.join(leaves)}")
                left.add(key)
            current = {s: e for s, e in current.items() if s not in source}
            current.update({s: seq for s in target})
            last_entry.update({s: seq for s in target})
            leaves = target
            if h["cause"] == "step":
                before = by_seq.get(seq - 1)
                if not before or before["kind"] != "step_succeeded" or before["event"] != h["event"]:
                    steps.fail("step transition without its step_succeeded", rid, f"seq {seq} {h['event']}")
            if h["cause"] == "timer":
                before = by_seq.get(seq - 1)
                if not before or before["kind"] != "timer_fired" or before["event"] != h["event"]:
                    timer_check.fail("timer transition without its timer_fired", rid, f"seq {seq} {h['event']}")
        elif kind in ("step_started", "step_succeeded", "step_failed", "step_rechecked"):
            task = task_rows.get(detail.get("task"))
            if kind != "step_started":
                steps.checked += 1
            if task is None:
                steps.fail("step outcome for an unknown task", rid, f"seq {seq} {kind}")
                continue
            if entry_of(task["state"]) != task["entry_seq"]:
                steps.fail("step outcome applied outside its state entry", rid,
                           f"seq {seq} {kind} of {task['name']} for {task['state']}@{task['entry_seq']}")
            attempt = detail.get("attempt") or 0
            if attempt > task["max_attempts"]:
                steps.fail("more attempts than the definition allows", rid,
                           f"{task['name']} attempt {attempt} of {task['max_attempts']}")
            if kind == "step_started":
                started[(task["id"], attempt)] += 1
                if started[(task["id"], attempt)] == 2:
                    steps.fail("attempt started twice", rid, f"{task['name']} attempt {attempt}")
            elif kind in ("step_succeeded", "step_rechecked"):
                step_success_by_task[task["id"]] += 1
                if step_success_by_task[task["id"]] == 2:
                    steps.fail("task succeeded twice", rid, f"{task['name']} task {task['id']}")
                if kind == "step_succeeded":
                    entry = (task["state"], task["entry_seq"])
                    step_success_by_entry[entry] += 1
                    if step_success_by_entry[entry] == 2:
                        steps.fail("step succeeded twice in one state entry", rid, f"{task['name']} @{entry[1]}")
                    after = by_seq.get(seq + 1)
                    if not after or after["kind"] != "transition" or after["event"] != h["event"]:
                        steps.fail("step success without its transition", rid, f"seq {seq} {task['name']}")
        elif kind in ("timer_fired", "ignored") and (kind == "timer_fired" or h["cause"] == "timer"):
            timer = timer_rows.get(detail.get("timer_id"))
            timer_check.checked += 1
            if timer is None:
                timer_check.fail("firing of an unknown timer", rid, f"seq {seq}")
                continue
            handled_timers[timer["id"]] += 1
            if handled_timers[timer["id"]] == 2:
                timer_check.fail("timer handled twice", rid, f"{timer['name']} {timer['id']}")
            if kind == "timer_fired" and entry_of(timer["state"]) != timer["entry_seq"]:
                timer_check.fail("timer fired for a state entry already left", rid,
                                 f"seq {seq} {timer['name']} of {timer['state']}@{timer['entry_seq']}, "
                                 f"run in {','.join(leaves)}")
    for task_id in step_success_by_task:
        if task_rows[task_id]["status"] != "succeeded":
            steps.fail("task applied but not marked succeeded", rid, f"task {task_id} is {task_rows[task_id]['status']}")
    return {"leaves": leaves, "transitions": transitions}


def _ranges(seqs) -> str:
    if len(seqs) <= 12:
        return str(seqs)
    return f"{seqs[:5]}...{seqs[-5:]} ({len(seqs)} rows)"
