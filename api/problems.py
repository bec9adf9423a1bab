"""Every error is an RFC 9457 problem document with a stable ``type``."""

import logging

from flask import current_app, jsonify, request
from sqlalchemy.exc import DBAPIError
from werkzeug.exceptions import HTTPException

from engine.errors import InterlockError

log = logging.getLogger(__name__)
TYPE_PREFIX = "urn:interlock:problem:"


class Problem(Exception):
    def __init__(self, status: int, code: str, title: str, detail: str | None = None, *, headers=None, **extra):
        super().__init__(detail or title)
        self.status, self.code, self.title, self.detail, self.extra = status, code, title, detail, extra
        self.headers = dict(headers or {})

    def response(self):
        body = {"type": TYPE_PREFIX + self.code, "title": self.title, "status": self.status,
                "instance": request.path}
        if self.detail:
            body["detail"] = self.detail
        body.update({k: v for k, v in self.extra.items() if v is not None})
        response = jsonify(body)
        response.status_code = self.status
        response.mimetype = "application/problem+json"
        response.headers.update(self.headers)
        return response


def validation_problem(exc, where) -> Problem:
    errors = []
    for error in exc.errors(include_url=False, include_context=False, include_input=False):
        path = ".".join(str(part) for part in error["loc"]) or None  # None: the whole body or query
        errors.append({"field": path, "message": error["msg"]})
    first = errors[0]["field"] if errors else None
    detail = "; ".join(f"{e['field'] or where}: {e['message']}" for e in errors)
    return Problem(422, "validation-error", "Invalid request", f"invalid {where}: {detail}",
                   field=first, errors=errors)


def body_too_large() -> Problem:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    detail = f"the request body is larger than {limit} bytes" if limit else "the request body is too large"
    return Problem(413, "body-too-large", "Request body too large", detail, max_body_bytes=limit)


def _title(code: str) -> str:
    return code.replace("-", " ").capitalize()


def from_interlock(exc: InterlockError) -> Problem:
    reserved = ("type", "detail", "title", "status", "instance")
    extra = {k: v for k, v in exc.to_dict().items() if k not in reserved}
    return Problem(exc.status, exc.code, _title(exc.code), str(exc), **extra)


def register(app):
    @app.errorhandler(Problem)
    def _problem(exc):
        return exc.response()

    @app.errorhandler(InterlockError)
    def _interlock(exc):
        return from_interlock(exc).response()

    @app.errorhandler(HTTPException)
    def _http(exc):
        code = {404: "not-found", 405: "method-not-allowed", 413: "body-too-large", 415: "unsupported-media-type",
                400: "bad-request", 401: "unauthorized", 403: "forbidden"}.get(exc.code, "http-error")
        if exc.code == 413:
            return body_too_large().response()
        response = Problem(exc.code, code, exc.name, exc.description).response()
        for name, value in exc.get_headers():  # Allow on a 405, say
            if name.lower() != "content-type":
                response.headers[name] = value
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc):
        if isinstance(exc, DBAPIError) and exc.connection_invalidated:
            # The database dropped this pooled connection (a restart, a killed backend): the
            # pool reconnects, so the client may simply try again.
            log.warning("database connection lost on %s %s", request.method, request.path)
            response = Problem(503, "database-unavailable", "Database unavailable",
                               "the connection to the database was lost; try again").response()
            response.headers["Retry-After"] = "1"
            return response
        log.exception("unhandled error on %s %s", request.method, request.path)
        return Problem(500, "internal-error", "Internal server error",
                       "the server failed; the error is in its log").response()
