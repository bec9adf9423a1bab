"""The pages' live channels: the API's streams behind the web session, plus a long poll for the runs page.

EventSource cannot send an Authorization header, so the pages reach the API's SSE and
long-poll views through these routes, which the web session (not a bearer token) guards.
``WEB_SSE = False`` in the app config makes the SSE routes answer 503, as when a proxy
buffers the stream: the pages then fall back to long polling.
"""

import time

from flask import abort, current_app, jsonify, request
from sqlalchemy import func, select

from engine.models import runs

from ..context import engine
from . import blueprint

MAX_WAIT = 25.0


def _sse_allowed():
    if not current_app.config.get("WEB_SSE", True):
        abort(503, description="server-sent events are turned off on this server (WEB_SSE): use the long poll")


@blueprint.get("/live/stream")
def all_runs_stream():
    """``GET /api/stream`` (``workflow=``): an event per run change."""
    _sse_allowed()
    return current_app.view_functions["streams.all_stream"]()


@blueprint.get("/live/runs/<run_id>/stream")
def run_stream(run_id):
    """``GET /api/runs/<id>/stream``: the run's history, resumable with Last-Event-ID."""
    _sse_allowed()
    return current_app.view_functions["streams.run_stream"](run_id=run_id)


@blueprint.get("/live/runs/<run_id>/history")
def run_history(run_id):
    """``GET /api/runs/<id>/history?after=&wait=``: the long poll."""
    return current_app.view_functions["streams.history"](run_id=run_id)


@blueprint.get("/live/changes")
def changes():
    """Held until a run (of ``workflow``) changed after ``since`` (epoch seconds), or ``wait`` passed.

    Answers {"changed": bool, "cursor": the newest change seen}: the runs page's long-poll
    fallback, woken by the process's shared notifier (no polling per client).
    """
    since = request.args.get("since", type=float)
    wait = min(max(request.args.get("wait", 0.0, type=float), 0.0), MAX_WAIT)
    workflow = request.args.get("workflow") or None
    rt = engine()
    deadline = time.monotonic() + wait
    with rt.notifier.watch() as watch:
        while True:
            newest = _newest(rt, workflow)
            remaining = deadline - time.monotonic()
            if since is None or newest > since or remaining <= 0:
                break
            watch.wait(remaining)
    return jsonify(changed=since is not None and newest > since, cursor=newest)


def _newest(rt, workflow) -> float:
    query = select(func.max(runs.c.updated_at))
    if workflow:
        query = query.where(runs.c.workflow == workflow)
    with rt.db.read() as conn:
        return conn.execute(query).scalar() or 0.0
