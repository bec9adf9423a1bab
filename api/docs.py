"""The API's index and its OpenAPI document, generated from the routes' own schemas."""

from flask import Blueprint, current_app, request, url_for

from . import schemas as s
from .openapi import API

blueprint = Blueprint("docs", __name__, url_prefix="/api")


@API.route(blueprint, "", "GET", summary="The API's index: its OpenAPI document and every route",
           responses={200: s.ApiIndex})
def index():
    root = request.script_root
    return {
        "title": "Interlock API",
        "openapi": url_for("docs.openapi"),
        "web": url_for("web.runs_page"),
        "metrics": url_for("metrics.metrics"),
        "routes": [{"method": op.method.upper(), "path": root + op.path, "summary": op.summary}
                   for op in API.operations if op.path != "/api"],
    }


@blueprint.get("/openapi.json")
def openapi():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = API.document("Interlock", "1")
    return current_app.extensions["openapi"]
