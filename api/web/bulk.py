"""Bulk actions from the runs page: the rows selected, or every run the page's filters match,
cancelled, retried, sent an event, paused or resumed as one batch (engine/batches.py); the
batch's page shows its progress and its refusals."""

import json

from flask import abort, flash, redirect, render_template, request, url_for

from engine import batches, search
from engine.errors import InterlockError, InvalidData

from ..context import engine
from ..problems import Problem
from . import blueprint, problem_of, security
from .data import Filters

REFUSALS = 50


def _filter_of(rt, form) -> dict:
    """The batch's filter: the selected run ids, or the page's filters ("all that match")."""
    if form.get("scope") != "all":
        ids = form.getlist("run_id")
        if not ids:
            raise InvalidData("select at least one run, or choose all runs that match", field="run_id")
        return {"run_ids": ids}
    f = Filters.from_args(form)
    after, before = f.window
    given = {"workflow": f.workflow, "status": f.status, "state": f.state, "created_after": after,
             "created_before": before}
    if f.q:
        terms, rest = search.parse_terms(f.q, known=search.field_types(rt.registry))
        if rest:
            raise InvalidData("“all that match” takes search fields only (customer:ACME total>=10), not a business "
                              "key or a run id: select the rows instead", field="q")
        given["search"] = {name: [list(pair) for pair in pairs] for name, pairs in terms.items()}
    return given


def _args_of(form) -> dict:
    action = form.get("action", "")
    out = {}
    if action == "send":
        raw = form.get("data", "").strip()
        try:
            out["data"] = json.loads(raw) if raw else {}
        except (ValueError, RecursionError) as exc:
            raise Problem(400, "invalid-json", "Malformed JSON", f"the event data is not JSON: {exc}") from None
        out["event"] = form.get("event", "").strip()
    if action in ("cancel", "pause") and form.get("reason", "").strip():
        out["reason"] = form.get("reason").strip()
    return out


@blueprint.post("/batches")
def bulk_action():
    security.check_csrf()
    if not security.may_write():
        abort(403, description="this token is read-only")
    rt, form = engine(), request.form
    action = form.get("action", "")
    try:
        given, args = _filter_of(rt, form), _args_of(form)
        if form.get("confirm") != "yes":
            preview = batches.create(rt, action, given, dry_run=True, **args)
            return render_template("confirm_batch.html", preview=preview, form=form,
                                   keys=[k for k in form.keys() if k not in ("confirm", "run_id")],
                                   run_ids=form.getlist("run_id"))
        made = batches.create(rt, action, given, **args)
    except InterlockError as exc:
        problem = problem_of(exc)
    except Problem as exc:
        problem = exc
    else:
        flash(f"Batch created: {action} {made['total_estimate']} run(s); the workers carry it out", "ok")
        return redirect(url_for("web.batch_page", batch_id=made["id"]), 303)
    flash(f"Refused ({problem.status} {problem.title}): {problem.detail or problem.title}", "error")
    return redirect(url_for("web.runs_page"), 303)


@blueprint.get("/batches/<batch_id>")
def batch_page(batch_id):
    rt = engine()
    batch = batches.get(rt, batch_id)
    refusals = batches.items(rt, batch_id, outcome="refused", limit=REFUSALS)
    return render_template("batch.html", batch=batch, refusals=refusals,
                           live=batch["status"] in ("pending", "running"))
