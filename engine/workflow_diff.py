"""What changed between two versions of a workflow, read from their definitions alone (no runs).

``diff(old, new, renames)`` compares two workflow classes section by section: states, events,
transitions (with their guards, as ``describe`` shows them), steps, activities, timers, triggers,
child runs and maps. ``renames`` maps an old state id to a new one: the two are then compared as
one state, and everything declared on them (transitions, steps, timers…) with them. The result is
plain JSON data (``GET /api/workflows/<name>/diff``); ``render_text`` writes it for people
(``interlock diff``, the diff page)::

    {"workflow", "from", "to", "renames": {old: new}, "identical": bool,
     "states": {"added": [id], "removed": [id], "renamed": [{"from", "to"}],
                "changed": [{"id", "old_id", "changes": {field: [old, new]}}]},
     "events": {"added": [name], "removed": [name]},
     "transitions": {"added": [T], "removed": [T], "changed": [T + {"old_source", "old_target", "changes"}]},
     "steps" | "activities" | "children" | "maps" | "timers":
         {"added": [item], "removed": [item], "changed": [{"name", "state", "old_state", "changes"}]},
     "triggers": {"added": [item], "removed": [item], "changed": [{"name", "changes"}]}}

An added item names the new version's states, a removed one the old version's. A changed item
holds the new version's ids, and the old ones beside them (``old_id``, ``old_state``…); a field
that names states is compared after renaming, and shown as each version has it.
"""

from collections import defaultdict
from typing import Any, Callable

from .errors import InvalidMapping

SECTIONS = ("states", "events", "transitions", "steps", "activities", "timers", "triggers", "children", "maps")
STATE_FIELDS = ("initial", "final", "status", "parent", "kind")
STEP_FIELDS = ("retries", "backoff", "max_backoff", "time_limit", "on_error", "default")
ACTIVITY_FIELDS = ("retries", "visibility_timeout", "on_error", "default")
TIMER_FIELDS = ("state", "send", "after", "at_field")
TRIGGER_FIELDS = ("field", "send", "states")
CHILD_FIELDS = ("workflow", "version", "on_done", "on_error", "result", "parent_close")
MAP_FIELDS = ("workflow", "version", "items", "max_concurrency", "tolerated_failures", "on_done", "on_error",
              "results", "parent_close")
# Fields holding seconds: shown as durations.
DURATIONS = {"backoff", "max_backoff", "time_limit", "visibility_timeout", "after"}

Item = dict[str, Any]


# -- the mapping -------------------------------------------------------------------------------

def parse_renames(values, sep: str = "=") -> dict[str, str]:
    """``["old=new", …]`` (``sep`` between the two ids) as a dict; a malformed pair, or an old
    state mapped twice, is an ``InvalidMapping``."""
    out: dict[str, str] = {}
    for value in values or ():
        old, found, new = str(value).partition(sep)
        old, new = old.strip(), new.strip()
        if not found or not old or not new or sep in new:
            raise InvalidMapping(f"{value!r} is not a mapping old{sep}new (two state ids)")
        if out.get(old, new) != new:
            raise InvalidMapping(f"state {old!r} is mapped twice: to {out[old]!r} and to {new!r}")
        out[old] = new
    return out


def _label(cls) -> str:
    return f"{cls.workflow_name} v{cls.version}"


def check_renames(old, new, renames: dict[str, str] | None) -> dict[str, str]:
    """The mapping, checked: each old id a state of ``old``, each new id one of ``new``, no two
    states of ``old`` the same state afterwards. A state mapped to itself is left out."""
    renames = {o: n for o, n in (renames or {}).items() if o != n}
    old_ids, new_ids = list(old._states_by_id), list(new._states_by_id)
    for o, n in renames.items():
        if o not in old._states_by_id:
            raise InvalidMapping(f"{_label(old)} has no state {o!r} (mapped to {n!r}); its states: "
                                 f"{', '.join(old_ids)}")
        if n not in new._states_by_id:
            raise InvalidMapping(f"{_label(new)} has no state {n!r} (mapped from {o!r}); its states: "
                                 f"{', '.join(new_ids)}")
    onto: dict[str, str] = {}
    for o in old_ids:
        n = renames.get(o, o)
        if n in onto:
            first = onto[n]
            if n in (first, o):  # one of the two is not mapped: it stays itself
                moved = first if n == o else o
                raise InvalidMapping(f"{moved!r} is mapped to {n!r}, but {n!r} is a state of {_label(old)} too: "
                                     f"map {n!r} to another state as well, or leave {moved!r} out (a diff "
                                     "compares one state with one)")
            raise InvalidMapping(f"{first!r} and {o!r} would both be {n!r} in {_label(new)}: a diff compares "
                                 "one state with one")
        onto[n] = o
    return renames


# -- each version as data ------------------------------------------------------------------------

def _kind(state) -> str:
    if getattr(state, "is_history", False):
        return "history"
    if state.parallel:
        return "parallel"
    return "compound" if state.is_compound else "atomic"


def _states(cls) -> list[Item]:
    return [{"id": s.id, "initial": bool(s.initial), "final": bool(s.final),
             "status": cls.status_of_final(s.id) if s.final else None,
             "parent": s.parent.id if s.parent is not None else None, "kind": _kind(s)}
            for s in cls.states_map.values()]


def _transitions(cls) -> list[Item]:
    return [{"source": s.id, "event": t.event, "target": target.id, "guards": [str(spec) for spec in t.cond]}
            for s in cls.states_map.values() for t in s.transitions for target in t.targets]


def _function_name(value) -> Any:
    return f"{getattr(value, '__name__', 'function')}()" if callable(value) else value


def _specs(cls) -> dict[str, list[Item]]:
    def fields(spec, names):
        return {name: _function_name(getattr(spec, name)) for name in names}

    children = [c for c in cls._children.values() if c.kind == "child"]
    maps = [c for c in cls._children.values() if c.kind == "map"]
    return {
        "steps": [{"name": s.name, "state": s.state_id, **fields(s, STEP_FIELDS)} for s in cls._steps.values()],
        "activities": [{"name": a.name, "state": a.state_id, **fields(a, ACTIVITY_FIELDS)}
                       for a in cls._activities.values()],
        "timers": [{"name": t.name, "state": t.state_id, "send": t.send, "after": t.delay, "at_field": t.at_field}
                   for t in cls._timers],
        "triggers": [{"name": t.name, "field": t.field, "send": t.send, "states": list(t.state_ids)}
                     for t in cls._triggers],
        "children": [{"name": c.name, "state": c.state_id, **fields(c, CHILD_FIELDS)} for c in children],
        "maps": [{"name": c.name, "state": c.state_id, **fields(c, MAP_FIELDS)} for c in maps],
    }


# -- comparing ------------------------------------------------------------------------------------

def _same(value):
    """What a value is compared as: a list of states (a trigger's) in any order."""
    return sorted(value) if isinstance(value, list) else value


def _keyed(old: list[Item], new: list[Item], key: Callable[[Item], tuple], fields, refs, rename,
           ident: Callable[[Item, Item], Item]) -> dict:
    """Items paired by ``key`` (old ones keyed after renaming the state ids in ``refs``); the
    pairs whose ``fields`` differ after renaming are changed."""
    def renamed(item):
        return {k: ([rename(x) for x in v] if isinstance(v, list) else rename(v)) if k in refs else v
                for k, v in item.items()}

    olds = {key(renamed(item)): item for item in old}
    news = {key(item): item for item in new}
    changed = []
    for k, n in news.items():
        if k in olds:
            o, mapped = olds[k], renamed(olds[k])
            changes = {f: [o[f], n[f]] for f in fields if _same(mapped[f]) != _same(n[f])}
            if changes:
                changed.append({**ident(o, n), "changes": changes})
    return {"added": [n for k, n in news.items() if k not in olds],
            "removed": [o for k, o in olds.items() if k not in news], "changed": changed}


def _compare_transitions(old: list[Item], new: list[Item], rename) -> dict:
    """Paired by (source, event, target) after renaming; where several share that, those with the
    same guards first, then the rest in order: their guards changed."""
    groups: dict[tuple, tuple[list, list]] = defaultdict(lambda: ([], []))
    for t in old:
        groups[(rename(t["source"]), t["event"], rename(t["target"]))][0].append(t)
    for t in new:
        groups[(t["source"], t["event"], t["target"])][1].append(t)
    added, removed, changed = [], [], []
    for olds, news in groups.values():
        olds, news = list(olds), list(news)
        for n in list(news):
            same = next((o for o in olds if o["guards"] == n["guards"]), None)
            if same is not None:
                olds.remove(same)
                news.remove(n)
        for o, n in zip(olds, news):
            changed.append({**n, "old_source": o["source"], "old_target": o["target"],
                            "changes": {"guards": [o["guards"], n["guards"]]}})
        added += news[len(olds):]
        removed += olds[len(news):]
    order_new = {id(t): i for i, t in enumerate(new)}
    order_old = {id(t): i for i, t in enumerate(old)}
    return {"added": sorted(added, key=lambda t: order_new[id(t)]),
            "removed": sorted(removed, key=lambda t: order_old[id(t)]), "changed": changed}


def diff(old_cls, new_cls, renames: dict[str, str] | None = None) -> dict:
    """The differences from ``old_cls`` to ``new_cls`` (two versions of one workflow, or any two
    workflow classes), ``renames`` mapping old state ids to new ones (``InvalidMapping`` if wrong)."""
    renames = check_renames(old_cls, new_cls, renames)

    def rename(state_id):
        return renames.get(state_id, state_id) if isinstance(state_id, str) else state_id

    out: dict[str, Any] = {"workflow": new_cls.workflow_name, "from": old_cls.version, "to": new_cls.version,
                           "renames": dict(renames)}
    states = _keyed(_states(old_cls), _states(new_cls), lambda s: (s["id"],), STATE_FIELDS, {"id", "parent"},
                    rename, lambda o, n: {"id": n["id"], "old_id": o["id"]})
    out["states"] = {"added": [s["id"] for s in states["added"]], "removed": [s["id"] for s in states["removed"]],
                     "renamed": [{"from": o, "to": n} for o, n in renames.items()], "changed": states["changed"]}
    old_events, new_events = list(old_cls._event_ids), list(new_cls._event_ids)
    out["events"] = {"added": [e for e in new_events if e not in old_events],
                     "removed": [e for e in old_events if e not in new_events]}
    out["transitions"] = _compare_transitions(_transitions(old_cls), _transitions(new_cls), rename)
    old_specs, new_specs = _specs(old_cls), _specs(new_cls)

    def on_state(o, n):
        return {"name": n["name"], "state": n["state"], "old_state": o["state"]}

    by_state = lambda item: (item["state"], item["name"])  # noqa: E731
    by_name = lambda item: (item["name"],)  # noqa: E731
    for section, fields, key, refs, ident in (
            ("steps", STEP_FIELDS, by_state, {"state"}, on_state),
            ("activities", ACTIVITY_FIELDS, by_state, {"state"}, on_state),
            ("timers", TIMER_FIELDS, by_name, {"state"}, on_state),
            ("triggers", TRIGGER_FIELDS, by_name, {"states"}, lambda o, n: {"name": n["name"]}),
            ("children", CHILD_FIELDS, by_state, {"state"}, on_state),
            ("maps", MAP_FIELDS, by_state, {"state"}, on_state)):
        out[section] = _keyed(old_specs[section], new_specs[section], key, fields, refs, rename, ident)
    out["identical"] = not any(items for section in SECTIONS for items in out[section].values())
    return out


# -- for people --------------------------------------------------------------------------------

def duration(seconds) -> str:
    if seconds is None:
        return "none"
    if seconds == 0:
        return "0 s"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}s" if unit == "day" and n != 1 else f"{n} {unit}"
    return f"{seconds:g} s" if seconds >= 1 else f"{seconds * 1000:g} ms"


def value_text(field: str, value) -> str:
    if field in DURATIONS:
        return duration(value)
    if field == "guards":
        return " and ".join(value) or "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None or value == []:
        return "none"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def changes_text(changes: dict) -> str:
    return ", ".join(f"{field} {value_text(field, old)} → {value_text(field, new)}"
                     for field, (old, new) in changes.items())


def _where(item) -> str:
    old, new = item.get("old_state", item.get("state")), item.get("state")
    return f" ({old} → {new})" if old != new else f" ({new})" if new else ""


def transition_text(t) -> str:
    event = t["event"].split()[0] if t["event"].strip() else "(no event)"
    guards = f" if {' and '.join(t['guards'])}" if t["guards"] else ""
    return f"transition {t['source']} → {t['target']} on {event}{guards}"


KINDS = {"steps": "step", "activities": "activity", "timers": "timer", "triggers": "trigger",
         "children": "child", "maps": "map"}


def _item_head(section: str, item) -> str:
    return f"{KINDS[section]} {item['name']}{_where(item)}"


def _item_text(section: str, item) -> str:
    text = _item_head(section, item)
    if section == "timers":
        when = f"after {duration(item['after'])}" if item["after"] is not None else f"at data.{item['at_field']}"
        text += f": {when} → {item['send']}"
    elif section == "triggers":
        text += f": when {item['field']} changes → {item['send']}"
    elif section in ("children", "maps"):
        text += f": workflow {item['workflow']}" + (f" v{item['version']}" if item["version"] else "")
    return text


def lines(d: dict) -> list[tuple[str, str]]:
    """(sign, text) per difference: ``+`` added, ``-`` removed, ``=`` renamed, ``~`` changed."""
    out: list[tuple[str, str]] = []
    states = d["states"]
    out += [("-", f"state {s}") for s in states["removed"]]
    out += [("+", f"state {s}") for s in states["added"]]
    out += [("=", f"state {r['from']} renamed {r['to']}") for r in states["renamed"]]
    for s in states["changed"]:
        was = f" (was {s['old_id']})" if s["old_id"] != s["id"] else ""
        out.append(("~", f"state {s['id']}{was}: {changes_text(s['changes'])}"))
    out += [("-", f"event {e}") for e in d["events"]["removed"]]
    out += [("+", f"event {e}") for e in d["events"]["added"]]
    out += [("-", transition_text(t)) for t in d["transitions"]["removed"]]
    out += [("+", transition_text(t)) for t in d["transitions"]["added"]]
    out += [("~", f"{transition_text({**t, 'guards': []})}: {changes_text(t['changes'])}")
            for t in d["transitions"]["changed"]]
    for section in SECTIONS[3:]:
        part = d[section]
        out += [("-", _item_text(section, item)) for item in part["removed"]]
        out += [("+", _item_text(section, item)) for item in part["added"]]
        for item in part["changed"]:
            changes = dict(item["changes"])
            moved = "state" in changes and section == "timers"
            changes.pop("state", None)
            text = ", ".join(filter(None, ["moved" if moved else "", changes_text(changes)]))
            out.append(("~", f"{_item_head(section, item)}: {text}"))
    return out


def render_text(d: dict) -> str:
    head = f"{d['workflow']} v{d['from']} → v{d['to']}"
    if d["renames"]:
        head += " (mapping " + ", ".join(f"{o} → {n}" for o, n in d["renames"].items()) + ")"
    body = [f"{sign} {text}" for sign, text in lines(d)] or ["no differences"]
    return "\n".join([head, *body])
