"""Why a run is where it is: what it accepts, what blocks, what it waits for."""

from sqlalchemy import and_, false, or_, select

from . import admission, limit_views, pauses
from . import machine as m
from .errors import WorkflowNotFound
from .models import history, maps, runs, signals, tasks, timers
from .queries import get_run
from .timeparse import iso
from .transitions import ACTIVE, OPEN_TASK
from .workers import loaded_by_live_workers


# A state that fans out over items may start many children: the newest this many are listed.
CHILDREN_SHOWN = 100
# More children than this are summed up in ``waiting_for`` rather than named one by one.
CHILDREN_NAMED = 3
# A child the parent still waits for: one that may still end (a failed run can be retried).
WAITED_ON = ("running", "waiting", "failed")


def not_loaded(rt, workflow: str, version: int) -> str:
    """Why this process leaves a run alone: it has not loaded the run's workflow (version).

    A process knows only what it has loaded, so this says nothing about other workers."""
    others = [v for v in rt.registry.versions(workflow) if v != version]
    loaded_instead = f"; it loads {workflow} " + ", ".join(f"v{v}" for v in others) if others else ""
    return (f"workflow {workflow} v{version} is not loaded in this process "
            f"(INTERLOCK_WORKFLOWS={rt.settings.workflows}{loaded_instead}): its timers, steps and lost "
            f"tasks are left to a worker that loads it, and its events cannot be checked here")


def explain(rt, run_id: str) -> dict:
    now = rt.clock.now()
    with rt.db.read() as conn:
        run = get_run(conn, run_id)
        try:
            cls = rt.registry.get(run.workflow, run.version)
        except WorkflowNotFound:
            cls = None
        entries = conn.execute(select(runs.c.entries).where(runs.c.id == run_id)).scalar()
        last_entry = max(entries.values(), default=0)
        entered = conn.execute(select(history.c.at).where(
            history.c.run_id == run_id, history.c.seq == last_entry)).scalar()
        armed = conn.execute(select(timers).where(
            timers.c.run_id == run_id, timers.c.status.in_(("armed", "suspended")))
            .order_by(timers.c.due_at)).mappings().all()
        open_tasks = conn.execute(select(tasks).where(
            tasks.c.run_id == run_id, tasks.c.status.in_((*OPEN_TASK, "failed")))
            .order_by(tasks.c.created_at.desc())).mappings().all()
        kids = _children(conn, run, entries) if run.status in ACTIVE else []
        fanouts = _maps(conn, run, entries, cls) if run.status in ACTIVE or run.status == "failed" else []
        accepted, blocked = [], []
        if cls is not None:
            ctx = m.RunContext(id=run.id, workflow=run.workflow, version=run.version,
                               data=dict(run.data), business_key=run.business_key, status=run.status)
            machine = m.restore(cls, ctx, list(run.configuration))
            accepted, blocked = _events(machine, ctx, conn, run.status)
    outstanding = [_task(t, now) for t in open_tasks if _is_current(t, run)]
    if any(t["status"] == "limited" for t in outstanding):
        with rt.db.read() as conn:
            for t in outstanding:
                if t["status"] == "limited":
                    t["limit"] = limit_views.waiting_for(conn, t["id"], now)
    for t in outstanding:  # a start put off by a rate limit
        spec = cls.step_for(t["state"]) if cls is not None else None
        if t["next_attempt_at"] and getattr(spec, "rate", None) is not None and t["attempt"] == 0:
            t["rate_limit"] = spec.limit_name(spec.rate)
    unloaded = None if cls is not None else not_loaded(rt, run.workflow, run.version)
    with rt.db.read() as conn:
        workflow_pause = pauses.workflow_pause_of(conn, run.workflow, run.version) if run.status in ACTIVE else None
        live = loaded_by_live_workers(conn, now, rt.settings.lease_seconds) if run.status in ACTIVE else None
    nobody = None
    if live and (run.workflow, run.version) not in live:  # workers run, but none for this version
        others = [v for v in rt.registry.versions(run.workflow) if v != run.version]
        nobody = (f"no live worker loads workflow {run.workflow} v{run.version}: its steps, timers and lost tasks "
                  "wait until one does" + (f" (or move it: interlock migrate plan {run.workflow} --from "
                                           f"{run.version} --to {others[-1]})" if others else ""))
    mapped = {fanout["state"] for fanout in fanouts}
    waiting_for = _summary(run, accepted, armed, outstanding,
                           [*map(_waiting_for_map, fanouts),
                            *_waiting_for_children(cls, [k for k in kids if k["parent_state"] not in mapped])])
    if unloaded is not None and (run.status in ACTIVE or run.status == "failed"):
        # Without the class the events it accepts are unknown: an event is always possible.
        pending = waiting_for if armed or outstanding else "an event"
        waiting_for = (f"a worker that loads workflow {run.workflow} v{run.version} (this process does not), "
                       f"for: {pending}")
    admission_wait = None
    if run.admission_since is not None and run.status in ACTIVE:
        with rt.db.read() as conn:
            admission_wait = admission.waiting_for(conn, run, now, cls._max_active if cls is not None else None)
        waiting_for = admission.describe_wait(admission_wait)
        if accepted:
            waiting_for += "; then: an event: " + ", ".join(sorted({a["event"] for a in accepted}))
    paused = _paused(run, workflow_pause)
    if paused is not None:
        waiting_for = f"{paused['text']}; then: {waiting_for}"
    if nobody is not None and unloaded is None and (armed or outstanding):  # else said just above
        waiting_for = f"{nobody}; then: {waiting_for}"
    return {
        "run_id": run.id, "status": run.status, "state": run.state, "paused": paused, "admission": admission_wait,
        "entered_at": iso(entered), "in_state_seconds": round(now - entered, 3) if entered else None,
        "accepted_events": accepted, "blocked_events": blocked,
        "timers": [{"name": t.name, "kind": t.kind, "event": t.event, "state": t.state,
                    "status": t.status, "due_at": iso(t.due_at),
                    "fires_in_seconds": round(t.due_at - now, 3)} for t in armed],
        "tasks": outstanding,
        "children": [{key: child[key] for key in ("id", "workflow", "version", "status", "state", "parent_state")}
                     for child in kids],
        "maps": fanouts,
        "waiting_for": waiting_for,
        "workflow_not_loaded": unloaded,
        "version_loaded_nowhere": nobody,
    }


def _paused(run, workflow_pause) -> dict | None:
    """Who paused the run (it, or its workflow), since when, and what that holds."""
    holds = "no step starts and no timer fires until it is resumed"
    if run.status not in ACTIVE:
        return None
    if run.paused_at is not None:
        return {"by": "run", "since": iso(run.paused_at),
                "text": f"an operator to resume it (paused since {iso(run.paused_at)}: {holds}; events are refused "
                        "unless queued)"}
    if workflow_pause is not None:
        which = f"v{workflow_pause['version']}" if workflow_pause["version"] else "every version"
        reason = f" ({workflow_pause['reason']})" if workflow_pause["reason"] else ""
        return {"by": "workflow", "since": iso(workflow_pause["paused_at"]), "reason": workflow_pause["reason"],
                "text": f"workflow {run.workflow} ({which}) to be resumed (paused since "
                        f"{iso(workflow_pause['paused_at'])}{reason}: {holds})"}
    return None


def _children(conn, run, entries) -> list[dict]:
    """The children of the run's current state entries that may still end, newest first (an earlier
    entry's children are not waited for), each with ``delivering``: its end is on its way here."""
    current = or_(false(), *(and_(runs.c.parent_state == state, runs.c.parent_seq == seq)
                             for state, seq in entries.items()))
    found = conn.execute(
        select(runs.c.id, runs.c.workflow, runs.c.version, runs.c.status, runs.c.state, runs.c.parent_state)
        .where(runs.c.parent_id == run.id, current, runs.c.status.in_(WAITED_ON))
        .order_by(runs.c.id.desc()).limit(CHILDREN_SHOWN)).mappings().all()
    ended = [row["id"] for row in found if row["status"] not in ACTIVE]
    delivering = set(conn.execute(select(signals.c.source_id).where(
        signals.c.run_id == run.id, signals.c.kind == "child_ended", signals.c.status == "pending",
        signals.c.source_id.in_(ended))).scalars()) if ended else set()
    return [{**row, "delivering": row["id"] in delivering} for row in found]


def _maps(conn, run, entries, cls) -> list[dict]:
    """The maps of the run's current state entries: their counters, and what they tolerate."""
    current = or_(false(), *(and_(maps.c.state == state, maps.c.entry_seq == seq) for state, seq in entries.items()))
    found = conn.execute(select(maps).where(maps.c.parent_id == run.id, current)).mappings().all()
    out = []
    for row in found:
        spec = cls.child_for(row["state"]) if cls is not None else None
        tolerated = getattr(spec, "tolerated_failures", None)
        out.append({"name": row["name"], "state": row["state"], "status": row["status"], "total": row["total"],
                    "succeeded": row["succeeded"], "failed": row["failed"], "running": row["running"],
                    "pending": row["total"] - row["succeeded"] - row["failed"] - row["running"],
                    "max_concurrency": getattr(spec, "max_concurrency", None), "tolerated_failures": tolerated})
    return out


def _waiting_for_map(fanout) -> str:
    tolerated = fanout["tolerated_failures"]
    tolerance = ("" if tolerated is None else f"{tolerated:.0%} tolerated" if isinstance(tolerated, float)
                 else f"{tolerated} tolerated")
    if fanout["status"] == "failed":
        return (f"map {fanout['name']} failed ({fanout['failed']} of {fanout['total']} items failed, {tolerance}): "
                "retry the run to run the failed items again")
    remaining = fanout["total"] - fanout["succeeded"] - fanout["failed"]
    return (f"{remaining} of {fanout['total']} children of map {fanout['name']} "
            f"({fanout['failed']} failed, {tolerance}; {fanout['running']} running)")


def _waiting_for_children(cls, kids) -> list[str]:
    if len(kids) > CHILDREN_NAMED:
        counts = {}
        for kid in kids:
            counts[kid["status"]] = counts.get(kid["status"], 0) + 1
        more = "+" if len(kids) == CHILDREN_SHOWN else ""
        return [f"{len(kids)}{more} child runs to end ("
                + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) + ")"]
    parts = []
    for kid in kids:
        name = f"child run {kid['id']}"
        if kid["status"] in ACTIVE:
            parts.append(f"{name} ({kid['workflow']} v{kid['version']}, {kid['status']} in {kid['state']})")
        elif kid["delivering"]:
            parts.append(f"{name} failed: its end is being delivered to this run")
        else:
            spec = cls.child_for(kid["parent_state"]) if cls is not None else None
            handled = getattr(spec, "on_error", None)
            # With an on_error the parent would have left, unless the event was refused.
            why = f" (its on_error event {handled} was not taken)" if handled else ""
            parts.append(f"{name} failed{why}; retry it, or send the parent an event")
    return parts


def _is_current(task, run) -> bool:
    return task.status in OPEN_TASK or (run.status == "failed" and task.status == "failed")


def _events(machine, ctx, conn, status):
    if status not in ACTIVE:
        return [], []
    enabled = {e.id for e in machine.enabled_events(run=ctx, db=conn, data={})}
    accepted, blocked = [], []
    for state in machine.configuration:
        for t in state.transitions:
            if t.event.startswith(("done.", "error.")):
                continue
            item = {"event": t.event, "from": state.id, "to": [s.id for s in t.targets]}
            guards = [str(spec) for spec in t.cond]
            if t.event in enabled:
                accepted.append(item)
            else:
                blocked.append({**item, "guards": guards,
                                "reason": f"guard {' and '.join(guards)} does not hold (without event data)"})
    return accepted, blocked


def _task(task, now) -> dict:
    next_retry = task.available_at if task.status == "queued" and (task.attempt > 0 or task.available_at > now) \
        else None
    return {
        "id": task.id, "kind": task.kind, "name": task.name, "state": task.state,
        "status": task.status, "attempt": task.attempt, "max_attempts": task.max_attempts,
        "last_error": task.last_error, "next_attempt_at": iso(next_retry),
        "next_attempt_in_seconds": round(next_retry - now, 3) if next_retry else None,
        "lease_until": iso(task.lease_until),
    }


def _summary(run, accepted, armed, outstanding, children=()) -> str:
    if run.status not in ACTIVE and run.status != "failed":
        return f"nothing: the run is {run.status}"
    parts = []
    for t in outstanding:
        if t["status"] == "failed":
            parts.append(f"a retry of failed {t['kind']} {t['name']} ({t['last_error']})")
        elif t["status"] == "limited" and t.get("limit"):
            parts.append(f"{limit_views.describe_wait(t['limit'])}, for {t['kind']} {t['name']}")
        elif t.get("rate_limit"):
            parts.append(f"{t['kind']} {t['name']} to start at {t['next_attempt_at']} (rate limit {t['rate_limit']})")
        elif t["status"] == "running":
            parts.append(f"{t['kind']} {t['name']} to finish (attempt {t['attempt']} of {t['max_attempts']})")
        elif t["attempt"]:
            parts.append(f"{t['kind']} {t['name']} to be retried (attempt {t['attempt'] + 1} of "
                         f"{t['max_attempts']}, last error: {t['last_error']})")
        else:
            parts.append(f"{t['kind']} {t['name']} to be picked up by a worker")
    for t in armed:
        if t.status == "armed":
            parts.append(f"timer {t.name} ({'step recheck' if t.kind == 'recheck' else t.event}) at {iso(t.due_at)}")
    parts += children
    if accepted:
        parts.append("an event: " + ", ".join(sorted({a["event"] for a in accepted})))
    return "; or ".join(parts) if parts else "nothing it can take now"
