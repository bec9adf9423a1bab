"""What a workflow definition declares, as plain data, and its state diagram."""

import inspect

from statemachine.contrib.diagram.formatter import formatter

from . import machine as m


def describe(cls) -> dict:
    steps = cls._steps
    states, transitions = [], []
    for state in cls.states_map.values():
        value = state.id
        states.append({
            "id": value, "name": state.name, "initial": state.initial, "final": state.final,
            "status": cls.status_of_final(value) if state.final else None,
            "step": steps[value].name if value in steps else None,
            "activity": cls._activities[value].name if value in cls._activities else None,
            "timers": [t.name for t in cls._timers if t.state_id == value],
        })
        for t in state.transitions:
            for target in t.targets:
                transitions.append({"event": t.event, "source": value, "target": target.id,
                                    "guards": [str(spec) for spec in t.cond]})
    return {
        "name": cls.workflow_name, "version": cls.version,
        "description": inspect.getdoc(cls) or "",
        "states": states, "events": list(cls._event_ids), "transitions": transitions,
        "steps": [{"name": s.name, "state": s.state_id, "retries": s.retries, "backoff": s.backoff,
                   "max_backoff": s.max_backoff, "time_limit": s.time_limit, "on_error": s.on_error,
                   "default": s.default} for s in steps.values()],
        "activities": [{"name": a.name, "state": a.state_id, "retries": a.retries,
                        "visibility_timeout": a.visibility_timeout, "on_error": a.on_error,
                        "default": a.default} for a in cls._activities.values()],
        "timers": [{"name": t.name, "state": t.state_id, "send": t.send, "after": t.delay,
                    "at_field": t.at_field} for t in cls._timers],
        "triggers": [{"name": t.name, "field": t.field, "send": t.send, "states": list(t.state_ids)}
                     for t in cls._triggers],
        "diagram": diagram(cls, "mermaid"),
    }


def diagram(cls, fmt: str = "mermaid", active: list | None = None) -> str:
    """Mermaid or DOT source; with ``active`` (a stored configuration) those states are highlighted."""
    target = cls
    if active:
        ctx = m.RunContext(id="diagram", workflow=cls.workflow_name, version=cls.version, data={})
        target = m.restore(cls, ctx, list(active))
    return formatter.render(target, fmt)
