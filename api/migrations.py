"""Migration plans: judge the runs of one workflow version against another, look at the verdicts,
apply the plan (a batch the reconcilers work), or see what applying would do now."""

from flask import Blueprint

from engine import migration_plans

from . import migration_schemas as m
from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("migrations", __name__, url_prefix="/api")


@API.route(blueprint, "/workflows/<name>/migrations", "POST",
           summary="Plan moving runs of one version to another: each active run judged clean, mapped or "
                   "impossible, with the reason and what moving does",
           body=m.CreatePlan, responses={201: m.PlanOut}, write=True)
def create_plan(name, body: m.CreatePlan):
    given = body.filter.model_dump(exclude_none=True)
    for key in ("created_after", "created_before"):
        if key in given:
            given[key] = given[key].timestamp()
    given.pop("workflow", None)
    given.pop("version", None)
    plan = migration_plans.create(engine(), name, body.from_version, body.to_version, mapping=body.map,
                                  filter=given)
    return plan, 201


@API.route(blueprint, "/migrations", "GET", summary="Migration plans, newest first",
           query=m.PlansQuery, responses={200: m.PlanList})
def list_plans(query: m.PlansQuery):
    return {"plans": migration_plans.list_plans(engine(), workflow=query.workflow, limit=query.limit)}


@API.route(blueprint, "/migrations/<plan_id>", "GET",
           summary="A migration plan: its verdicts, counts, samples, and the batch applying it",
           responses={200: m.PlanOut})
def get_plan(plan_id):
    return migration_plans.get(engine(), plan_id)


@API.route(blueprint, "/migrations/<plan_id>/runs", "GET",
           summary="The runs a plan judged, by run id, each with its verdict",
           query=m.PlanRunsQuery, responses={200: m.PlanRunsPage})
def plan_runs(plan_id, query: m.PlanRunsQuery):
    return migration_plans.plan_runs(engine(), plan_id, outcome=query.outcome, after=query.after, limit=query.limit)


@API.route(blueprint, "/migrations/<plan_id>/apply", "POST",
           summary="Move the plan's runs (202: a migrate batch; runs changed since the plan are refused), "
                   "or with dry_run say what that would do to each run now",
           body=m.ApplyPlan, responses={202: s.BatchOut, 200: m.PlanDryRun}, write=True)
def apply_plan(plan_id, body: m.ApplyPlan):
    if body.dry_run:
        return migration_plans.dry_run(engine(), plan_id)
    return migration_plans.apply(engine(), plan_id), 202
