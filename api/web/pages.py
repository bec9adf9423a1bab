"""The runs page, the run page, its actions (send, cancel, retry, pause, resume) and signing in."""

import json

from flask import abort, flash, jsonify, redirect, render_template, request, url_for

from engine.errors import InterlockError, InvalidData, InvalidSearch
from engine.explain import explain

from .. import schemas as s
from ..context import engine
from ..openapi import parse
from ..problems import Problem
from . import blueprint, data, diagram, problem_of, security, wants_json
from .data import Filters

ACTIVE = ("running", "waiting")


# -- runs ---------------------------------------------------------------------------------

@blueprint.get("/")
def runs_page():
    rt = engine()
    error = None
    try:
        f = Filters.from_args(request.args)
        page, counts = data.list_runs(rt, f), data.status_counts(rt, f)
    except (InvalidData, InvalidSearch) as exc:
        # The search box keeps what was typed, so it can be corrected.
        f, error = Filters(q=request.args.get("q", "")[:255] or None), str(exc)
        page, counts = data.list_runs(rt, Filters()), data.status_counts(rt, Filters())
    ctx = {"f": f, "page": page, "counts": counts, "error": error,
           "workflows": rt.registry.names(), "states": _state_names(rt, f.workflow),
           "statuses": data.STATUSES, "cursor": rt.clock.now() - 1.0, "may_write": security.may_write()}
    if request.headers.get("X-Interlock-Fragment"):
        return jsonify(rows=render_template("_runs_rows.html", **ctx),
                       counts=render_template("_counts.html", **ctx),
                       pager=render_template("_pager.html", **ctx))
    return render_template("runs.html", **ctx)


def _state_names(rt, workflow):
    classes = [c for c in rt.registry.all() if workflow in (None, c.workflow_name)]
    return sorted({state.id for c in classes for state in c.states_map.values()})


# -- one run --------------------------------------------------------------------------------

@blueprint.get("/runs/<run_id>")
def run_page(run_id):
    rt = engine()
    run = rt.get(run_id)
    fragment = bool(request.headers.get("X-Interlock-Fragment"))
    after = max(0, request.args.get("after", 0, type=int)) if fragment else 0
    ctx = _run_context(rt, run, after, request.args.get("children"))
    if not fragment:
        return render_template("run.html", **ctx)
    return jsonify(
        status=run.status, last_seq=ctx["last_seq"], actions_sig=ctx["actions_sig"],
        children_live=ctx["children_live"],
        rows=render_template("_timeline_rows.html", **ctx, fresh=True),
        head=render_template("_run_head.html", **ctx), diagram=render_template("_diagram.html", **ctx),
        waiting=render_template("_waiting.html", **ctx), data=render_template("_data.html", **ctx),
        gantt=render_template("_gantt.html", **ctx),
        children=render_template("_children.html", **ctx), actions=render_template("_actions.html", **ctx))


def _run_context(rt, run, after, children_cursor=None):
    cls, why, problem = None, None, None
    try:
        why = explain(rt, run.id)
    except InterlockError as exc:
        problem = str(exc)
    else:
        problem = why["workflow_not_loaded"]  # explain still reads what the tables say
        if problem is None:
            cls = rt.registry.get(run.workflow, run.version)
    visited, taken = data.path_of(rt, run.id)
    svg = diagram.render(cls, current=run.configuration, visited=visited, taken=taken,
                         label=f"state diagram of {run.workflow} v{run.version}, current state {run.state}",
                         failed=run.status == "failed") \
        if cls is not None else None
    rows, _, cut = data.timeline(rt, run.id, after)
    accepted = sorted({a["event"] for a in why["accepted_events"]}) if why else []
    kids = data.children(rt, run.id, children_cursor)
    now = rt.clock.now()
    return {
        "run": run, "why": why, "problem": problem, "svg": svg, "rows": rows, "cut": cut and after == 0,
        "parent": rt.get(run.parent_id) if run.parent_id is not None else None, "children": kids,
        # Watch the children while one may still change (new ones show in the run's own history).
        "children_live": kids.unsettled,
        "accepted": accepted, "active": run.status in ACTIVE, "now": now, "gantt": data.gantt(rt, run, now),
        "data_json": json.dumps(run.data, indent=2, sort_keys=True, ensure_ascii=False),
        "last_seq": rows[-1]["seq"] if rows else after,
        "actions_sig": f"{run.status}|{run.paused_at is not None}|{','.join(accepted)}|{security.may_write()}",
        "duration": (run.finished_at or now) - run.created_at,
    }


# -- actions (the same Interlock calls as the REST API) ----------------------------------------

def _action(run_id, verb, describe, perform):
    security.check_csrf()
    if not security.may_write():
        abort(403, description="this token is read-only")
    if request.form.get("confirm") != "yes":
        run = engine().get(run_id)
        return render_template("confirm.html", run=run, verb=verb, describe=describe, form=request.form)
    try:
        message = perform()
    except InterlockError as exc:
        return _refused(run_id, problem_of(exc))
    except Problem as problem:
        return _refused(run_id, problem)
    if wants_json():
        return jsonify(ok=True, message=message)
    flash(message, "ok")
    return redirect(url_for("web.run_page", run_id=run_id), 303)


def _refused(run_id, problem: Problem):
    if wants_json():
        return problem.response()
    flash(f"Refused ({problem.status} {problem.title}): {problem.detail or problem.title}", "error")
    return redirect(url_for("web.run_page", run_id=run_id), 303)


@blueprint.post("/runs/<run_id>/events")
def send_event(run_id):
    event = request.form.get("event", "").strip()

    def perform():
        raw = request.form.get("data", "").strip()
        try:
            payload = json.loads(raw) if raw else {}
        except (ValueError, RecursionError) as exc:
            raise Problem(400, "invalid-json", "Malformed JSON", f"the event data is not JSON: {exc}") from None
        body = parse(s.SendEvent, {"event": event, "data": payload}, "body")
        run = engine().send(run_id, body.event, body.data, cause="web")
        return f"Sent {body.event}: the run is {run.status} in {run.state}"

    return _action(run_id, "send", f"Send event “{event}” to this run", perform)


@blueprint.post("/runs/<run_id>/cancel")
def cancel_run(run_id):
    def perform():
        body = parse(s.CancelRun, {"reason": request.form.get("reason", "").strip() or None}, "body")
        engine().cancel(run_id, body.reason)
        return "Cancelled the run"

    return _action(run_id, "cancel", "Cancel this run", perform)


@blueprint.post("/runs/<run_id>/pause")
def pause_run(run_id):
    def perform():
        body = parse(s.PauseRun, {"reason": request.form.get("reason", "").strip() or None}, "body")
        engine().pause(run_id, body.reason)
        return "Paused the run: no step starts and no timer fires until it is resumed"

    return _action(run_id, "pause", "Pause this run", perform)


@blueprint.post("/runs/<run_id>/resume")
def resume_run(run_id):
    def perform():
        run = engine().resume(run_id)
        return f"Resumed: the run is {run.status} in {run.state}"

    return _action(run_id, "resume", "Resume this run", perform)


@blueprint.post("/runs/<run_id>/retry")
def retry_run(run_id):
    def perform():
        run = engine().retry(run_id)
        return f"Retrying: the run is {run.status} in {run.state}"

    return _action(run_id, "retry", "Retry this failed run", perform)


# -- signing in ------------------------------------------------------------------------------------

@blueprint.route("/login", methods=["GET", "POST"])
def login():
    target = request.values.get("next", "/")
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        target = "/"
    if not security.tokens_required():
        return redirect(target)
    error = None
    if request.method == "POST":
        security.check_csrf()
        if security.sign_in(request.form.get("token", "").strip()):
            return redirect(target, 303)
        error = "That is not one of this server's API tokens."
    return render_template("login.html", error=error, next=target), 401 if error else 200


@blueprint.post("/logout")
def logout():
    security.check_csrf()
    security.sign_out()
    return redirect(url_for("web.login"), 303)
