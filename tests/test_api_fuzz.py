"""Property-based fuzzing of the REST API against its own OpenAPI document (Schemathesis).

Every operation of ``/api/openapi.json`` gets generated requests, valid ones and invalid
ones, sent in-process to the WSGI app: no 5xx, and every response conforms to the document
(status code documented, content type and body as declared, valid requests accepted,
invalid ones refused). Then the hostile inputs over real HTTP: oversized bodies, deep
nesting, invalid UTF-8, huge waits, absurd cursors and limits: no 5xx, and no run changes.
"""

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from api import activities, create_app, runs, schedules, streams, workflows  # noqa: F401  (they declare the routes)
from api.openapi import API
from api.serving import ThreadedServer
from engine import activities as act
from engine import migration_plans
from engine import schedules as engine_schedules
from engine.config import Settings
from engine.db import Database
from engine.runtime import Interlock

from .apitools import PROBLEM, dump
from .conftest import empty_tables

WORKFLOWS = "workflows,tests.workflows,tests.activity_workflows"
OPERATIONS = sorted({(op.method.upper(), op.path) for op in API.operations})
# Operations with a query, a body or a header: Schemathesis makes invalid requests only there
# (it leaves path parameters valid; the hostile requests below put NUL and bad UTF-8 in paths).
NEGATABLE = {(op.method.upper(), op.path) for op in API.operations if op.query or op.body or op.headers}
# Per operation and mode; INTERLOCK_FUZZ_EXAMPLES=500 for a longer hunt than CI's.
EXAMPLES = int(os.environ.get("INTERLOCK_FUZZ_EXAMPLES", 25))
# Long polls and streams are bounded through their own parameters, not left out.
MAX_WAIT = 0.05
STREAM_SECONDS = 0.2

CONFIG = SchemathesisConfig.from_dict({
    # A schema-valid request may still name a run that does not exist (404), an event the run
    # does not accept now (409) or a task token that names no running task (410).
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "410"]}},
    "request-timeout": STREAM_SECONDS,  # an event stream is read this long, then cut
    # A new schedule's cron expression, time zone, and cron-or-every are checked by the engine
    # (croniter, zoneinfo) beyond what a JSON schema can say: a schema-valid one may get 422.
    # A migration plan's versions and state mapping are checked against the loaded workflows, and a
    # diff's mapping may name a state one of the two versions lacks.
    "operations": [*({"include-path": path, "include-method": "POST", "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "409", "410", "422"]}}}
        for path in ("/api/schedules", "/api/workflows/{name}/migrations")),
                   {"include-path": "/api/workflows/{name}/diff", "include-method": "GET", "checks": {
                       "positive_data_acceptance": {"expected-statuses": ["2xx", "404", "422"]}}}],
})


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, tmp_path_factory):
    """The app over a database with seeded runs: SQLite, and PostgreSQL (which refuses more)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"
        Database(url).upgrade()
    else:
        url = request.getfixturevalue("pg_database_url")
        empty_tables(url)
    rt = Interlock(Settings(database_url=url, workflows=WORKFLOWS))
    app = create_app({"SECRET_KEY": "fuzz", "STREAM_KEEPALIVE_SECONDS": 0.05}, interlock=rt)
    yield rt, app, seed(rt)
    rt.close()


def seed(rt) -> dict:
    """Runs in every status, and what generated requests may name besides random strings."""
    counting = rt.start("test_counter", business_key="K-1")
    closed = rt.start("test_counter", business_key="K-2")
    rt.send(closed.id, "close")
    cancelled = rt.start("test_approval")
    rt.cancel(cancelled.id, "fuzz")
    cargo = rt.start("cargo", {"container": "C1", "manifest": ["x"]}, business_key="C1")
    review = rt.start("clearance", {"container": "C2"}, business_key="C2")
    token = act.receive(rt, "customs_review", visibility_timeout=3600)[0].token
    engine_schedules.create(rt, name="fuzz-hourly", workflow="test_counter", cron="0 * * * *")
    rt.start("delivery", {"parcel": "P-1"}, version=1)
    plan = migration_plans.create(rt, "delivery", 1, 2, mapping={"shipped": "in_transit"})
    return {
        "plan_id": [plan["id"]],
        "run_id": [counting.id, closed.id, cancelled.id, cargo.id, review.id],
        "workflow": ["test_counter", "test_approval", "cargo", "clearance", "delivery"],
        "activity": ["customs_review", "warehouse.pick"],
        "key": ["K-1", "K-2", "C1", "C2"],
        "token": [token],
        "schedule": ["fuzz-hourly"],
    }


def aim(case, draw, pools) -> None:
    """Point a valid request at things that exist half of the time, and bound its waits."""
    for name in list(case.path_parameters or {}):
        pool = pools["activity" if case.path.startswith("/api/activities") else
                     "schedule" if case.path.startswith("/api/schedules") else
                     "workflow" if name == "name" else name]
        if draw(st.booleans()):
            case.path_parameters[name] = draw(st.sampled_from(pool))
    if isinstance(case.query, dict):
        # The document names search-field parameters by pattern: aim them at a declared text field.
        for pattern, name in (("search.{field}", "search.destination"), ("search.{field}.{op}", "search.destination.prefix")):
            if pattern in case.query:
                case.query[name] = case.query.pop(pattern)
                if "workflow" in case.query:  # one that declares it (another is a documented 400)
                    case.query["workflow"] = "cargo"
    if isinstance(case.query, dict) and case.path.endswith("/diff") and draw(st.booleans()):
        # Versions that exist, and now and then the delivery example's rename.
        case.query.update({"from": draw(st.sampled_from([1, 2])), "to": draw(st.sampled_from([1, 2]))})
        if draw(st.booleans()):
            case.query["map"] = ["shipped:in_transit"]
    if isinstance(case.query, dict) and isinstance(case.query.get("wait"), (int, float)):
        case.query["wait"] = min(case.query["wait"], MAX_WAIT)
    if isinstance(case.body, dict) and isinstance(case.body.get("wait_time_seconds"), (int, float)):
        case.body["wait_time_seconds"] = min(case.body["wait_time_seconds"], MAX_WAIT)


@pytest.fixture(scope="module")
def schema(served):
    _, app, _ = served
    return schemathesis.openapi.from_wsgi("/api/openapi.json", app, config=CONFIG)


def test_every_route_is_in_the_document(schema, served):
    _, app, _ = served
    routes = {(method, rule.rule) for rule in app.url_map.iter_rules()
              if rule.rule == "/api" or rule.rule.startswith("/api/")
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    documented = {(method.upper(), path.replace("{", "<").replace("}", ">"))
                  for path, operations in schema.raw_schema["paths"].items() for method in operations}
    assert routes - {("GET", "/api/openapi.json")} == documented


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("method, path", OPERATIONS)
def test_every_operation_conforms_to_the_document(schema, served, method, path, mode):
    if mode is GenerationMode.NEGATIVE and (method, path) not in NEGATABLE:
        pytest.skip("nothing to make invalid: Schemathesis leaves path parameters valid")
    _, _, pools = served
    operation = schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    def check(case, data):
        if mode is GenerationMode.POSITIVE:
            aim(case, data.draw, pools)
        else:
            # An empty object or list as a query value is not sent at all: that request is valid.
            assume(not any(value in ({}, []) for value in (case.query or {}).values()))
        case.call_and_validate()

    check()


# -- hostile input over real HTTP -----------------------------------------------------------------

LIMIT = 1_048_576  # the default INTERLOCK_MAX_BODY_BYTES
JSON = {"Content-Type": "application/json"}


def deep(levels: int, opener="[", closer="]") -> str:
    """JSON nested ``levels`` deep: lists, or objects with ``opener='{"a":'`` and ``closer='}'``."""
    return opener * (levels - 1) + opener[0] + closer + closer * (levels - 1)


def hostile_requests(ids) -> list[tuple[str, str, str, dict, int]]:
    """(label, method, path, requests arguments, expected status): none of them may change anything."""
    run, done, token = ids["waiting"], ids["finished"], ids["token"]
    events = f"/api/runs/{run}/events"
    writes = [op.path.format(run_id=run, name="test_counter", key="K-1", token=token, batch_id="0" * 32,
                              plan_id="0" * 32)
              .replace("/activities/test_counter/", "/activities/customs_review/")
              for op in API.operations if op.method == "post"]
    cases = []
    for path in writes:
        cases += [
            (f"oversized {path}", "POST", path, {"data": b'{"data": "' + b"x" * LIMIT + b'"}', "headers": JSON}, 413),
            (f"oversized chunked {path}", "POST", path,
             {"data": iter([b'{"data": "'] + [b"x" * 65536] * 17 + [b'"}']), "headers": JSON}, 413),
            (f"100,000 levels {path}", "POST", path, {"data": deep(100_000), "headers": JSON}, 400),
            (f"invalid UTF-8 {path}", "POST", path, {"data": b'{"event": "\xff\xfe", "error": "\xc3"}',
                                                    "headers": JSON}, 400),
            (f"not JSON {path}", "POST", path, {"data": "event=add", "headers": {"Content-Type": "text/plain"}}, 415),
        ]
    cases += [
        ("100,000 objects deep", "POST", events, {"data": deep(100_000, '{"a":', "}"), "headers": JSON}, 400),
        ("data 33 levels deep", "POST", events,
         {"data": '{"event": "add", "data": ' + deep(33, '{"a":', "}") + "}", "headers": JSON}, 422),
        ("encoded surrogate (invalid UTF-8)", "POST", events,
         {"data": b'{"event": "add", "data": {"k": "\xed\xa0\x80"}}', "headers": JSON}, 422),
        ("escaped lone surrogate", "POST", events, {"data": b'{"event": "add", "data": {"\\udc00": 1}}',
                                                    "headers": JSON}, 422),
        ("NaN in data", "POST", events, {"data": '{"event": "add", "data": {"x": NaN}}', "headers": JSON}, 422),
        ("1e999 in data", "POST", events, {"data": '{"event": "add", "data": {"x": 1e999}}', "headers": JSON}, 422),
        ("5,000-digit integer", "POST", events, {"data": '{"event": "add", "data": {"x": ' + "9" * 5000 + "}}",
                                                 "headers": JSON}, 400),
        ("true for an integer", "POST", "/api/activities/customs_review/receive",
         {"json": {"max_messages": True}}, 422),
        ("NUL in a business key", "POST", "/api/workflows/test_counter/runs", {"json": {"business_key": "a\0"}}, 422),
        ("NUL in an event", "POST", events, {"json": {"event": "add\0"}}, 422),
        ("NUL in a path", "GET", "/api/runs/a%00b", {}, 422),
        ("a query the dashboard does not take", "GET", "/dashboard?hours=%00%ff&x=" + "9" * 5000, {}, 200),
        ("NUL in a key", "POST", "/api/workflows/test_counter/keys/K%00/events", {"json": {"event": "add"}}, 422),
        ("NUL in a token", "POST", "/api/tasks/t%00/complete", {"json": {}}, 422),
        ("NUL in a filter", "GET", "/api/runs?business_key=K%00", {}, 422),
        ("NUL in the stream filter", "GET", "/api/stream?workflow=a%00", {}, 422),
        ("invalid UTF-8 in a path", "GET", "/api/runs/%ff%fe", {}, 404),
        ("invalid UTF-8 in Last-Event-ID", "GET", f"/api/runs/{run}/stream",
         {"headers": {"Last-Event-ID": b"\xff".decode("latin-1")}}, 422),
        ("wait=1e308 with newer history", "GET", f"/api/runs/{run}/history?after=0&wait=1e308", {}, 200),
        ("wait=1e308 on a finished run", "GET", f"/api/runs/{done}/history?after=99&wait=1e308", {}, 200),
        ("wait=1e999", "GET", f"/api/runs/{run}/history?wait=1e999", {}, 422),
        ("wait=nan", "GET", f"/api/runs/{run}/history?wait=nan", {}, 422),
        ("wait=-inf", "GET", f"/api/runs/{run}/history?wait=-inf", {}, 422),
        ("wait_time_seconds=1e308", "POST", "/api/activities/customs_review/receive",
         {"json": {"wait_time_seconds": 1e308}}, 422),
        ("visibility_timeout=1e308", "POST", f"/api/tasks/{token}/heartbeat", {"json": {"visibility_timeout": 1e308}},
         422),
        ("after=-1", "GET", f"/api/runs/{run}/history?after=-1", {}, 422),
        ("after=2**31", "GET", f"/api/runs/{run}/history?after={2**31}", {}, 422),
        ("after=2**31-1", "GET", f"/api/runs/{run}/history?after={2**31 - 1}", {}, 200),
        ("stream after=1e308", "GET", "/api/stream?after=1e308", {}, 422),
        ("Last-Event-ID=-1", "GET", f"/api/runs/{run}/stream", {"headers": {"Last-Event-ID": "-1"}}, 422),
        ("Last-Event-ID=1e400", "GET", "/api/stream", {"headers": {"Last-Event-ID": "1e400"}}, 422),
        ("cursor=-1", "GET", "/api/runs?cursor=-1", {}, 422),
        ("cursor of 10,000 digits", "GET", "/api/runs?cursor=" + "9" * 10_000, {}, 422),
        ("cursor of a run that never was", "GET", "/api/runs?cursor=" + "f" * 32, {}, 200),
        ("cursor of the first run that was", "GET", "/api/runs?cursor=" + "0" * 32, {}, 200),
        ("limit=0", "GET", "/api/runs?limit=0", {}, 422),
        ("limit=-1", "GET", "/api/runs?limit=-1", {}, 422),
        ("limit=10**30", "GET", f"/api/runs?limit={10**30}", {}, 422),
        ("limit=1.5", "GET", "/api/runs?limit=1.5", {}, 422),
        ("version=2**63", "GET", f"/api/runs?version={2**63}", {}, 422),
        ("created_after year 1", "GET", "/api/runs?created_after=0001-01-01T00:00:00", {}, 200),
        ("created_before year 9999", "GET", "/api/runs?created_before=9999-12-31T23:59:59-14:00", {}, 200),
        ("created_after as epoch seconds", "GET", "/api/runs?created_after=12909669272", {}, 422),
        ("PUT a run", "PUT", f"/api/runs/{run}", {"json": {}}, 405),
        ("DELETE a run", "DELETE", f"/api/runs/{run}", {}, 405),
    ]
    return cases


@pytest.fixture(scope="module")
def hostile(served):
    rt, app, pools = served
    server = ThreadedServer(app, "127.0.0.1", 0).start()
    ids = {"waiting": pools["run_id"][0], "finished": pools["run_id"][1], "token": pools["token"][0]}
    try:
        yield rt, f"http://127.0.0.1:{server.port}", ids
    finally:
        server.stop()


def test_hostile_input_gets_4xx_problems_and_changes_nothing(hostile):
    rt, base, ids = hostile
    before = dump(rt)
    wrong = []
    with requests.Session() as http:
        for label, method, path, kwargs, status in hostile_requests(ids):
            try:
                response = http.request(method, base + path, timeout=30, stream=True, **kwargs)
            except requests.ConnectionError:  # the server may close on an unread oversized body...
                http.close()                  # ...which is the client's loss: retry on a new connection
                if "data" in kwargs and not isinstance(kwargs["data"], (bytes, str)):
                    kwargs = {**kwargs, "data": b"".join([b'{"data": "'] + [b"x" * 65536] * 17 + [b'"}'])}
                response = http.request(method, base + path, timeout=30, stream=True, **kwargs)
            with response:
                kind = response.headers.get("Content-Type", "")
                # An event stream that opened is not read to its end (it has none).
                text = response.raw.read(200).decode(errors="replace") if "event-stream" in kind else response.text
            if response.status_code != status or (status >= 400 and kind != PROBLEM):
                wrong.append((label, response.status_code, kind, text[:200]))
            if status == 405:
                assert "GET" in response.headers.get("Allow", ""), label
    assert wrong == []
    assert dump(rt) == before
