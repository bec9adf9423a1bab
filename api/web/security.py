"""Sessions, sign-in with an API token, CSRF tokens and security headers for the web pages.

The session cookie is signed with SECRET_KEY (INTERLOCK_SECRET_KEY, or a key generated per
process). It never holds an API token: only a hash of it, checked against the configured
tokens on every request, so removing a token from INTERLOCK_API_TOKENS signs its sessions out.
"""

import hashlib
import hmac
import logging
import os
import secrets
from urllib.parse import urlsplit

from flask import abort, current_app, request, session

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf_token"
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")


def configure(app) -> None:
    """Secret key and cookie flags, unless the app's config already says."""
    if not app.config.get("SECRET_KEY"):
        key = os.environ.get("INTERLOCK_SECRET_KEY")
        if not key:
            key = secrets.token_hex(32)
            log.warning("INTERLOCK_SECRET_KEY is not set: web sessions use a key made for this process "
                        "(they end when it restarts and are not shared between server processes)")
        app.config["SECRET_KEY"] = key
    app.config.setdefault("SESSION_COOKIE_NAME", "interlock_session")
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    if app.config.get("SESSION_COOKIE_SAMESITE") not in ("Lax", "Strict"):
        app.config["SESSION_COOKIE_SAMESITE"] = "Lax"


def _digest(token: bytes) -> str:
    return hashlib.sha256(token).hexdigest()


def tokens_required() -> bool:
    return bool(current_app.config["INTERLOCK_TOKENS"])


def sign_in(presented: str) -> bool:
    """Start a session for a configured token; False (and nothing stored) for an unknown one."""
    from ..auth import may_write

    write = may_write(presented, current_app.config["INTERLOCK_TOKENS"]) if presented else None
    if write is None:
        return False
    session.clear()
    session["token"] = _digest(presented.encode())
    session[CSRF_FIELD] = secrets.token_urlsafe(32)  # a new session gets a new CSRF token
    return True


def sign_out() -> None:
    session.clear()


def signed_in() -> bool | None:
    """None: nobody signed in (or the token was removed); else whether the session may write."""
    digest = session.get("token")
    if not isinstance(digest, str):
        return None
    found = None
    for token, write in current_app.config["INTERLOCK_TOKENS"]:
        if hmac.compare_digest(digest, _digest(token)):
            found = write
    return found


def may_write() -> bool:
    return not tokens_required() or bool(signed_in())


def csrf_token() -> str:
    token = session.get(CSRF_FIELD)
    if not isinstance(token, str):
        token = session[CSRF_FIELD] = secrets.token_urlsafe(32)
    return token


def check_csrf() -> None:
    """403 unless the form carries this session's token and the request comes from this site."""
    origin = request.headers.get("Origin") or request.headers.get("Referer")
    if origin and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc and parts.netloc != request.host:
            abort(403, description="cross-site request refused")
    expected = session.get(CSRF_FIELD)
    presented = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not hmac.compare_digest(expected.encode(), presented.encode()):
        abort(403, description="the form's CSRF token is missing or stale: reload the page and try again")


def headers(response):
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        response.headers.setdefault("Cache-Control", "no-store")
    return response
