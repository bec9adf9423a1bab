"""The OpenAPI document, generated from the routes' own schemas."""

from flask import Blueprint, current_app

from .openapi import API

blueprint = Blueprint("docs", __name__, url_prefix="/api")


@blueprint.get("/openapi.json")
def openapi():
    if "openapi" not in current_app.extensions:
        current_app.extensions["openapi"] = API.document("Interlock", "1")
    return current_app.extensions["openapi"]
