"""Runs: list, inspect, list a run's children and a Map's items, send events, cancel, retry, explain."""

from flask import Blueprint, request

from engine import search
from engine.explain import explain as explain_run

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("runs", __name__, url_prefix="/api/runs")


@API.route(blueprint, "", "GET", summary="List runs, newest first (keyset pagination)",
           query=s.RunsQuery, responses={200: s.RunPage}, extra_query=s.SEARCH_PARAMETERS)
def list_runs(query: s.RunsQuery):
    page = engine().list_runs(
        search=search.parse_query_args(request.args),
        workflow=query.workflow, version=query.version, status=query.status, state=query.state,
        business_key=query.business_key, cursor=query.cursor, limit=query.limit,
        created_after=query.created_after.timestamp() if query.created_after else None,
        created_before=query.created_before.timestamp() if query.created_before else None)
    return {"runs": [r.to_dict() for r in page.runs], "next": page.next}


@API.route(blueprint, "/<run_id>", "GET", summary="Get a run", responses={200: s.RunOut})
def get_run(run_id):
    return engine().get(run_id).to_dict()


@API.route(blueprint, "/<run_id>/children", "GET",
           summary="List a run's child runs, newest first (keyset pagination)",
           query=s.ChildrenQuery, responses={200: s.ChildPage})
def list_children(run_id, query: s.ChildrenQuery):
    page = engine().children(run_id, status=query.status, workflow=query.workflow, state=query.state,
                             cursor=query.cursor, limit=query.limit)
    return {"runs": [r.to_dict() for r in page.runs], "next": page.next}


@API.route(blueprint, "/<run_id>/maps/<name>/items", "GET",
           summary="A page of a Map's items in item order: status, child run, result",
           query=s.MapItemsQuery, responses={200: s.MapItemsPage})
def map_items(run_id, name, query: s.MapItemsQuery):
    return engine().map_items(run_id, name, entry_seq=query.entry_seq, after=query.after, limit=query.limit)


@API.route(blueprint, "/<run_id>/events", "POST", summary="Send an event to a run",
           body=s.SendEvent, responses={200: s.RunOut}, write=True)
def send_event(run_id, body: s.SendEvent):
    return engine().send(run_id, body.event, body.data, cause="api", queue=body.queue).to_dict()


@API.route(blueprint, "/<run_id>/cancel", "POST", summary="Cancel a run",
           body=s.CancelRun, responses={200: s.RunOut}, write=True)
def cancel_run(run_id, body: s.CancelRun):
    return engine().cancel(run_id, body.reason).to_dict()


@API.route(blueprint, "/<run_id>/retry", "POST", summary="Retry a failed run's failed step",
           body=s.Empty, responses={200: s.RunOut}, write=True)
def retry_run(run_id, body: s.Empty):
    return engine().retry(run_id).to_dict()


@API.route(blueprint, "/<run_id>/explain", "GET", summary="What the run is waiting for, and why",
           responses={200: s.Explanation})
def explain(run_id):
    return explain_run(engine(), run_id)
