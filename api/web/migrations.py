"""Migration plans on the web: plan moving runs between versions, read a plan's verdicts, dry-run
it, apply it (engine/migration_plans.py); applying goes on in the batch's page."""

from flask import abort, flash, redirect, render_template, request, url_for

from engine import migration_plans
from engine.errors import InterlockError, InvalidData

from ..context import engine
from . import blueprint, problem_of, security

RUNS_SHOWN = 50


def _mapping(text: str) -> dict:
    """``old=new`` pairs, one per line or separated by commas or spaces."""
    out = {}
    for pair in text.replace(",", " ").split():
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise InvalidData(f"each mapping is OLD=NEW (state ids), got {pair!r}", field="map")
        out[old] = new
    return out


def _version(text, name) -> int:
    try:
        return int(text)
    except (TypeError, ValueError):
        raise InvalidData(f"{name} must be a version number", field=name) from None


def _movable_workflows(rt) -> list[dict]:
    return [{"name": name, "versions": rt.registry.versions(name)} for name in rt.registry.names()
            if len(rt.registry.versions(name)) > 1]


@blueprint.get("/migrations")
def migrations_page():
    rt = engine()
    return render_template("migrations.html", plans=migration_plans.list_plans(rt),
                           workflows=_movable_workflows(rt), form=request.args)


def _write_allowed():
    security.check_csrf()
    if not security.may_write():
        abort(403, description="this token is read-only")


@blueprint.post("/migrations")
def plan_migration():
    _write_allowed()
    rt, form = engine(), request.form
    try:
        plan = migration_plans.create(rt, form.get("workflow", ""), _version(form.get("from"), "from"),
                                      _version(form.get("to"), "to"), mapping=_mapping(form.get("map", "")),
                                      filter={"state": form["state"]} if form.get("state") else None)
    except InterlockError as exc:
        problem = problem_of(exc)
        flash(f"Refused ({problem.status} {problem.title}): {problem.detail}", "error")
        return redirect(url_for("web.migrations_page", **{k: v for k, v in form.items() if k != "csrf_token"}), 303)
    return redirect(url_for("web.migration_page", plan_id=plan["id"]), 303)


@blueprint.get("/migrations/<plan_id>")
def migration_page(plan_id):
    rt = engine()
    plan = migration_plans.get(rt, plan_id)
    outcome = request.args.get("outcome")
    listed = migration_plans.plan_runs(rt, plan_id, outcome=outcome if outcome in plan["counts"] else None,
                                       after=request.args.get("after") or None, limit=RUNS_SHOWN)
    return render_template("migration.html", plan=plan, listed=listed, outcome=outcome, dry=None)


@blueprint.post("/migrations/<plan_id>/apply")
def apply_migration(plan_id):
    _write_allowed()
    rt = engine()
    try:
        if request.form.get("confirm") != "yes":
            plan = migration_plans.get(rt, plan_id)
            dry = migration_plans.dry_run(rt, plan_id)
            listed = migration_plans.plan_runs(rt, plan_id, limit=RUNS_SHOWN)
            return render_template("migration.html", plan=plan, listed=listed, outcome=None, dry=dry)
        batch = migration_plans.apply(rt, plan_id)
    except InterlockError as exc:
        problem = problem_of(exc)
        flash(f"Refused ({problem.status} {problem.title}): {problem.detail}", "error")
        return redirect(url_for("web.migration_page", plan_id=plan_id), 303)
    flash("Migration started: the workers move the runs; runs changed since the plan are refused", "ok")
    return redirect(url_for("web.batch_page", batch_id=batch["id"]), 303)
