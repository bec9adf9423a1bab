"""The Flask application: JSON REST under /api, live streams, and the web pages."""

import logging

from flask import Flask

from engine import tracing
from engine.config import Settings
from engine.runtime import Interlock

from . import auth, problems

log = logging.getLogger(__name__)


def create_app(config: dict | None = None, interlock: Interlock | None = None) -> Flask:
    """Build the app on ``interlock`` (or one made from ``config`` / INTERLOCK_* variables).

    INTERLOCK_* keys of ``config`` are read like the variables (strings converted, bad values a
    ConfigurationError here) and win over them.

    Refuses to start on a database behind the migrations (SchemaOutOfDate says what to run).
    """
    config = dict(config or {})
    settings = interlock.settings if interlock is not None else Settings.from_config(config)
    app = Flask(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        INTERLOCK_TOKENS=auth.parse_tokens(settings.api_tokens),
        JSON_SORT_KEYS=False,
    )
    app.config.update({k: v for k, v in config.items() if not k.startswith("INTERLOCK_")})
    rt = app.extensions["interlock"] = interlock or Interlock(settings)
    # A server runs no reconciler: its requests keep the clock's offset fresh (a check per
    # request, a measurement every 30 s).
    app.before_request(rt.keep_clock)
    problems.register(app)

    from . import activities, batches, docs, limits, migrations, pauses, runs, schedules, streams, workflows

    for module in (workflows, runs, pauses, limits, batches, migrations, streams, activities, schedules, docs):
        # On the app, not the module-level blueprint: create_app may run more than once per process.
        app.before_request_funcs.setdefault(module.blueprint.name, []).append(auth.require_token)
        app.register_blueprint(module.blueprint)
    from . import metrics

    app.register_blueprint(metrics.blueprint)  # scraped without a token, like most exporters
    from . import web

    app.register_blueprint(web.blueprint)  # the HTML pages: signed-in sessions, not bearer tokens
    tracing.instrument(app)  # a span per request, when OpenTelemetry is there
    return app
