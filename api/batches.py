"""Bulk actions: create a batch over a runs filter, follow its progress, page its items, stop it."""

from flask import Blueprint

from engine import batches

from . import schemas as s
from .context import engine
from .openapi import API

blueprint = Blueprint("batches", __name__, url_prefix="/api/batches")


@API.route(blueprint, "", "POST",
           summary="Cancel, retry, send an event to, pause or resume every run a filter selects "
                   "(202: the reconcilers work it in chunks; dry_run: only count them)",
           body=s.CreateBatch, responses={202: s.BatchOut, 200: s.DryRun}, write=True)
def create_batch(body: s.CreateBatch):
    given = body.filter.model_dump(exclude_none=True)
    for name in ("created_after", "created_before"):
        if name in given:
            given[name] = given[name].timestamp()
    out = batches.create(engine(), body.action, given, event=body.event, data=body.data, reason=body.reason,
                         dry_run=body.dry_run)
    return (out, 200) if body.dry_run else (out, 202)


@API.route(blueprint, "", "GET", summary="List batches, newest first (keyset pagination)",
           query=s.BatchesQuery, responses={200: s.BatchPage})
def list_batches(query: s.BatchesQuery):
    return batches.list_batches(engine(), status=query.status, cursor=query.cursor, limit=query.limit)


@API.route(blueprint, "/<batch_id>", "GET", summary="A batch and its progress", responses={200: s.BatchOut})
def get_batch(batch_id):
    return batches.get(engine(), batch_id)


@API.route(blueprint, "/<batch_id>/items", "GET",
           summary="The runs a batch handled, by run id: outcome (applied, refused, skipped) and error",
           query=s.BatchItemsQuery, responses={200: s.BatchItemsPage})
def batch_items(batch_id, query: s.BatchItemsQuery):
    return batches.items(engine(), batch_id, outcome=query.outcome, after=query.after, limit=query.limit)


@API.route(blueprint, "/<batch_id>/cancel", "POST",
           summary="Stop a batch: no further chunk starts (the runs it changed stay changed)",
           body=s.Empty, responses={200: s.BatchOut}, write=True)
def cancel_batch(batch_id, body: s.Empty):
    return batches.cancel(engine(), batch_id)
