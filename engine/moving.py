"""What moving a run from one version of its workflow to another means, and doing it.

A run's **situation** is what it waits on, without ids: its status, its active states, its open
tasks (and a failed run's failed step), its armed or suspended timers, what its history states
remember. ``judge`` gives a situation's **verdict** against the other version and a mapping of
state ids (``{old: new}``, for states renamed or split):

- ``clean``: every active state exists in the new version under its own id;
- ``mapped``: the mapping moves some state to another id (or the new version nests it);
- ``impossible``: a state the new version lacks and no mapping names; an outstanding step or
  activity (queued or running: it may be running now) the new version does not have there; a
  failed step it does not have; a timer whose event its state no longer takes; a state that
  starts child runs; a configuration the new version cannot be in.

A verdict also says what moving does (``changes``, for people) and how (``tasks``/``timers``,
keyed by (state, name) as stored): tasks kept (moved to the new state id, the new attempt
count), timers kept, re-armed (the new delay from the same entry), cancelled (the new version
does not declare them there) or armed (new in the new version, from the state's entry). A step
the new version adds to a state the run is in is queued.

``move`` performs a verdict on a run inside ``transitions.apply`` (the ``Migrate`` operation).
"""

from dataclasses import dataclass, field

from sqlalchemy import bindparam, delete, select, update

from .errors import InvalidData, MigrationRefused
from .models import history, run_search, runs, tasks, timers
from .timeparse import duration

CLEAN, MAPPED, IMPOSSIBLE = "clean", "mapped", "impossible"
OUTCOMES = (CLEAN, MAPPED, IMPOSSIBLE)
MOVABLE = ("running", "waiting", "failed")
OPEN = ("queued", "running")


@dataclass(frozen=True)
class Situation:
    status: str
    configuration: tuple
    tasks: tuple  # (state, name, kind) of each open task; a failed run's failed task too
    timers: tuple  # (state, name, kind, event) of each armed or suspended timer
    remembered: tuple  # (history state id, (state ids)) pairs


@dataclass
class Verdict:
    outcome: str
    reason: str | None = None
    configuration: list = field(default_factory=list)  # in the new version
    renamed: dict = field(default_factory=dict)  # old id -> new id, for the states it moves
    changes: list = field(default_factory=list)  # what moving does, in words
    tasks: dict = field(default_factory=dict)  # (state, name) -> new state
    timers: dict = field(default_factory=dict)  # (state, name) -> ("keep" | "rearm" | "cancel", ...)
    new_tasks: list = field(default_factory=list)  # new states whose step is queued
    new_timers: list = field(default_factory=list)  # (new state, timer name)

    def shown(self) -> dict:
        return {"outcome": self.outcome, "reason": self.reason, "configuration": self.configuration,
                "renamed": self.renamed, "changes": self.changes}


def situation(row: dict, task_rows, timer_rows) -> Situation:
    """A run's situation from its row and its task and timer rows (any, in any order)."""
    entries = row["entries"]
    open_tasks = {(t["state"], t["name"], t["kind"]) for t in task_rows if t["status"] in OPEN}
    if row["status"] == "failed":
        open_tasks |= {(t["state"], t["name"], t["kind"]) for t in task_rows
                       if t["status"] == "failed" and entries.get(t["state"]) == t["entry_seq"]}
    armed = {(t["state"], t["name"], t["kind"], t["event"]) for t in timer_rows
             if t["status"] in ("armed", "suspended")}
    remembered = tuple(sorted((k, tuple(v)) for k, v in (row.get("history_values") or {}).items()))
    return Situation(row["status"], tuple(row["configuration"]), tuple(sorted(open_tasks)),
                     tuple(sorted(armed)), remembered)


def check_mapping(old_cls, new_cls, mapping: dict) -> dict:
    """The mapping, if every key is a state of the old version and every value one of the new."""
    if not isinstance(mapping, dict):
        raise InvalidData("the mapping must map old state ids to new ones", field="map")
    for old, new in mapping.items():
        if old not in old_cls._states_by_id:
            raise InvalidData(f"the mapping names state {old!r}, which {_name(old_cls)} does not have",
                              field="map")
        if not isinstance(new, str) or new not in new_cls._states_by_id:
            raise InvalidData(f"the mapping moves {old!r} to {new!r}, which {_name(new_cls)} does not have",
                              field="map")
    return dict(mapping)


def _name(cls) -> str:
    return f"{cls.workflow_name} v{cls.version}"


def judge(sit: Situation, old_cls, new_cls, mapping: dict) -> Verdict:
    refusal = _new_configuration(sit, old_cls, new_cls, mapping)
    if isinstance(refusal, str):
        return Verdict(IMPOSSIBLE, refusal)
    configuration, renamed, preimage = refusal
    moved = bool(renamed) or set(configuration) != set(sit.configuration)
    verdict = Verdict(MAPPED if moved else CLEAN, configuration=configuration, renamed=renamed)
    for old, new in renamed.items():
        verdict.changes.append(f"state {old} becomes {new}")
    for new in configuration:
        if new not in preimage:
            verdict.changes.append(f"enters {new} too (it holds {', '.join(k for k in configuration if _is_inside(new_cls, k, new))} in {_name(new_cls)})")
    try:
        _children(verdict, preimage, old_cls, new_cls)
        _tasks(verdict, sit, preimage, old_cls, new_cls, mapping)
        _timers(verdict, sit, preimage, old_cls, new_cls, mapping)
        _history(verdict, sit, new_cls, mapping)
    except _Impossible as exc:
        return Verdict(IMPOSSIBLE, str(exc))
    _events(verdict, sit, old_cls, new_cls)
    return verdict


class _Impossible(Exception):
    pass


def _new_configuration(sit, old_cls, new_cls, mapping):
    """(configuration, renamed, {new id: old id}) in the new version, or why there is none."""
    new_states = new_cls._states_by_id
    ids, renamed, preimage = [], {}, {}
    for old in sit.configuration:
        new = mapping.get(old, old)
        if new not in new_states:
            return (f"state {old} is not in {_name(new_cls)}: map it to one of its states "
                    f"(--map {old}=NEW)")
        if new != old:
            renamed[old] = new
        preimage.setdefault(new, old)
        if new not in ids:
            ids.append(new)
    for new in list(ids):  # the new version may nest a state: its parents become active too
        parent = new_states[new].parent
        while parent is not None:
            if parent.id not in ids:
                ids.append(parent.id)
            parent = parent.parent
    active = set(ids)
    for new in ids:
        state = new_states[new]
        if state.is_atomic:
            continue
        children = [c for c in state.states if c.id in active]
        if state.parallel and len(children) != len(state.states):
            return f"state {new} of {_name(new_cls)} is parallel: the run would be in only some of its regions"
        if not state.parallel and len(children) != 1:
            return (f"state {new} of {_name(new_cls)} is compound: the run would be in "
                    f"{'none' if not children else 'several'} of its states (map to one of them)")
    order = {key: i for i, key in enumerate(new_states)}
    return sorted(ids, key=order.__getitem__), renamed, preimage


def _children(verdict, preimage, old_cls, new_cls):
    for new in verdict.configuration:
        old = preimage.get(new)
        before = old_cls.child_for(old) if old is not None else None
        after = new_cls.child_for(new)
        if before is None and after is None:
            continue
        if old != new or before is None or after is None or \
                (before.kind, before.workflow, before.version) != (after.kind, after.workflow, after.version):
            raise _Impossible(f"state {old or new} starts child runs ({(before or after).kind} of "
                              f"{(before or after).workflow}) that {_name(new_cls)} does not start the same way")


def _spec_settings(spec) -> dict:
    keys = ("retries", "backoff", "max_backoff", "time_limit", "on_error", "default", "visibility_timeout")
    return {k: getattr(spec, k) for k in keys if hasattr(spec, k)}


def _tasks(verdict, sit, preimage, old_cls, new_cls, mapping):
    failed = sit.status == "failed"
    for state, name, kind in sit.tasks:
        new = mapping.get(state, state)
        spec = new_cls.step_for(new)
        if spec is None or spec.name != name or spec.kind != kind:
            what = "failed in" if failed else "is outstanding (queued or running) for"
            raise _Impossible(f"{kind} {name} {what} state {state}, and {_name(new_cls)} has no {kind} "
                              f"{name} in {new}" + ("" if failed else ": wait for it to finish"))
        verdict.tasks[(state, name)] = new
        old_spec = old_cls.step_for(state)
        diff = {k: (v, _spec_settings(spec).get(k)) for k, v in _spec_settings(old_spec).items()
                if _spec_settings(spec).get(k) != v} if old_spec is not None else {}
        verdict.changes.append(f"keeps {kind} {name}" + (f" in {new}" if new != state else "") +
                               "".join(f", {k} {a} -> {b}" for k, (a, b) in diff.items()))
    for new in verdict.configuration:
        spec = new_cls.step_for(new)
        old = preimage.get(new)
        before = old_cls.step_for(old) if old is not None else None
        if spec is None or (before is not None and before.name == spec.name and before.kind == spec.kind):
            continue
        if failed:
            raise _Impossible(f"{_name(new_cls)} adds {spec.kind} {spec.name} to {new}, and the run failed")
        verdict.new_tasks.append(new)
        verdict.changes.append(f"queues {spec.kind} {spec.name} in {new} (new in {_name(new_cls)})")


def _timers(verdict, sit, preimage, old_cls, new_cls, mapping):
    for state, name, kind, event in sit.timers:
        new = mapping.get(state, state)
        if kind == "recheck":
            spec = new_cls.step_for(new)
            if spec is not None and spec.name == name:
                verdict.timers[(state, name)] = ("keep", new)
            else:
                verdict.timers[(state, name)] = ("cancel", new)
                verdict.changes.append(f"cancels the recheck of {name} ({_name(new_cls)} has no step {name} in {new})")
            continue
        spec = next((t for t in new_cls._timers if t.state_id == new and t.name == name), None)
        if spec is None:
            verdict.timers[(state, name)] = ("cancel", new)
            verdict.changes.append(f"cancels timer {name} ({_name(new_cls)} does not declare it on {new})")
            continue
        if not _takes(new_cls, verdict.configuration, spec.send):
            raise _Impossible(f"timer {name} would send {spec.send}, which {_name(new_cls)} does not take in {new}")
        old_spec = next((t for t in old_cls._timers if t.state_id == state and t.name == name), None)
        same = old_spec is not None and (old_spec.send, old_spec.delay, old_spec.at_field) == \
            (spec.send, spec.delay, spec.at_field)
        verdict.timers[(state, name)] = ("keep" if same else "rearm", new)
        if not same:
            verdict.changes.append(f"re-arms timer {name} as {_name(new_cls)} declares it ({_when(old_spec)} -> "
                                   f"{_when(spec)}, from the same entry)")
    for new in verdict.configuration:
        old = preimage.get(new)
        declared = {t.name for t in old_cls._timers if t.state_id == old}
        for spec in new_cls._timers:
            if spec.state_id == new and spec.name not in declared:
                verdict.new_timers.append((new, spec.name))
                verdict.changes.append(f"arms timer {spec.name} on {new} ({_when(spec)}, from the state's entry; "
                                       f"new in {_name(new_cls)})")


def _when(spec) -> str:
    if spec is None:
        return "none"
    due = f"after {duration(spec.delay)}" if spec.delay is not None else f"at data[{spec.at_field!r}]"
    return f"{due}, sends {spec.send}"


def _takes(cls, configuration, event) -> bool:
    states = cls._states_by_id
    return any(event in t.events for key in configuration for t in states[key].transitions)


def _history(verdict, sit, new_cls, mapping):
    for history_id, ids in sit.remembered:
        if history_id not in new_cls._states_by_id or any(mapping.get(i, i) not in new_cls._states_by_id for i in ids):
            raise _Impossible(f"history state {history_id} remembers {', '.join(ids)}, which {_name(new_cls)} "
                              "cannot remember the same way")


def _events(verdict, sit, old_cls, new_cls):
    def taken(cls, configuration):
        states = cls._states_by_id
        return {e for key in configuration for t in states[key].transitions for e in t.events
                if not e.startswith(("done.", "error."))}
    lost = taken(old_cls, sit.configuration) - taken(new_cls, verdict.configuration)
    gained = taken(new_cls, verdict.configuration) - taken(old_cls, sit.configuration)
    if lost:
        verdict.changes.append(f"no longer takes event(s) {', '.join(sorted(lost))}")
    if gained:
        verdict.changes.append(f"now takes event(s) {', '.join(sorted(gained))}")


# -- moving one run, inside its transition ------------------------------------------------------

_TASK_COLUMNS = (tasks.c.id, tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.kind, tasks.c.status,
                 tasks.c.entry_seq)
_TIMER_COLUMNS = (timers.c.id, timers.c.run_id, timers.c.state, timers.c.name, timers.c.kind, timers.c.event,
                  timers.c.status, timers.c.due_at, timers.c.entry_seq)
# What moving writes, each statement once: a chunk of runs moved together runs each as one executemany.
_MOVE_TASK = update(tasks).where(tasks.c.id == bindparam("b_id")).values(
    state=bindparam("b_state"), max_attempts=bindparam("b_max_attempts"), updated_at=bindparam("b_now"))
_MOVE_TIMER = update(timers).where(timers.c.id == bindparam("b_id")).values(state=bindparam("b_state"))
_REARM_TIMER = update(timers).where(timers.c.id == bindparam("b_id")).values(
    state=bindparam("b_state"), event=bindparam("b_event"), due_at=bindparam("b_due_at"))
_CANCEL_TIMER = update(timers).where(timers.c.id == bindparam("b_id")).values(status="cancelled")
_SET_VERSION = update(runs).where(runs.c.id == bindparam("b_id")).values(version=bindparam("b_version"))


def read(conn, run_ids: list) -> dict:
    """The task and timer rows situations are made of, of each of these runs: {run id: (tasks, timers)}."""
    out = {run_id: ([], []) for run_id in run_ids}
    low, high = min(run_ids), max(run_ids)  # an index range whatever the planner knows
    for row in conn.execute(select(*_TASK_COLUMNS).where(
            tasks.c.run_id.in_(run_ids), tasks.c.run_id >= low, tasks.c.run_id <= high,
            tasks.c.status.in_((*OPEN, "failed")))).mappings():
        out[row["run_id"]][0].append(dict(row))
    for row in conn.execute(select(*_TIMER_COLUMNS).where(
            timers.c.run_id.in_(run_ids), timers.c.run_id >= low, timers.c.run_id <= high,
            timers.c.status.in_(("armed", "suspended")))).mappings():
        out[row["run_id"]][1].append(dict(row))
    return out


def move(change, verdict: Verdict, new_cls, task_rows, timer_rows, plan: dict) -> None:
    """Move the locked run of ``change`` as ``verdict`` says (see the module's docstring)."""
    conn, run_id, old_cls = change.conn, change.row["id"], change.cls
    if verdict.outcome == IMPOSSIBLE:
        raise MigrationRefused(run_id, verdict.reason)
    mapping = plan["mapping"]
    old_entries = change.entries
    entries = {}
    for old, seq in old_entries.items():
        entries.setdefault(mapping.get(old, old), seq)
    for new in verdict.configuration:  # parents the new version nests states in
        if new not in entries:
            entries[new] = min(seq for key, seq in entries.items()
                               if _is_inside(new_cls, key, new))
    defer = change.writes.defer
    for row in task_rows:
        new = verdict.tasks.get((row["state"], row["name"]))
        if new is not None:
            defer(_MOVE_TASK, {"b_id": row["id"], "b_state": new, "b_now": change.now,
                               "b_max_attempts": new_cls.step_for(new).max_attempts})
    for row in timer_rows:
        action, new = verdict.timers[(row["state"], row["name"])]
        if action == "cancel":
            defer(_CANCEL_TIMER, {"b_id": row["id"]})
            change.open_timers -= 1
        elif action == "rearm":
            old_spec = next((t for t in old_cls._timers if t.state_id == row["state"] and t.name == row["name"]), None)
            spec = next(t for t in new_cls._timers if t.state_id == new and t.name == row["name"])
            entered = _entered_at(conn, run_id, row["entry_seq"], row, old_spec)
            defer(_REARM_TIMER, {"b_id": row["id"], "b_state": new, "b_event": spec.send,
                                 "b_due_at": _due(change, spec, entered)})
        elif new != row["state"]:
            defer(_MOVE_TIMER, {"b_id": row["id"], "b_state": new})
    detail = {"from_version": old_cls.version, "to_version": new_cls.version, "mapping": mapping or None,
              "plan": plan["id"], "outcome": verdict.outcome, "changes": verdict.changes}
    source = change.leaves()
    change.switch_version(new_cls, verdict.configuration, entries)
    if change.remembered:
        change.remembered = {k: [mapping.get(i, i) for i in ids] for k, ids in change.remembered.items()}
    defer(_SET_VERSION, {"b_id": run_id, "b_version": new_cls.version})
    if old_cls._search != new_cls._search:  # the new version's fields, from the data as it is
        conn.execute(delete(run_search).where(run_search.c.run_id == run_id))
        change.search_before = {}
    change.record("migrated", source=source, target=change.leaves(), cause="migration", detail=detail)
    for new in verdict.new_tasks:
        change.add_task(new, entries[new], new_cls.step_for(new))
    for new, name in verdict.new_timers:
        spec = next(t for t in new_cls._timers if t.state_id == new and t.name == name)
        entered = _entered_at(conn, run_id, entries[new])
        change.add_timer(new, entries[new], spec.name, "timer", spec.send, _due(change, spec, entered))
        if change.status == "failed":
            change.new_timers[-1]["status"] = "suspended"


def _is_inside(cls, key, parent_id) -> bool:
    state = cls._states_by_id.get(key)
    while state is not None:
        state = state.parent
        if state is not None and state.id == parent_id:
            return True
    return False


def _entered_at(conn, run_id, seq, timer_row=None, old_spec=None) -> float:
    """When the run entered the state of history entry ``seq``: a delay timer's due time less its
    delay, else the entry's time in history."""
    if timer_row is not None and old_spec is not None and old_spec.delay is not None:
        return timer_row["due_at"] - old_spec.delay
    found = conn.execute(select(history.c.at).where(history.c.run_id == run_id, history.c.seq == seq)).scalar()
    return found


def _due(change, spec, entered) -> float:
    if spec.delay is not None:
        return (entered if entered is not None else change.now) + spec.delay
    return change.due_at(spec)
