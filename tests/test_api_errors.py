"""The REST API over real HTTP: every route's happy path, and every class of error.

Each error is an RFC 9457 problem document (``application/problem+json``) with a stable
``urn:interlock:problem:`` type, and a refused request changes nothing: every row of every
table (runs, history, tasks, timers, ...) is the same before and after it.
"""

import json
import time
import uuid

import pytest
import requests

from engine import activities as act

from .apitools import PROBLEM, dump, problem, serving
from .conftest import TEST_WORKFLOWS, _runtime, wait_until

WORKFLOWS = TEST_WORKFLOWS + ",tests.activity_workflows"
CARGO = {"container": "MSCU1234565", "manifest": ["toys"]}


@pytest.fixture(params=["sqlite", "postgres"])
def rt(request):
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    yield from _runtime(settings.replace(workflows=WORKFLOWS))


@pytest.fixture
def api(rt):
    with serving(rt) as base, requests.Session() as http:
        http.base = base
        yield http


def url(http, path):
    return http.base + path


def refused(rt, send, status, kind) -> dict:
    """Make the request with ``send()``; assert the problem it answers and that nothing changed."""
    before = dump(rt)
    body = problem(send(), status, kind)
    assert dump(rt) == before, "a refused request changed the database"
    return body


# -- happy paths -----------------------------------------------------------------------------------

def test_start_is_201_with_location_and_a_repeat_with_the_idempotency_key_is_200_with_the_same_run(rt, api):
    start = url(api, "/api/workflows/cargo/runs")
    first = api.post(start, json={"data": CARGO, "business_key": "MSCU1234565"},
                     headers={"Idempotency-Key": "booking-881"})
    assert first.status_code == 201, first.text
    run = first.json()
    assert (run["workflow"], run["version"], run["state"], run["status"]) == ("cargo", 1, "booked", "waiting")
    assert (run["business_key"], run["idempotency_key"], run["data"]) == ("MSCU1234565", "booking-881", CARGO)
    assert first.headers["Location"].endswith(f"/api/runs/{run['id']}")
    located = api.get(requests.compat.urljoin(api.base, first.headers["Location"]))
    assert located.status_code == 200 and located.json() == run

    before = dump(rt)
    repeat = api.post(start, json={"data": {"other": True}}, headers={"Idempotency-Key": "booking-881"})
    assert repeat.status_code == 200 and repeat.json() == run
    assert repeat.headers["Location"] == first.headers["Location"]
    assert dump(rt) == before  # the first run, unchanged, and no second one

    other = api.post(start, json={"data": CARGO}, headers={"Idempotency-Key": "booking-882"})
    assert other.status_code == 201 and other.json()["id"] != run["id"]
    assert api.post(start, json={"data": CARGO, "version": 1}).status_code == 201
    no_body = api.post(url(api, "/api/workflows/test_counter/runs"))  # the body is optional: {}
    assert no_body.status_code == 201 and no_body.json()["data"] == {}


def test_send_an_event_by_run_id_and_by_business_key(rt, api):
    run = rt.start("cargo", CARGO, business_key="MSCU1234565")
    older = rt.start("cargo", CARGO, business_key="OTHER")
    sent = api.post(url(api, f"/api/runs/{run.id}/events"), json={"event": "depart", "data": {"vessel": "Ever"}})
    assert sent.status_code == 200, sent.text
    assert (sent.json()["state"], sent.json()["data"]["vessel"]) == ("in_transit", "Ever")

    again = rt.start("cargo", CARGO, business_key="MSCU1234565")  # the newest active run with the key
    by_key = api.post(url(api, "/api/workflows/cargo/keys/MSCU1234565/events"), json={"event": "depart"})
    assert by_key.status_code == 200 and by_key.json()["id"] == again.id
    assert by_key.json()["state"] == "in_transit"
    assert rt.get(older.id).state == "booked"


def test_list_runs_filters_and_follows_the_next_cursor(rt, api):
    counters = [rt.start("test_counter", business_key=f"K-{i}") for i in range(5)]
    rt.send(counters[1].id, "close")
    approval = rt.start("test_approval")
    v1 = rt.start("test_versioned", version=1)

    def ids(**params):
        response = api.get(url(api, "/api/runs"), params=params)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.json()["runs"]]

    everything = [r.id for r in sorted([*counters, approval, v1], key=lambda r: r.id, reverse=True)]
    assert ids() == everything  # newest first
    pages, params = [], {"limit": 2, "workflow": "test_counter"}
    while True:
        page = api.get(url(api, "/api/runs"), params=params).json()
        pages.append([r["id"] for r in page["runs"]])
        if page["next"] is None:
            break
        params["cursor"] = page["next"]
    newest_first = sorted((r.id for r in counters), reverse=True)  # ids sort by creation time
    assert pages == [newest_first[:2], newest_first[2:4], newest_first[4:]]

    assert ids(workflow="test_counter", status="succeeded") == [counters[1].id]
    assert ids(state="closed") == [counters[1].id]
    assert ids(business_key="K-3") == [counters[3].id]
    assert ids(workflow="test_versioned", version=1) == [v1.id]
    assert ids(workflow="test_versioned", version=2) == []
    assert ids(status="waiting", workflow="test_approval") == [approval.id]
    now = time.time()
    assert ids(created_after=_iso(now - 60), created_before=_iso(now + 60)) == everything
    assert ids(created_after=_iso(now + 60)) == []
    assert ids(created_before="2000-01-01") == []  # a date alone: midnight UTC


def _iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def test_get_history_explain_and_the_streams_of_a_run(rt, api):
    run = rt.start("cargo", {"container": "MSCU1234565"})  # no manifest: the guard blocks arrive
    rt.send(run.id, "depart")
    got = api.get(url(api, f"/api/runs/{run.id}"))
    assert got.status_code == 200 and got.json()["state"] == "in_transit"
    history = api.get(url(api, f"/api/runs/{run.id}/history")).json()
    assert [e["kind"] for e in history["history"]][:2] == ["started", "transition"]
    assert history["last_seq"] == rt.get(run.id).last_seq

    why = api.get(url(api, f"/api/runs/{run.id}/explain"))
    assert why.status_code == 200
    explained = why.json()
    assert explained["state"] == "in_transit"
    assert {e["event"] for e in explained["accepted_events"]} >= {"declare_lost"}
    assert {e["event"] for e in explained["blocked_events"]} == {"arrive"}  # the manifest guard
    assert [t["event"] for t in explained["timers"]] == ["declare_lost"]
    assert [t["name"] for t in explained["tasks"]] == ["track"]
    assert "track" in explained["waiting_for"]

    rt.cancel(run.id, "done with it")
    with api.get(url(api, f"/api/runs/{run.id}/stream"), stream=True, timeout=10) as stream:
        assert stream.status_code == 200 and stream.headers["Content-Type"].startswith("text/event-stream")
        lines = []  # a cancelled run's stream ends after its history (read as far as that, no further)
        for line in stream.iter_lines(decode_unicode=True):
            lines.append(line)
            if line == "event: end" or len(lines) > 100:
                break
    assert lines.count("event: history") == rt.get(run.id).last_seq and lines[-1] == "event: end"
    with api.get(url(api, "/api/stream"), stream=True, timeout=10) as stream:
        assert stream.status_code == 200
        assert next(stream.iter_lines(decode_unicode=True)).startswith("retry:")


def test_workflows_are_described(api):
    listed = api.get(url(api, "/api/workflows"))
    assert listed.status_code == 200
    by_name = {w["name"]: w for w in listed.json()["workflows"]}
    assert by_name["test_versioned"]["versions"] == [1, 2] and by_name["test_versioned"]["latest"] == 2
    cargo = api.get(url(api, "/api/workflows/cargo")).json()
    (v1,) = cargo["versions"]
    assert {s["id"] for s in v1["states"]} >= {"booked", "in_transit", "delivered"}
    assert {"event": "depart", "source": "booked", "target": "in_transit", "guards": []} in v1["transitions"]
    assert "track" in {s["name"] for s in v1["steps"]}
    assert v1["timers"] and v1["diagram"]
    one = api.get(url(api, "/api/workflows/test_versioned"), params={"version": 1}).json()
    assert [v["version"] for v in one["versions"]] == [1]


def test_cancel_and_retry(rt, api, tmp_path):
    run = rt.start("test_approval")
    cancelled = api.post(url(api, f"/api/runs/{run.id}/cancel"), json={"reason": "not needed"})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert rt.history(run.id)[-1].kind == "cancelled"

    flag = tmp_path / "flag"
    flag.write_text("fail")
    with rt.worker(2):
        flaky = rt.start("test_flaky", {"flag": str(flag)})
        wait_until(lambda: rt.get(flaky.id).status == "failed", message="the step to fail for good")
        flag.unlink()
        retried = api.post(url(api, f"/api/runs/{flaky.id}/retry"), json={})
        assert retried.status_code == 200 and retried.json()["status"] == "running"
        wait_until(lambda: rt.get(flaky.id).status == "succeeded", message="the retried step to succeed")


def test_an_activity_task_is_received_heartbeaten_failed_and_completed(rt, api):
    run = rt.start("clearance", {"container": "C1"})
    receive = url(api, "/api/activities/customs_review/receive")
    (task,) = api.post(receive, json={"max_messages": 10, "visibility_timeout": 60}).json()["tasks"]
    assert (task["run_id"], task["attempt"], task["data"]) == (run.id, 1, {"container": "C1"})
    # Long enough for the fail below to come within it on a busy machine; the receive after it waits.
    beat = api.post(url(api, f"/api/tasks/{task['token']}/heartbeat"), json={"visibility_timeout": 3.0})
    assert beat.status_code == 200 and beat.json()["visibility_timeout"] == 3.0
    failed = api.post(url(api, f"/api/tasks/{task['token']}/fail"), json={"error": "officer away"})
    assert failed.status_code == 200 and failed.json()["state"] == "review"
    # Received again once its visibility timeout has ended: a long poll waits for that.
    (again,) = api.post(receive, json={"wait_time_seconds": 10, "visibility_timeout": 60}).json()["tasks"]
    assert (again["run_id"], again["attempt"]) == (run.id, 2)
    done = api.post(url(api, f"/api/tasks/{again['token']}/complete"), json={"event": "refuse", "data": {"why": "x"}})
    assert done.status_code == 200, done.text
    assert (done.json()["state"], done.json()["status"], done.json()["data"]["why"]) == ("refused", "failed", "x")


# -- errors ------------------------------------------------------------------------------------------

def test_an_event_not_allowed_now_is_409_naming_the_state_and_the_allowed_events(rt, api):
    run = rt.start("cargo", CARGO, business_key="C1")
    events = url(api, f"/api/runs/{run.id}/events")
    for event in ("arrive", "no_such_event"):
        body = refused(rt, lambda: api.post(events, json={"event": event}), 409, "invalid-transition")
        assert (body["event"], body["states"], body["allowed_events"]) == (event, ["booked"], ["depart"])
        assert "booked" in body["detail"] and "depart" in body["detail"]
    by_key = refused(rt, lambda: api.post(url(api, "/api/workflows/cargo/keys/C1/events"), json={"event": "arrive"}),
                     409, "invalid-transition")
    assert by_key["run_id"] == run.id

    rt.send(run.id, "depart")  # in transit, but without... a manifest guard refusing arrive
    bare = rt.start("cargo", {"container": "C2"})
    rt.send(bare.id, "depart")
    guarded = refused(rt, lambda: api.post(url(api, f"/api/runs/{bare.id}/events"), json={"event": "arrive"}),
                      409, "invalid-transition")
    assert guarded["states"] == ["in_transit"] and "a guard did not hold" in guarded["detail"]
    assert "declare_lost" in guarded["allowed_events"]


def test_a_finished_run_refuses_events_cancel_and_retry_with_409(rt, api):
    done = rt.start("test_counter")
    rt.send(done.id, "close")
    waiting = rt.start("test_approval")
    for path, payload in ((f"/api/runs/{done.id}/events", {"event": "add"}),
                          (f"/api/runs/{done.id}/cancel", {}),
                          (f"/api/runs/{done.id}/retry", {}),
                          (f"/api/runs/{waiting.id}/retry", {})):  # retry: only a failed run
        body = refused(rt, lambda: api.post(url(api, path), json=payload), 409, "run-not-active")
        assert body["run_status"] in ("succeeded", "waiting") and body["detail"]
    rt.cancel(waiting.id)
    body = refused(rt, lambda: api.post(url(api, f"/api/runs/{waiting.id}/cancel"), json={}), 409, "run-not-active")
    assert body["run_status"] == "cancelled"


def test_unknown_runs_workflows_and_keys_are_404(rt, api):
    rt.start("test_counter", business_key="K")
    missing = uuid.uuid4().hex
    for method, path, payload in (
            ("GET", f"/api/runs/{missing}", None), ("GET", f"/api/runs/{missing}/history", None),
            ("GET", f"/api/runs/{missing}/explain", None), ("GET", f"/api/runs/{missing}/stream", None),
            ("POST", f"/api/runs/{missing}/events", {"event": "add"}),
            ("POST", f"/api/runs/{missing}/cancel", {}), ("POST", f"/api/runs/{missing}/retry", {}),
            ("POST", "/api/workflows/test_counter/keys/nobody/events", {"event": "add"})):
        body = refused(rt, lambda: api.request(method, url(api, path), json=payload), 404, "run-not-found")
        assert body["detail"] and body["instance"] == path
    for method, path, payload in (
            ("GET", "/api/workflows/nope", None), ("GET", "/api/workflows/cargo?version=9", None),
            ("POST", "/api/workflows/nope/runs", {}), ("POST", "/api/workflows/cargo/runs", {"version": 9}),
            ("POST", "/api/workflows/nope/keys/K/events", {"event": "add"})):
        refused(rt, lambda: api.request(method, url(api, path), json=payload), 404, "workflow-not-found")
    refused(rt, lambda: api.get(url(api, "/api/nothing/here")), 404, "not-found")


@pytest.mark.parametrize("raw", [b'{"event": ', b'{"event": "add",}', b"{'event': 'add'}", b'{"event": "\xff"}',
                                 b"[" * 100_000 + b"]" * 100_000])
def test_malformed_json_is_400(rt, api, raw):
    run = rt.start("test_counter")
    body = refused(rt, lambda: api.post(url(api, f"/api/runs/{run.id}/events"), data=raw,
                                        headers={"Content-Type": "application/json"}), 400, "invalid-json")
    assert "JSON" in body["title"]


@pytest.mark.parametrize("path, payload, field", [
    ("/api/runs/{run}/events", {}, "event"),
    ("/api/runs/{run}/events", {"event": 5}, "event"),
    ("/api/runs/{run}/events", {"event": ""}, "event"),
    ("/api/runs/{run}/events", {"event": "add", "data": [1]}, "data"),
    ("/api/runs/{run}/events", {"event": "add", "data": "x"}, "data"),
    ("/api/runs/{run}/events", {"event": "add", "extra": 1}, "extra"),
    ("/api/runs/{run}/events", {"event": "add", "data": {"a": {"b": {"c": json.loads("[" * 30 + "]" * 30)}}}},
     "data"),  # 33 levels
    ("/api/runs/{run}/events", [{"event": "add"}], None),
    ("/api/runs/{run}/cancel", {"reason": 7}, "reason"),
    ("/api/runs/{run}/retry", {"please": True}, "please"),
    ("/api/workflows/test_counter/runs", {"data": []}, "data"),
    ("/api/workflows/test_counter/runs", {"version": 0}, "version"),
    ("/api/workflows/test_counter/runs", {"version": "1"}, "version"),
    ("/api/workflows/test_counter/runs", {"version": True}, "version"),
    ("/api/workflows/test_counter/runs", {"business_key": ""}, "business_key"),
    ("/api/workflows/test_counter/runs", {"business_key": "k" * 256}, "business_key"),
    ("/api/activities/customs_review/receive", {"max_messages": 11}, "max_messages"),
    ("/api/activities/customs_review/receive", {"wait_time_seconds": "1"}, "wait_time_seconds"),
    ("/api/tasks/{token}/fail", {}, "error"),
])
def test_a_wrong_type_or_missing_field_is_422_naming_the_field(rt, api, path, payload, field):
    run = rt.start("test_counter")
    path = path.format(run=run.id, token="t" * 43)
    body = refused(rt, lambda: api.post(url(api, path), json=payload), 422, "validation-error")
    assert body.get("field") == field, body
    assert body["errors"][0]["field"] == field and body["errors"][0]["message"]
    assert (field or "body") in body["detail"]


@pytest.mark.parametrize("query, field", [("limit=0", "limit"), ("limit=abc", "limit"), ("status=bogus", "status"),
                                          ("cursor=xyz", "cursor"), ("created_after=yesterday", "created_after"),
                                          ("version=1.5", "version")])
def test_a_bad_query_parameter_is_422_naming_it(rt, api, query, field):
    body = refused(rt, lambda: api.get(url(api, f"/api/runs?{query}")), 422, "validation-error")
    assert body["field"] == field


def test_a_body_over_the_configured_limit_is_413(rt, tmp_path):
    limit = 2000
    padded = '{"event": "add"' + " " * (limit - len('{"event": "add"}')) + "}"
    assert len(padded) == limit
    over = padded[:-1] + " }"
    with serving(rt, MAX_CONTENT_LENGTH=limit) as base:
        run = rt.start("test_counter")
        events = f"{base}/api/runs/{run.id}/events"
        for data in (over, iter([over[:1000].encode(), over[1000:].encode()])):  # Content-Length, then chunked
            body = refused(rt, lambda: requests.post(events, data=data, headers={"Content-Type": "application/json"}),
                           413, "body-too-large")
            assert body["max_body_bytes"] == limit and str(limit) in body["detail"]
        for data in (padded, iter([padded[:1000].encode(), padded[1000:].encode()])):  # exactly the limit: taken
            assert requests.post(events, data=data, headers={"Content-Type": "application/json"}).status_code == 200
    assert rt.get(run.id).data["count"] == 2


def test_the_body_limit_comes_from_interlock_max_body_bytes(sqlite_settings, monkeypatch):
    from api import create_app

    monkeypatch.setenv("INTERLOCK_MAX_BODY_BYTES", "100")
    app = create_app({"INTERLOCK_DATABASE_URL": sqlite_settings.database_url, "INTERLOCK_WORKFLOWS": TEST_WORKFLOWS,
                      "SECRET_KEY": "x"})
    try:
        client = app.test_client()
        response = client.post("/api/workflows/test_counter/runs", json={"data": {"x": "y" * 100}})
        assert response.status_code == 413 and response.json["max_body_bytes"] == 100
        assert response.content_type == PROBLEM
        assert client.post("/api/workflows/test_counter/runs", json={}).status_code == 201
    finally:
        app.extensions["interlock"].close()


@pytest.mark.parametrize("content_type, data", [("text/plain", '{"event": "add"}'),
                                                ("application/x-www-form-urlencoded", "event=add"),
                                                ("application/xml", "<event>add</event>")])
def test_an_unsupported_media_type_is_415(rt, api, content_type, data):
    run = rt.start("test_counter")
    body = refused(rt, lambda: api.post(url(api, f"/api/runs/{run.id}/events"), data=data,
                                        headers={"Content-Type": content_type}), 415, "unsupported-media-type")
    assert "application/json" in body["detail"]


def test_a_stale_activity_token_is_410_and_changes_nothing(rt, api):
    rt.start("clearance", {"container": "C1"})
    rt.start("clearance", {"container": "C2"})
    answer = lambda token: api.post(url(api, f"/api/tasks/{token}/complete"), json={})  # noqa: E731
    body = refused(rt, lambda: answer("never-issued"), 410, "stale-task-token")
    assert body["reason"] == "unknown"

    task = act.receive(rt, "customs_review", visibility_timeout=0.3)[0]
    wait_until(lambda: time.time() > task.lease_until + 0.01, message="the visibility timeout to end")
    body = refused(rt, lambda: answer(task.token), 410, "stale-task-token")
    assert body["reason"] == "expired"
    for verb, payload in (("heartbeat", {}), ("fail", {"error": "late"})):
        refused(rt, lambda: api.post(url(api, f"/api/tasks/{task.token}/{verb}"), json=payload),
                410, "stale-task-token")

    fresh = act.receive(rt, "customs_review", visibility_timeout=60)[0]
    assert answer(fresh.token).status_code == 200
    body = refused(rt, lambda: answer(fresh.token), 410, "stale-task-token")  # answered twice
    assert body["reason"] == "succeeded"


def test_method_not_allowed_is_405_with_allow(rt, api):
    run = rt.start("test_counter")
    response = api.delete(url(api, f"/api/runs/{run.id}"))
    problem(response, 405, "method-not-allowed")
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET"}
