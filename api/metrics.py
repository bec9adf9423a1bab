"""/metrics in the Prometheus text format."""

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import REGISTRY as PROCESS_REGISTRY

from engine.metrics import RunCounts

from .context import engine

blueprint = Blueprint("metrics", __name__)


@blueprint.get("/metrics")
def metrics():
    rt = engine()
    body = generate_latest(PROCESS_REGISTRY)
    run_counts = CollectorRegistry(auto_describe=False)
    run_counts.register(RunCounts(rt.db))
    # content_type, not mimetype: Flask would append a second charset to the one it has.
    return Response(body + generate_latest(run_counts), content_type=CONTENT_TYPE_LATEST)
