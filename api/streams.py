"""Live streams: long-poll a run's history, and Server-Sent Events for one run or for all runs.

A waiting request holds a thread and a notifier Watch, never a database connection:
it reads once, waits to be woken by the process's shared notifier, then reads again.
"""

import json
import random
import re
import time
from contextlib import nullcontext

from flask import Blueprint, Response, current_app, request
from pydantic import BaseModel, Field
from sqlalchemy import and_, or_, select

from engine import queries
from engine.errors import RunNotFound
from engine.metrics import open_streams
from engine.models import runs
from engine.notify import OVERLAP

from . import schemas as s
from .context import engine
from .openapi import API
from .problems import Problem

blueprint = Blueprint("streams", __name__, url_prefix="/api")

MAX_WAIT = 30.0
BATCH = 500
MAX_TIME = 1e11  # epoch seconds: far beyond any real resume point
# Runs that can still change: a failed run may be retried.
FINISHED = ("succeeded", "cancelled")
# EventSource reconnects after this many milliseconds.
RETRY = "retry: 1000\n\n"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# Last-Event-ID is an `id:` the stream sent (EventSource sends it back on reconnect), or empty
# (as if not sent). The server checks the very patterns the document shows.
# A history seq, 0 to 2**31 - 1 (the column's range):
SEQ_ID = (r"^(?:|0|[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}|2147[0-3][0-9]{5}"
          r"|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}|21474836[0-3][0-9]|214748364[0-7])$")
# Epoch seconds below MAX_TIME, at most 6 decimals (sent as `%.6f`):
TIME_ID = r"^(?:|[0-9]{1,11}(?:\.[0-9]{1,6})?)$"
RUN_LAST_EVENT_ID = {"Last-Event-ID": (
    "resume after this history seq (sent by EventSource on reconnect); empty: as if not sent",
    {"type": "string", "pattern": SEQ_ID, "maxLength": 10})}
ALL_LAST_EVENT_ID = {"Last-Event-ID": (
    "resume from this event id (sent by EventSource on reconnect); empty: as if not sent",
    {"type": "string", "pattern": TIME_ID, "maxLength": 18})}
for _kind in ("long_poll", "run_stream", "all_stream"):  # interlock_open_streams shows 0s from the start
    open_streams.labels(_kind)


class HistoryQuery(BaseModel):
    after: int = Field(default=0, ge=0, le=2**31 - 1, description="return entries with a seq above this")
    wait: float = Field(default=0.0, ge=0, allow_inf_nan=False,
                        description=f"hold the request up to this many seconds when nothing is newer "
                                    f"(at most {MAX_WAIT:g}; larger values are cut to it)")
    limit: int = Field(default=100, ge=1, le=BATCH)


class RunStreamQuery(BaseModel):
    after: int | None = Field(default=None, ge=0, le=2**31 - 1,
                              description="start after this seq (the Last-Event-ID header wins)")


class AllStreamQuery(BaseModel):
    workflow: str | None = Field(default=None, min_length=1, max_length=200)
    after: float | None = Field(default=None, ge=0, le=MAX_TIME, allow_inf_nan=False,
                                description="resume from this event id (the Last-Event-ID header wins)")


class HistoryPage(BaseModel):
    """History entries newer than `after`; empty when `wait` passed with nothing new."""

    run_id: str
    status: s.Status
    last_seq: int
    history: list[s.HistoryEntryOut]


# -- long poll -------------------------------------------------------------------------

@API.route(blueprint, "/runs/<run_id>/history", "GET",
           summary="A run's history after `after`; with `wait`, held until something newer exists",
           query=HistoryQuery, responses={200: HistoryPage})
def history(run_id, query: HistoryQuery):
    rt = engine()
    deadline = time.monotonic() + min(query.wait, MAX_WAIT)
    counted = open_streams.labels("long_poll").track_inprogress() if query.wait > 0 else nullcontext()
    # Watch before reading, so a change committed right after the read still wakes us.
    with counted, rt.notifier.watch(run_id) if query.wait > 0 else nullcontext() as watch:
        while True:
            head, entries = _read(rt, run_id, query.after, query.limit)
            remaining = deadline - time.monotonic()
            if entries or head.status in FINISHED or remaining <= 0:
                break
            watch.wait(remaining)
    return {"run_id": run_id, "status": head.status,
            "last_seq": max([head.last_seq] + [e.seq for e in entries]),
            "history": [e.to_dict() for e in entries]}


def _read(rt, run_id, after, limit):
    """The run's status and last seq, and its history after ``after`` (one connection, no JSON columns)."""
    with rt.db.read() as conn:
        head = conn.execute(select(runs.c.status, runs.c.last_seq).where(runs.c.id == run_id)).first()
        if head is None:
            raise RunNotFound(run_id)
        entries = queries.get_history(conn, run_id, after, limit) if head.last_seq > after else []
    return head, entries


# -- one run ------------------------------------------------------------------------------

@API.route(blueprint, "/runs/<run_id>/stream", "GET", stream="text/event-stream",
           summary="A run's history as Server-Sent Events, resumable with Last-Event-ID",
           query=RunStreamQuery, headers=RUN_LAST_EVENT_ID,
           responses={200: "`event: history`, `id:` the entry's seq, `data:` the entry as JSON. "
                           "When the run has succeeded or was cancelled and everything was sent, "
                           "`event: end` with the run as JSON, then the stream closes."})
def run_stream(run_id, query: RunStreamQuery):
    rt = engine()
    after = _last_event_id(SEQ_ID, int)
    after = after if after is not None else (query.after or 0)
    rt.get(run_id)  # 404 before the stream starts
    return _sse(_run_events(rt, run_id, after, _keepalive()))


def _run_events(rt, run_id, after, keepalive):
    with open_streams.labels("run_stream").track_inprogress(), rt.notifier.watch(run_id) as watch:
        yield RETRY  # sends the headers now: the client knows it is connected
        while True:
            head, entries = _read(rt, run_id, after, BATCH)
            for entry in entries:
                yield _event("history", entry.seq, entry.to_dict())
                after = entry.seq
            if len(entries) == BATCH:
                continue
            if head.status in FINISHED and after >= head.last_seq:
                yield _event("end", None, rt.get(run_id).to_dict())
                return
            while not watch.wait(_jitter(keepalive)):
                yield ": keep-alive\n\n"  # and no read: an idle stream costs the database nothing


# -- every run ------------------------------------------------------------------------------

@API.route(blueprint, "/stream", "GET", stream="text/event-stream",
           summary="Changes of all runs as Server-Sent Events (each the run's current state)",
           query=AllStreamQuery, headers=ALL_LAST_EVENT_ID,
           responses={200: "`event: run`, `data:` the run as JSON, `id:` a resume point (epoch "
                           "seconds of the last change sent). Resuming replays, newest state per run, "
                           f"the runs changed since then and up to {OVERLAP:g} s before it."})
def all_stream(query: AllStreamQuery):
    rt = engine()
    since = _last_event_id(TIME_ID, float)
    since = since if since is not None else query.after
    return _sse(_all_events(rt, query.workflow, since, _keepalive()))


def _all_events(rt, workflow, since, keepalive):
    with open_streams.labels("all_stream").track_inprogress(), rt.notifier.watch() as watch:
        cursor = rt.clock.now() if since is None else since
        # What was sent lately (run id -> (last_seq, updated_at)): re-reads overlap, sends don't.
        sent = {}
        yield f"{RETRY[:-1]}id: {cursor:.6f}\n\n"  # a resume point even before the first change
        changed = None if since is not None else set()
        while True:
            for run in _changed_runs(rt, workflow, changed, cursor - OVERLAP):
                if sent.get(run.id, (None,))[0] == run.last_seq:
                    continue
                cursor = max(cursor, run.updated_at)
                sent[run.id] = (run.last_seq, run.updated_at)
                yield _event("run", f"{cursor:.6f}", run.to_dict())
            sent = {k: v for k, v in sent.items() if v[1] >= cursor - 2 * OVERLAP}
            while not watch.wait(_jitter(keepalive)):
                yield ": keep-alive\n\n"
            changed = watch.take()


def _changed_runs(rt, workflow, ids, since):
    """The runs in ``ids`` (None: every run changed at or after ``since``), oldest change first."""
    if ids is not None and not ids:
        return []
    where = [] if workflow is None else [runs.c.workflow == workflow]
    found = []
    with rt.db.read() as conn:
        if ids is not None:
            ids = sorted(ids)
            for start in range(0, len(ids), BATCH):
                query = select(runs).where(runs.c.id.in_(ids[start:start + BATCH]), *where)
                found += [queries.Run.from_row(r) for r in conn.execute(query).mappings()]
            return sorted(found, key=lambda r: (r.updated_at, r.id))
        position = (since, "")
        while True:
            query = (select(runs).where(*where, or_(
                runs.c.updated_at > position[0],
                and_(runs.c.updated_at == position[0], runs.c.id > position[1])))
                .order_by(runs.c.updated_at, runs.c.id).limit(BATCH))
            page = [queries.Run.from_row(r) for r in conn.execute(query).mappings()]
            found += page
            if len(page) < BATCH:
                return found
            position = (page[-1].updated_at, page[-1].id)


# -- Server-Sent Events -------------------------------------------------------------------------

def _sse(events) -> Response:
    return Response(events, mimetype="text/event-stream", headers=SSE_HEADERS)


def _event(kind, event_id, data) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _jitter(seconds: float) -> float:
    # Streams opened together (after a restart, say) would otherwise all wake at once.
    return seconds * random.uniform(0.75, 1.0)


def _keepalive() -> float:
    return float(current_app.config.get("STREAM_KEEPALIVE_SECONDS", 15.0))


def _last_event_id(pattern, kind):
    raw = request.headers.get("Last-Event-ID")
    if not raw:
        return None
    if not re.fullmatch(pattern, raw):
        raise Problem(422, "validation-error", "Invalid request",
                      "Last-Event-ID is not an id this stream sent", field="Last-Event-ID")
    return kind(raw)
