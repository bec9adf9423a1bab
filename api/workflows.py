"""Workflows: definitions, starting runs, events addressed by business key."""

from flask import Blueprint, request, url_for

from engine.describe import describe
from engine.errors import RunNotFound
from engine.workflow_diff import diff, parse_renames

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("workflows", __name__, url_prefix="/api/workflows")


@API.route(blueprint, "", "GET", summary="List the loaded workflows", responses={200: s.WorkflowList})
def list_workflows():
    registry = engine().registry
    out = []
    for name in registry.names():
        latest = registry.get(name)
        out.append({"name": name, "versions": registry.versions(name), "latest": latest.version,
                    "description": describe(latest)["description"]})
    return {"workflows": out}


@API.route(blueprint, "/<name>", "GET", summary="A workflow's versions: states, events, steps, timers, diagram",
           query=s.WorkflowQuery, responses={200: s.WorkflowDetail})
def get_workflow(name, query: s.WorkflowQuery):
    registry = engine().registry
    registry.get(name, query.version)  # 404 when unknown
    versions = [query.version] if query.version else registry.versions(name)
    return {"name": name, "versions": [describe(registry.get(name, v)) for v in versions]}


@API.route(blueprint, "/<name>/diff", "GET", summary="What changed between two versions of a workflow",
           query=s.DiffQuery, responses={200: s.WorkflowDiff})
def diff_versions(name, query: s.DiffQuery):
    registry = engine().registry
    old, new = registry.get(name, query.from_), registry.get(name, query.to)  # 404 when unknown
    return diff(old, new, parse_renames(query.map, ":"))


@API.route(blueprint, "/<name>/runs", "POST", summary="Start a run",
           body=s.StartRun, responses={201: s.RunOut, 200: s.RunOut}, write=True,
           headers={"Idempotency-Key": "a repeat with the same key returns the first run with 200"})
def start_run(name, body: s.StartRun):
    key = request.headers.get("Idempotency-Key") or None
    run, created = engine().start_run(name, body.data, business_key=body.business_key,
                                      idempotency_key=key, version=body.version, priority=body.priority)
    status = 201 if created else 200
    return run.to_dict(), status, {"Location": url_for("runs.get_run", run_id=run.id)}


@API.route(blueprint, "/<name>/keys/<key>/events", "POST",
           summary="Send an event to the newest active run with this business key",
           body=s.SendEvent, responses={200: s.RunOut}, write=True)
def send_by_key(name, key, body: s.SendEvent):
    rt = engine()
    rt.registry.get(name)
    runs = [r for status in ("running", "waiting")
            for r in rt.list_runs(workflow=name, business_key=key, status=status, limit=1).runs]
    if not runs:
        raise RunNotFound(f"{name}/{key}")
    newest = max(runs, key=lambda r: r.id)
    return rt.send(newest.id, body.event, body.data, cause="api", queue=body.queue).to_dict()
