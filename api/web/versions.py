"""The diff page: what changed between two versions of a workflow, as text and as both diagrams
side by side with the differences marked (engine/workflow_diff.py makes the diff)."""

import re

from flask import render_template, request

from engine.errors import InvalidMapping
from engine.workflow_diff import diff, lines, parse_renames

from ..context import engine
from . import blueprint, diagram

SPEC_SECTIONS = ("steps", "activities", "timers", "children", "maps")


def marks(d: dict) -> tuple[dict, dict]:
    """The marks of the older version's diagram and of the newer one's: removed and added states and
    transitions, states renamed, and states that changed (themselves, or what is declared on them)."""
    renames = d["renames"]
    back = {new: old for old, new in renames.items()}
    states = d["states"]
    old = {"states": {s: "removed" for s in states["removed"]}, "edges": {}}
    new = {"states": {s: "added" for s in states["added"]}, "edges": {}}
    changed = {s["id"] for s in states["changed"]}  # ids in the newer version, of states in both
    for section in SPEC_SECTIONS:
        part = d[section]
        changed |= {item["state"] for item in part["added"] if item["state"] not in new["states"]}
        changed |= {renames.get(item["state"], item["state"]) for item in part["removed"]
                    if item["state"] not in old["states"]}
        for item in part["changed"]:
            changed.add(item["state"])
            if renames.get(item["old_state"], item["old_state"]) != item["state"]:  # moved: both ends
                changed.add(renames.get(item["old_state"], item["old_state"]))
    for state in changed:
        new["states"][state] = old["states"][back.get(state, state)] = "changed"
    for r in states["renamed"]:
        old["states"][r["from"]], new["states"][r["to"]] = "renamed", "renamed"
    transitions = d["transitions"]
    for t in transitions["removed"]:
        old["edges"][diagram.edge_key(t["source"], t["event"], t["target"])] = "removed"
    for t in transitions["added"]:
        new["edges"][diagram.edge_key(t["source"], t["event"], t["target"])] = "added"
    for t in transitions["changed"]:
        old["edges"][diagram.edge_key(t["old_source"], t["event"], t["old_target"])] = "changed"
        new["edges"][diagram.edge_key(t["source"], t["event"], t["target"])] = "changed"
    return old, new


def _version(value, default: int, versions: list[int]) -> int | None:
    if value in (None, ""):
        return default
    return int(value) if re.fullmatch(r"[1-9][0-9]{0,9}", value) and int(value) in versions else None


@blueprint.get("/workflows/<name>/diff")
def workflow_diff_page(name):
    rt = engine()
    rt.registry.get(name)  # the 404 page when unknown
    versions = rt.registry.versions(name)
    newest = versions[-1]
    earlier = versions[-2] if len(versions) > 1 else newest
    wanted = {"from": _version(request.args.get("from"), earlier, versions),
              "to": _version(request.args.get("to"), newest, versions)}
    # One field may hold several pairs: "shipped:in_transit, labelling:packing".
    typed = " ".join(request.args.getlist("map"))
    pairs = [p for p in re.split(r"[\s,]+", typed) if p]
    error, d, old, new = None, None, None, None
    unknown = [f"{which} {request.args.get(which)!r}" for which, v in wanted.items() if v is None]
    if unknown:
        error = f"{name} has no version {' and '.join(unknown)} loaded; its versions: {', '.join(map(str, versions))}"
    else:
        old, new = rt.registry.get(name, wanted["from"]), rt.registry.get(name, wanted["to"])
        try:
            d = diff(old, new, parse_renames(pairs, ":"))
        except InvalidMapping as exc:
            error = str(exc)
    pictures = []
    if d is not None:
        for cls, mark in zip((old, new), marks(d)):
            pictures.append({"version": cls.version, "svg": diagram.render(
                cls, marks=mark, label=f"state diagram of {name} v{cls.version}, differences marked")})
    signs = {"+": "added", "-": "removed", "=": "renamed", "~": "changed"}
    listed = [{"sign": sign, "kind": signs[sign], "text": text} for sign, text in lines(d)] if d else []
    return render_template("workflow_diff.html", name=name, versions=versions, wanted=wanted, typed=typed,
                           error=error, diff=d, lines=listed, pictures=pictures), 422 if error else 200
