"""The web pages: runs, one run (diagram, "waiting for", timeline, actions), workflows, schedules.

Server-rendered HTML (Jinja, autoescaped) that reads without JavaScript; ``static/interlock.js``
adds the live parts over the API's streams (SSE, or the long poll when SSE is unavailable).
Signing in with an API token is required when tokens are configured; every form is a POST
with a per-session CSRF token.
"""

import math
import re
from datetime import datetime, timezone

from flask import Blueprint, jsonify, redirect, render_template, request, url_for
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

from engine.errors import InterlockError

from ..context import engine
from ..problems import Problem
from . import security

blueprint = Blueprint("web", __name__)

# Endpoints open without signing in (the sign-in page itself).
PUBLIC = {"web.login"}


@blueprint.record_once
def _setup(state):
    app = state.app
    security.configure(app)
    app.config.setdefault("WEB_SSE", True)  # False: the pages' SSE routes answer 503 (long-poll fallback)
    app.jinja_env.filters.update(when=when, duration=duration, iso=iso_time, rst=rst_inline, at=time_element)
    app.jinja_env.globals.update(csrf_token=security.csrf_token)


@blueprint.before_request
def _require_sign_in():
    if request.endpoint in PUBLIC or not security.tokens_required() or security.signed_in() is not None:
        return None
    if request.path.startswith("/live/") or wants_json():
        return jsonify({"type": "urn:interlock:problem:unauthorized", "title": "Unauthorized",
                        "status": 401, "detail": "sign in at /login"}), 401
    return redirect(url_for("web.login", next=request.full_path.rstrip("?")))


@blueprint.after_request
def _headers(response):
    return security.headers(response)


@blueprint.context_processor
def _context():
    return {"may_write": security.may_write(), "signed_in": security.signed_in() is not None,
            "tokens_required": security.tokens_required(), "now": engine().clock.now()}


def problem_of(exc: InterlockError) -> Problem:
    """The problem document the API answers for ``exc`` (same status, type, title and detail)."""
    return Problem(exc.status, exc.code, exc.code.replace("-", " ").capitalize(), str(exc))


def wants_json() -> bool:
    return bool(request.headers.get("X-Interlock-Fragment")) or \
        request.accept_mimetypes.best == "application/json"


def page_error(status, title, detail):
    return render_template("error.html", status=status, title=title, detail=detail), status


@blueprint.errorhandler(InterlockError)
def _interlock_error(exc):
    problem = problem_of(exc)
    if wants_json():
        return problem.response()
    return page_error(problem.status, problem.title, problem.detail)


@blueprint.errorhandler(HTTPException)
def _http_error(exc):
    if wants_json() or request.path.startswith("/live/"):
        return jsonify({"type": "urn:interlock:problem:http-error", "title": exc.name,
                        "status": exc.code, "detail": exc.description}), exc.code
    return page_error(exc.code, exc.name, exc.description)


# -- formatting ------------------------------------------------------------------------

_RST = re.compile(r"``(.+?)``|:[\w:.-]+:`(.+?)`|`(.+?)`_?|\*\*(.+?)\*\*|\*(.+?)\*")


def rst_inline(text) -> Markup:
    """A docstring's reStructuredText inline markup as HTML: ``literal`` as code, **strong**,
    *emphasis*; roles (:class:`x`) and `interpreted text` as plain words. Everything else escaped."""
    def one(m):
        literal, role, interpreted, strong, emphasis = m.groups()
        if literal is not None:
            return f"<code>{escape(literal)}</code>"
        if strong is not None:
            return f"<strong>{escape(strong)}</strong>"
        if emphasis is not None:
            return f"<em>{escape(emphasis)}</em>"
        return str(escape(role if role is not None else interpreted))

    out, last = [], 0
    for m in _RST.finditer(text or ""):
        out.append(str(escape(text[last:m.start()])))
        out.append(one(m))
        last = m.end()
    out.append(str(escape((text or "")[last:])))
    return Markup("".join(out))


def when(epoch) -> str:
    if epoch is None:
        return "—"
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _epoch_of(value):
    """Epoch seconds from epoch seconds or an ISO 8601 string (what the API's documents hold)."""
    if value is None or isinstance(value, (int, float)):
        return value
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def time_element(value, absolute=False) -> Markup:
    """A time as every page shows it: relative ("3 min ago", "in 1 h") with the absolute time on
    hover, or (``absolute``) the absolute time; both in UTC until the page's script puts them in
    the zone chosen in this browser (UTC or the browser's own)."""
    epoch = _epoch_of(value)
    if epoch is None:
        return Markup("—")
    shown = when(epoch)
    if absolute:
        return Markup(f'<time class="abs" datetime="{iso_time(epoch)}" data-t="{epoch:.3f}" title="{shown} UTC">'
                      f'{shown}</time>')
    return Markup(f'<time class="rel" datetime="{iso_time(epoch)}" data-t="{epoch:.3f}" title="{shown} UTC">'
                  f'{relative(epoch - engine().clock.now())}</time>')


def relative(seconds: float) -> str:
    """``seconds`` from now as "in 1 h" (ahead) or "3 min ago" (behind)."""
    s = abs(seconds)
    if s < 1:
        return "just now"
    if s < 60:
        amount = f"{s:.0f} s"
    elif s < 3600:
        amount = f"{s // 60:.0f} min"
    elif s < 48 * 3600:
        amount = f"{s // 3600:.0f} h"
    else:
        amount = f"{s // 86400:.0f} d"
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def iso_time(epoch) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def duration(seconds) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    sign = "-" if seconds < 0 else ""
    s = abs(seconds)
    if s < 1:
        return f"{sign}{s * 1000:.0f} ms"
    if s < 60:
        return f"{sign}{s:.1f} s"
    m, sec = divmod(int(s), 60)
    if m < 60:
        return f"{sign}{m} min {sec} s"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{sign}{h} h {m} min"
    d, h = divmod(h, 24)
    return f"{sign}{d} d {h} h"


from . import bulk, catalog, dashboard, live, migrations, pages, schedules, versions  # noqa: E402,F401  (routes)
