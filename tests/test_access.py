"""Access with INTERLOCK_API_TOKENS set: one read-write token, one read-only token.

Every /api route (taken from the app's URL map, so a new route cannot slip past) answers
401 without a token or with a wrong one, 403 to a read-only token on a write, and its usual
status with a valid token; a refused request changes nothing. The web pages redirect to
the sign-in page without a session (their live channels answer 401), refuse actions to a
read-only session with 403, and perform them for a read-write one. Tokens are compared in
constant time, and no secret appears in the logs or in any response.
"""

import ast
import hashlib
import inspect
import logging
import textwrap
from urllib.parse import urlsplit

import pytest
import requests

from api import auth
from api.openapi import API
from api.web import security
from engine import activities as act
from engine.config import Settings
from engine.db import Database
from engine.runtime import Interlock

from .apitools import app_for, dump, problem, running

RW, RO = "rw-7Hq2xV9kLm3pZ8wE4tYc", "ro-K5nB1sD6fG0jR2uX7aQe"
SECRET_KEY = "session-key-Zt4Wq8Ln"
SECRETS = (RW, RO, SECRET_KEY)
WORKFLOWS = "workflows,tests.workflows,tests.activity_workflows"
WRONG = [None, "", "Bearer", "Bearer ", f"Basic {RW}", f"Token {RW}", "Bearer nope", f"Bearer {RW[:-1]}",
         f"Bearer {RW}x", f"Bearer {RW.upper()}", f"Bearer {RO} {RW}"]


@pytest.fixture
def site(tmp_path, caplog):
    """The app with both tokens on a real server; everything logged, down to DEBUG, is captured."""
    caplog.set_level(logging.DEBUG)
    url = f"sqlite:///{tmp_path / 'access.db'}"
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, workflows=WORKFLOWS, api_tokens=f"{RW}:rw,{RO}:ro"))
    app = app_for(rt, SECRET_KEY=SECRET_KEY)
    with running(app) as base:
        yield rt, app, base
    rt.close()
    records = caplog.get_records("setup") + caplog.get_records("call")
    assert any(record.name == "werkzeug" for record in records)  # the server's request log, for one
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    logged = "\n".join(formatter.format(record) for record in records)
    assert not [secret for secret in SECRETS if secret in logged], "a secret was logged"


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


# -- what a successful request to each /api route needs -------------------------------------------

def failed_run(rt):
    """A warehouse pick whose activity failed twice (its last attempt): the run has failed."""
    run = rt.start("warehouse_pick", {"order": "A-1"})
    for _ in range(2):
        (task,) = act.receive(rt, "warehouse.pick", wait_time_seconds=5, visibility_timeout=0.2)
        act.fail(rt, task.token, "shelf empty")
    assert rt.get(run.id).status == "failed"
    return run


def received_token(rt):
    rt.start("clearance", {"container": "C1"})
    return act.receive(rt, "customs_review", visibility_timeout=60)[0].token


def queued(rt):
    rt.start("clearance", {"container": "C2"})
    return "customs_review"


def counter(rt, key=None):
    return rt.start("test_counter", business_key=key).id


def finished(rt):
    run = rt.start("test_counter")
    rt.send(run.id, "close")
    return run.id


def a_schedule(rt, paused=False):
    from engine import schedules

    name = f"every-minute-{len(schedules.list_all(rt))}"
    schedules.create(rt, name=name, workflow="test_counter", every=60)
    if paused:
        schedules.pause(rt, name)
    return name


def a_batch(rt):
    from engine import batches

    counter(rt)
    return batches.create(rt, "cancel", {"workflow": "test_counter"})["id"]


def a_plan(rt):
    from engine import migration_plans

    rt.start("delivery", {"parcel": "P-1"}, version=1)
    return migration_plans.create(rt, "delivery", 1, 2, mapping={"shipped": "in_transit"})["id"]


# endpoint -> rt -> (path parameters, JSON body or None, query, status with a valid token)
SCENARIOS = {
    "docs.index": lambda rt: ({}, None, {}, 200),
    "docs.openapi": lambda rt: ({}, None, {}, 200),
    "workflows.list_workflows": lambda rt: ({}, None, {}, 200),
    "workflows.get_workflow": lambda rt: ({"name": "cargo"}, None, {}, 200),
    "workflows.diff_versions": lambda rt: ({"name": "delivery"}, None, {"from": 1, "to": 2, "map": "shipped:in_transit"},
                                           200),
    "workflows.start_run": lambda rt: ({"name": "test_counter"}, {"data": {"n": 1}}, {}, 201),
    "workflows.send_by_key": lambda rt: ({"name": "test_counter", "key": (counter(rt, "K-9"), "K-9")[1]},
                                         {"event": "add"}, {}, 200),
    "runs.list_runs": lambda rt: ({}, None, {"workflow": "test_counter"}, 200),
    "runs.get_run": lambda rt: ({"run_id": counter(rt)}, None, {}, 200),
    "runs.list_children": lambda rt: ({"run_id": counter(rt)}, None, {"limit": 10}, 200),
    # A run without that map: the token is checked before the map is looked up.
    "runs.map_items": lambda rt: ({"run_id": counter(rt), "name": "parcels"}, None, {"limit": 10}, 404),
    "runs.explain": lambda rt: ({"run_id": counter(rt)}, None, {}, 200),
    "runs.send_event": lambda rt: ({"run_id": counter(rt)}, {"event": "add"}, {}, 200),
    "runs.cancel_run": lambda rt: ({"run_id": counter(rt)}, {"reason": "test"}, {}, 200),
    "runs.retry_run": lambda rt: ({"run_id": failed_run(rt).id}, {}, {}, 200),
    "pauses.pause_run": lambda rt: ({"run_id": counter(rt)}, {"reason": "test"}, {}, 200),
    "pauses.resume_run": lambda rt: ({"run_id": rt.pause(counter(rt)).id}, {}, {}, 200),
    "pauses.pause_workflow": lambda rt: ({"name": "test_counter"}, {}, {}, 200),
    "pauses.resume_workflow": lambda rt: ({"name": (rt.pause_workflow("test_counter"), "test_counter")[1]}, {}, {},
                                          200),
    "pauses.list_pauses": lambda rt: ({}, None, {}, 200),
    "batches.create_batch": lambda rt: ({}, {"action": "cancel", "filter": {"workflow": "test_counter"}}, {}, 202),
    "batches.list_batches": lambda rt: ({}, None, {"limit": 10}, 200),
    "batches.get_batch": lambda rt: ({"batch_id": a_batch(rt)}, None, {}, 200),
    "batches.batch_items": lambda rt: ({"batch_id": a_batch(rt)}, None, {"outcome": "refused"}, 200),
    "batches.cancel_batch": lambda rt: ({"batch_id": a_batch(rt)}, {}, {}, 200),
    "migrations.create_plan": lambda rt: ({"name": "delivery"}, {"from": 1, "to": 2, "map": {"shipped": "in_transit"}},
                                          {}, 201),
    "migrations.list_plans": lambda rt: ({}, None, {"workflow": "delivery"}, 200),
    "migrations.get_plan": lambda rt: ({"plan_id": a_plan(rt)}, None, {}, 200),
    "migrations.plan_runs": lambda rt: ({"plan_id": a_plan(rt)}, None, {"outcome": "clean"}, 200),
    "migrations.apply_plan": lambda rt: ({"plan_id": a_plan(rt)}, {}, {}, 202),
    "limits.set_priority": lambda rt: ({"run_id": counter(rt)}, {"priority": 5}, {}, 200),
    "limits.list_limits": lambda rt: ({}, None, {"limit": 10}, 200),
    "streams.history": lambda rt: ({"run_id": counter(rt)}, None, {"after": 0, "wait": 0}, 200),
    "streams.run_stream": lambda rt: ({"run_id": finished(rt)}, None, {}, 200),  # ends after its history
    "streams.all_stream": lambda rt: ({}, None, {}, 200),
    "activities.receive": lambda rt: ({"name": queued(rt)}, {"wait_time_seconds": 0}, {}, 200),
    "activities.heartbeat": lambda rt: ({"token": received_token(rt)}, {"visibility_timeout": 30}, {}, 200),
    "activities.complete": lambda rt: ({"token": received_token(rt)}, {"event": "approve"}, {}, 200),
    "activities.fail": lambda rt: ({"token": received_token(rt)}, {"error": "no officer"}, {}, 200),
    "schedules.list_schedules": lambda rt: ({}, None, {}, 200),
    "schedules.create_schedule": lambda rt: ({}, {"name": "new", "workflow": "test_counter", "every": 60}, {}, 201),
    "schedules.get_schedule": lambda rt: ({"name": a_schedule(rt)}, None, {}, 200),
    "schedules.pause_schedule": lambda rt: ({"name": a_schedule(rt)}, {}, {}, 200),
    "schedules.resume_schedule": lambda rt: ({"name": a_schedule(rt, paused=True)}, {}, {}, 200),
    "schedules.trigger_schedule": lambda rt: ({"name": a_schedule(rt)}, {}, {}, 200),
    "schedules.delete_schedule": lambda rt: ({"name": a_schedule(rt)}, None, {}, 204),
}


def api_routes(app):
    return sorted(((rule.endpoint, rule.rule, method) for rule in app.url_map.iter_rules()
                   if rule.rule == "/api" or rule.rule.startswith("/api/")
                   for method in rule.methods - {"HEAD", "OPTIONS"}))


def call(base, rule, method, params, body, query, headers):
    path = rule
    for name, value in params.items():
        path = path.replace(f"<{name}>", value)
    assert "<" not in path, f"no value for a parameter of {rule}"
    with requests.request(method, base + path, json=body, params=query, headers=headers, stream=True,
                          timeout=30) as response:
        # A stream is read to its first event: enough to see it opened, and it closes on exit.
        text = next(response.iter_lines(decode_unicode=True), "") if response.headers.get(
            "Content-Type", "").startswith("text/event-stream") else response.text
    return response, text


def test_every_api_route_needs_a_token_and_a_write_needs_a_read_write_one(site):
    rt, app, base = site
    app_routes = api_routes(app)
    assert {endpoint for endpoint, _, _ in app_routes} == set(SCENARIOS), \
        "a route under /api has no access scenario here: add one"
    for endpoint, rule, method in app_routes:
        params, body, query, status = SCENARIOS[endpoint](rt)
        writes = method not in auth.SAFE_METHODS
        before = dump(rt)
        for header in WRONG:
            response, text = call(base, rule, method, params, body, query,
                                  {} if header is None else {"Authorization": header})
            problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert not any(secret in text for secret in SECRETS)
        response, text = call(base, rule, method, params, body, query, bearer(RO))
        if writes:
            problem(response, 403, "forbidden")
            assert "read-only" in response.json()["detail"]
            assert not any(secret in text for secret in SECRETS)
        else:
            assert response.status_code == status, (endpoint, response.status_code, text[:300])
        assert dump(rt) == before, f"{method} {rule} changed something without a (writing) token"
        response, text = call(base, rule, method, params, body, query, bearer(RW))
        assert response.status_code == status, (endpoint, response.status_code, text[:300])
        if writes:
            assert dump(rt) != before, f"{method} {rule} changed nothing with a read-write token"


def test_the_document_marks_exactly_the_post_and_delete_routes_as_writes():
    assert API.operations
    for op in API.operations:
        assert op.write == (op.method in ("post", "delete")), op.path


def test_metrics_and_static_files_are_open_without_a_token(site):
    _, _, base = site
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 200
    assert requests.get(f"{base}/static/interlock.js", timeout=10).status_code == 200


# -- the web pages ---------------------------------------------------------------------------------

def csrf_of(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def signed_in(base, token):
    session = requests.Session()
    form = session.get(f"{base}/login", timeout=10)
    assert form.status_code == 200
    done = session.post(f"{base}/login", data={"csrf_token": csrf_of(form.text), "token": token, "next": "/"},
                        allow_redirects=False, timeout=10)
    assert done.status_code == 303, done.text[:300]
    assert not any(secret in str(session.cookies.get_dict()) for secret in SECRETS)
    return session


def web_routes(app):
    return sorted((rule.endpoint, rule.rule, method) for rule in app.url_map.iter_rules()
                  if rule.rule != "/api" and not rule.rule.startswith(("/api/", "/metrics", "/static/"))
                  for method in rule.methods - {"HEAD", "OPTIONS"})


PAGES = {"web.runs_page", "web.run_page", "web.workflows_page", "web.workflow_page", "web.workflow_diff_page",
         "web.schedules_page", "web.batch_page", "web.dashboard_page", "web.migrations_page", "web.migration_page"}
LIVE = {"web.changes", "web.run_history", "web.run_stream", "web.all_runs_stream"}
ACTIONS = {"web.send_event", "web.cancel_run", "web.retry_run", "web.pause_run", "web.resume_run"}
SCHEDULE_ACTIONS = {"web.pause_schedule", "web.resume_schedule", "web.trigger_schedule", "web.delete_schedule"}
BATCH_ACTIONS = {"web.bulk_action"}
MIGRATION_ACTIONS = {"web.plan_migration", "web.apply_migration"}
PUBLIC = {"web.login", "web.logout"}


def web_call(session, base, rule, method, params, data=None):
    path = rule
    for name, value in params.items():
        path = path.replace(f"<{name}>", value)
    with session.request(method, base + path, data=data, allow_redirects=False, stream=True,
                         timeout=30) as response:
        text = next(response.iter_lines(decode_unicode=True), "") if response.headers.get(
            "Content-Type", "").startswith("text/event-stream") else response.text
    return response, text


def test_web_pages_redirect_to_sign_in_and_actions_need_a_read_write_session(site):
    """Without a session: pages answer 302 to /login?next=<the page>, their live channels 401,
    actions 302 as well (nothing done). A read-only session sees everything and is refused
    every action with 403; a read-write session performs them."""
    rt, app, base = site
    routes = web_routes(app)
    assert {endpoint for endpoint, _, _ in routes} == \
        PAGES | LIVE | ACTIONS | SCHEDULE_ACTIONS | BATCH_ACTIONS | MIGRATION_ACTIONS | PUBLIC, \
        "a web route is not covered here: add it to PAGES, LIVE, ACTIONS, SCHEDULE_ACTIONS, BATCH_ACTIONS, " \
        "MIGRATION_ACTIONS or PUBLIC"
    reader, writer = signed_in(base, RO), signed_in(base, RW)
    anonymous = requests.Session()
    wrong = anonymous.post(f"{base}/login", data={"csrf_token": csrf_of(anonymous.get(f"{base}/login").text),
                                                  "token": RW[:-1]}, timeout=10)
    assert wrong.status_code == 401 and RW[:-1] not in wrong.text
    for endpoint, rule, method in routes:
        if endpoint in PUBLIC:
            continue
        run = rt.start("cargo", {"container": "C1"})
        params = {"run_id": run.id, "name": "cargo"}
        if endpoint in SCHEDULE_ACTIONS:
            params["name"] = a_schedule(rt, paused=endpoint == "web.resume_schedule")
        if endpoint == "web.batch_page":
            params["batch_id"] = a_batch(rt)
        if endpoint in ("web.migration_page", "web.apply_migration"):
            params["plan_id"] = a_plan(rt)
        before = dump(rt)
        response, text = web_call(anonymous, base, rule, method, params)
        if endpoint in LIVE:
            assert response.status_code == 401, (rule, response.status_code)
            assert response.json()["type"] == "urn:interlock:problem:unauthorized"
        else:
            assert response.status_code == 302, (rule, response.status_code)
            location = urlsplit(response.headers["Location"])
            assert location.path == "/login" and "next=" in location.query
        assert dump(rt) == before

        if endpoint in SCHEDULE_ACTIONS:
            form = {"csrf_token": csrf_of(reader.get(f"{base}/schedules", timeout=10).text)}
            response, text = web_call(reader, base, rule, method, params, form)
            assert response.status_code == 403, (rule, response.status_code)
            assert dump(rt) == before
            form["csrf_token"] = csrf_of(writer.get(f"{base}/schedules", timeout=10).text)
            response, text = web_call(writer, base, rule, method, params, form)
            assert response.status_code == 303, (rule, response.status_code, text[:300])
            assert dump(rt) != before, f"{rule} changed nothing with a read-write session"
        elif endpoint in MIGRATION_ACTIONS:
            form = {"csrf_token": csrf_of(reader.get(f"{base}/migrations", timeout=10).text), "confirm": "yes",
                    "workflow": "delivery", "from": "1", "to": "2", "map": "shipped=in_transit"}
            response, text = web_call(reader, base, rule, method, params, form)
            assert response.status_code == 403, (rule, response.status_code)
            assert dump(rt) == before
            form["csrf_token"] = csrf_of(writer.get(f"{base}/migrations", timeout=10).text)
            response, text = web_call(writer, base, rule, method, params, form)
            assert response.status_code == 303, (rule, response.status_code, text[:300])
            assert ("/batches/" if endpoint == "web.apply_migration" else "/migrations/") in response.headers["Location"]
            assert dump(rt) != before, f"{rule} changed nothing with a read-write session"
        elif endpoint in BATCH_ACTIONS:
            form = {"csrf_token": csrf_of(reader.get(f"{base}/", timeout=10).text), "action": "cancel",
                    "run_id": run.id, "confirm": "yes"}
            response, text = web_call(reader, base, rule, method, params, form)
            assert response.status_code == 403, (rule, response.status_code)
            assert dump(rt) == before
            form["csrf_token"] = csrf_of(writer.get(f"{base}/", timeout=10).text)
            response, text = web_call(writer, base, rule, method, params, form)
            assert response.status_code == 303, (rule, response.status_code, text[:300])
            assert "/batches/" in response.headers["Location"]
            assert dump(rt) != before, f"{rule} changed nothing with a read-write session"
        elif endpoint in ACTIONS:
            page = reader.get(f"{base}/runs/{run.id}", timeout=10).text
            form = {"csrf_token": csrf_of(page), "event": "depart", "reason": "test", "confirm": "yes"}
            response, text = web_call(reader, base, rule, method, params, form)
            assert response.status_code == 403, (rule, response.status_code)
            assert dump(rt) == before
            if endpoint == "web.retry_run":
                params = {"run_id": failed_run(rt).id}
            if endpoint == "web.resume_run":
                rt.pause(params["run_id"])
            page = writer.get(f"{base}/runs/{params['run_id']}", timeout=10).text
            form["csrf_token"] = csrf_of(page)
            response, text = web_call(writer, base, rule, method, params, form)
            assert response.status_code == 303, (rule, response.status_code, text[:300])
            after = rt.get(params["run_id"])
            assert (after.state, after.status, after.paused_at is not None) == {
                "web.send_event": ("in_transit", "running", False), "web.cancel_run": ("booked", "cancelled", False),
                "web.retry_run": ("picking", "running", False), "web.pause_run": ("booked", run.status, True),
                "web.resume_run": ("booked", run.status, False)}[endpoint]
        else:
            for session in (reader, writer):
                response, text = web_call(session, base, rule, method, params)
                assert response.status_code == 200, (rule, response.status_code)
        assert not any(secret in text for secret in SECRETS)

    out = writer.post(f"{base}/logout", data={"csrf_token": csrf_of(writer.get(f"{base}/").text)},
                      allow_redirects=False, timeout=10)
    assert out.status_code == 303
    assert writer.get(f"{base}/", allow_redirects=False, timeout=10).status_code == 302


# -- constant time -----------------------------------------------------------------------------------

def test_tokens_are_told_apart_exactly():
    tokens = auth.parse_tokens(f"{RW}:rw, {RO}:ro ,plain")
    assert [(token.decode(), write) for token, write in tokens] == [(RW, True), (RO, False), ("plain", True)]
    assert auth.may_write(RW, tokens) is True
    assert auth.may_write(RO, tokens) is False
    assert auth.may_write("plain", tokens) is True
    for near in ("", RW[:-1], RW + " ", RW.lower(), RO[1:], "plain:rw", "plai", f"{RW},{RO}"):
        assert auth.may_write(near, tokens) is None, near
    assert auth.may_write(RW, []) is None


@pytest.mark.parametrize("function", [auth.may_write, security.signed_in])
def test_every_configured_token_is_compared_with_hmac_compare_digest(function):
    """Read from the source: one loop over all the tokens, hmac.compare_digest in it, and no
    way out of the loop before its end (no return or break), so the time does not say which
    token matched. (A timing test would be too noisy to mean anything.)"""
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    loops = [node for node in ast.walk(tree) if isinstance(node, ast.For)]
    assert len(loops) == 1
    (loop,) = loops
    assert "INTERLOCK_TOKENS" in ast.unparse(loop.iter) or ast.unparse(loop.iter) == "tokens"
    calls = [ast.unparse(node.func) for node in ast.walk(loop) if isinstance(node, ast.Call)]
    assert "hmac.compare_digest" in calls
    assert not [node for node in ast.walk(loop) if isinstance(node, (ast.Return, ast.Break))]
    assert "==" not in ast.unparse(tree).replace("!=", "")  # no plain comparison of secrets anywhere


def test_digests_hide_the_token_length():
    """compare_digest may return early on inputs of different lengths: both sides are hashed first."""
    source = inspect.getsource(auth.may_write)
    assert "hashlib.sha256(presented" in source and "hashlib.sha256(token)" in source
    assert hashlib.sha256(RW.encode()).digest() != hashlib.sha256(RO.encode()).digest()
