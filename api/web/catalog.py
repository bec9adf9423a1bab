"""The workflows pages: each diagram with the runs now in each state, steps and timers per state."""

import inspect

from flask import render_template

from engine.describe import describe

from ..context import engine
from . import blueprint, data, diagram


@blueprint.get("/workflows")
def workflows_page():
    rt = engine()
    items = []
    for name in rt.registry.names():
        cls = rt.registry.get(name)
        counts = data.state_counts(rt, name)
        items.append({
            "name": name, "latest": cls.version, "versions": rt.registry.versions(name),
            "description": (inspect.getdoc(cls) or "").split("\n\n")[0],
            "runs": sum(sum(per.values()) for per in counts.values()),
            "svg": diagram.render(cls, counts=counts.get(cls.version, {}), label=f"state diagram of {name}"),
        })
    return render_template("workflows.html", items=items)


@blueprint.get("/workflows/<name>")
def workflow_page(name):
    rt = engine()
    rt.registry.get(name)  # 404 page when unknown
    counts = data.state_counts(rt, name)
    versions = []
    for version in sorted(rt.registry.versions(name), reverse=True):
        cls = rt.registry.get(name, version)
        info = describe(cls)
        per_state = counts.get(version, {})
        steps = {st["state"]: st for st in info["steps"]}
        rows = []
        for state in info["states"]:
            rows.append({
                **state, "runs": per_state.get(state["id"], 0), "step_spec": steps.get(state["id"]),
                "timer_specs": [t for t in info["timers"] if t["state"] == state["id"]],
                "out": [t for t in info["transitions"] if t["source"] == state["id"]],
            })
        versions.append({"info": info, "rows": rows, "total": sum(per_state.values()),
                         "svg": diagram.render(cls, counts=per_state, label=f"state diagram of {name} v{version}")})
    return render_template("workflow.html", name=name, versions=versions,
                           version_numbers=rt.registry.versions(name))
