"""The engine behind the current app."""

from flask import current_app

from engine.runtime import Interlock


def engine() -> Interlock:
    return current_app.extensions["interlock"]
