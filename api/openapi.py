"""Routes declared once with their pydantic schemas: the same models validate requests and
make the OpenAPI 3.1 document, so the two cannot drift apart."""

import re
from dataclasses import dataclass, field
from functools import wraps

from flask import request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .problems import Problem, body_too_large, validation_problem

_RULE_PARAM = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")
# No path, query or header value may hold a NUL character (PostgreSQL cannot store or compare
# one in a text column): the document says so for every string parameter, and views never see one.
NO_NUL = r"^[^\x00]*$"


@dataclass
class Operation:
    path: str
    method: str
    summary: str
    tag: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict = field(default_factory=dict)
    write: bool = False
    stream: str | None = None  # media type of a streamed response
    # request header name -> description, or (description, JSON schema of its value)
    headers: dict = field(default_factory=dict)
    # path parameter name -> JSON schema of its value, when narrower than a string without NUL
    path_params: dict = field(default_factory=dict)
    # query parameters the query model cannot name (a family such as search.<field>), as documented
    extra_query: list = field(default_factory=list)


class Api:
    """Collects operations; ``route`` registers a view on a blueprint and describes it."""

    def __init__(self):
        self.operations: list[Operation] = []

    def route(self, blueprint, rule, method, *, summary, body=None, query=None, responses=None,
              write=False, stream=None, headers=None, path=None, extra_query=None):
        prefix = (blueprint.url_prefix or "")
        op = Operation(path=_RULE_PARAM.sub(r"{\1}", prefix + rule), method=method.lower(),
                       summary=summary, tag=blueprint.name, body=body, query=query,
                       responses=responses or {}, write=write, stream=stream, headers=headers or {},
                       path_params=path or {}, extra_query=list(extra_query or ()))
        self.operations.append(op)

        def decorate(fn):
            @wraps(fn)
            def view(**kwargs):
                _refuse_nul(kwargs, "path")
                _refuse_nul(request.args, "query")
                _refuse_nul({name: request.headers.get(name, "") for name in op.headers}, "header")
                if query is not None:
                    kwargs["query"] = parse(query, _query_args(query), "query")
                if body is not None:
                    kwargs["body"] = parse(body, _json_body(), "body")
                return fn(**kwargs)

            view.interlock_write = write
            blueprint.add_url_rule(rule, endpoint=fn.__name__, view_func=view, methods=[method])
            return view

        return decorate

    def document(self, title, version) -> dict:
        schemas, paths = {}, {}
        for op in self.operations:
            paths.setdefault(op.path, {})[op.method] = self._operation(op, schemas)
        schemas.update(_problem_schema())
        return {
            "openapi": "3.1.0",
            "info": {"title": title, "version": version},
            "paths": paths,
            "components": {
                "schemas": schemas,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            },
            "security": [{}, {"bearer": []}],
        }

    def _operation(self, op, schemas) -> dict:
        out = {"summary": op.summary, "tags": [op.tag], "operationId": f"{op.tag}_{op.method}_{op.path}"
               .replace("/", "_").replace("{", "").replace("}", ""), "responses": {}}
        params = [{"name": name, "in": "path", "required": True,
                   "schema": op.path_params.get(name, {"type": "string", "pattern": NO_NUL})}
                  for name in re.findall(r"{([^}]+)}", op.path)]
        if op.query is not None:
            schema = _schema(op.query, schemas, inline=True)
            for name, prop in schema.get("properties", {}).items():
                params.append({"name": name, "in": "query", "required": name in schema.get("required", []),
                               "schema": _without_nul(prop)})
        params.extend({"in": "query", "required": False, **p, "schema": _without_nul(p["schema"])}
                      for p in op.extra_query)
        for name, spec in op.headers.items():
            # "description", or ("description", JSON schema of the value). An empty header is no header.
            description, schema = spec if isinstance(spec, tuple) else (spec, {"type": "string", "maxLength": 255})
            params.append({"name": name, "in": "header", "required": False, "description": description,
                           "schema": _without_nul(dict(schema))})
        if params:
            out["parameters"] = params
        if op.body is not None:
            out["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": _schema(op.body, schemas)}}}
        for status, model in op.responses.items():
            if model is None:
                out["responses"][str(status)] = {"description": "no content"}
            elif isinstance(model, str):
                media = op.stream or "text/plain"
                out["responses"][str(status)] = {"description": model, "content": {
                    media: {"schema": SSE_EVENT if media == "text/event-stream" else {"type": "string"}}}}
            else:
                out["responses"][str(status)] = {"description": model.__doc__ or "ok", "content": {
                    "application/json": {"schema": _schema(model, schemas)}}}
        problem = {"description": "a problem document (RFC 9457)", "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
        for status in ("400", "401", "403", "404", "405", "409", "413", "415", "422"):
            out["responses"].setdefault(status, problem)
        out["responses"].setdefault("default", problem)
        return out


def _schema(model, schemas, inline=False) -> dict:
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, sub in schema.pop("$defs", {}).items():
        schemas[name] = sub
    if inline:
        return schema
    schemas[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


# An event stream's schema describes each of its events, as read by an EventSource.
SSE_EVENT = {
    "type": "object", "description": "one Server-Sent Event (keep-alive comments are not events)",
    "properties": {
        "event": {"type": "string"}, "id": {"type": "string"}, "retry": {"type": "integer", "minimum": 0},
        "data": {"type": "string", "contentMediaType": "application/json"},
    },
}


def _without_nul(schema: dict) -> dict:
    """A parameter's schema, its free-form strings documented as refusing NUL (see ``_refuse_nul``)."""
    if schema.get("type") == "string" and not schema.keys() & {"pattern", "format", "enum", "const"}:
        schema = {**schema, "pattern": NO_NUL}
    if "anyOf" in schema:
        schema = {**schema, "anyOf": [_without_nul(branch) for branch in schema["anyOf"]]}
    return schema


def _refuse_nul(values, where):
    for name, value in values.items():
        if "\x00" in name or "\x00" in value:
            field = name.replace("\x00", "\\x00")
            message = "contains a NUL character"
            raise Problem(422, "validation-error", "Invalid request", f"invalid {where}: {field}: {message}",
                          field=field, errors=[{"field": field, "message": message}])


def _problem_schema() -> dict:
    return {"Problem": {
        "type": "object", "required": ["type", "title", "status"],
        "properties": {"type": {"type": "string"}, "title": {"type": "string"},
                       "status": {"type": "integer"}, "detail": {"type": "string"},
                       "instance": {"type": "string"}},
        "additionalProperties": True,
    }}


def parse(model, payload, where):
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_problem(exc, where) from None


def _query_args(model) -> dict:
    out = {}
    for key in request.args:
        values = request.args.getlist(key)
        out[key] = values if len(values) > 1 else values[0]
    return out


def _json_body():
    data = request.get_data(cache=True)  # 413 when Content-Length is over the limit
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit:
        # A chunked body is cut at the limit: anything left unread means it was longer.
        if request.environ["wsgi.input"].read(1):
            raise body_too_large()
    if not data:
        return {}
    if not request.is_json:
        raise Problem(415, "unsupported-media-type", "Unsupported media type",
                      "send the body as application/json")
    try:
        return request.get_json()
    except (BadRequest, UnsupportedMediaType, UnicodeDecodeError):
        raise Problem(400, "invalid-json", "Malformed JSON", "the request body is not valid JSON") from None
    except RecursionError:
        raise Problem(400, "invalid-json", "Malformed JSON", "the request body is nested too deeply") from None


# Every blueprint declares its routes here.
API = Api()
