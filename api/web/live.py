"""The pages' live channels: the API's streams behind the web session, plus a long poll for the runs page.

EventSource cannot send an Authorization header, so the pages reach the API's SSE and
long-poll views through these routes, which the web session (not a bearer token) guards.
``WEB_SSE = False`` in the app config makes the SSE routes answer 503, as when a proxy
buffers the stream: the pages then fall back to long polling.
"""

import time
from contextlib import nullcontext

from flask import abort, current_app, jsonify, request
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from engine.metrics import open_streams
from engine.models import runs

from ..context import engine
from ..openapi import parse
from ..schemas import NO_NUL
from ..streams import MAX_WAIT
from . import blueprint


class ChangesQuery(BaseModel):
    """Checked like the API's long poll: nan, inf or a negative wait is a 422, not a held thread."""

    since: float | None = Field(default=None, allow_inf_nan=False)
    wait: float = Field(default=0.0, ge=0, allow_inf_nan=False)  # longer waits are cut to MAX_WAIT
    workflow: str | None = Field(default=None, max_length=200, pattern=NO_NUL)
    parent: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$", description="only this run's children")


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
    """Held until a run (of ``workflow``, or a child of ``parent``) changed after ``since`` (epoch
    seconds), or ``wait`` (at most MAX_WAIT) passed.

    Answers {"changed": bool, "cursor": the newest change seen}: the runs page's long-poll
    fallback and the run page's watch on its children, woken by the process's shared notifier
    (no polling per client).
    """
    query = parse(ChangesQuery, request.args.to_dict(), "query")
    since, wait = query.since, min(query.wait, MAX_WAIT)
    conditions = [runs.c.workflow == query.workflow] if query.workflow else []
    if query.parent:
        conditions.append(runs.c.parent_id == query.parent)
    rt = engine()
    deadline = time.monotonic() + wait
    counted = open_streams.labels("long_poll").track_inprogress() if wait > 0 else nullcontext()
    with counted, rt.notifier.watch() as watch:
        while True:
            newest = _newest(rt, conditions)
            remaining = deadline - time.monotonic()
            if since is None or newest > since or remaining <= 0:
                break
            watch.wait(remaining)
    return jsonify(changed=since is not None and newest > since, cursor=newest)


def _newest(rt, conditions) -> float:
    query = select(func.max(runs.c.updated_at)).where(*conditions)
    with rt.db.read() as conn:
        return conn.execute(query).scalar() or 0.0
