"""The web pages over plain HTTP against a real server on 127.0.0.1: escaping, filters and search,
pagination, CSRF, confirmation, the API's error text on refusals, signing in, the live routes."""

import contextlib
import threading
import time
from dataclasses import dataclass

import pytest
import requests
from markupsafe import escape
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.serving import make_server

from api import create_app
from api.web import diagram
from engine.config import Settings
from engine.db import Database
from engine.errors import RunNotActive
from engine.runtime import Interlock
from tests.conftest import wait_until

XSS = "<script>alert(1)</script>"
CARGO = {"container": "MSCU1234565", "manifest": ["toys"]}


@dataclass
class Served:
    url: str
    rt: Interlock
    app: object

    def start(self, workflow="cargo", data=None, key=None):
        return self.rt.start(workflow, dict(CARGO if data is None else data), business_key=key)


@contextlib.contextmanager
def serve(tmp_path, **config):
    """The app on werkzeug's threaded server on a free port, over a fresh SQLite database."""
    url = f"sqlite:///{tmp_path / 'web.db'}"
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, workflows=config.pop("workflows", "workflows"), poll_interval=0.05,
                            api_tokens=config.pop("tokens", "")))
    app = create_app({"SECRET_KEY": "test-secret", "STREAM_KEEPALIVE_SECONDS": 1.0, **config}, interlock=rt)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Served(f"http://127.0.0.1:{server.server_port}", rt, app)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
        rt.close()


@pytest.fixture
def site(tmp_path):
    with serve(tmp_path) as served:
        yield served


@pytest.fixture
def http():
    with requests.Session() as session:
        yield session


def csrf_of(html: str) -> str:
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start:html.index('"', start)]


def row_ids(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('<tr data-run-id="')[1:]]


# -- reading ------------------------------------------------------------------------------

def test_run_data_is_escaped_everywhere(site, http):
    run = site.start(key=XSS, data={**CARGO, "note": XSS})
    for path in ("/", f"/?q={requests.utils.quote(XSS)}", f"/runs/{run.id}"):
        response = http.get(site.url + path)
        assert response.status_code == 200
        assert XSS not in response.text
        assert str(escape(XSS)) in response.text
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"


def test_runs_page_filters_search_and_counts(site, http):
    cargo = [site.start(key=f"C-{i}") for i in range(3)]
    site.rt.send(cargo[0].id, "depart")
    site.rt.cancel(cargo[1].id, "test")
    orders = site.start("orders", {"items": [{"sku": "A", "qty": 1, "price": 2.0}]}, key="O-1")

    html = http.get(site.url + "/").text
    assert row_ids(html) == sorted([orders.id, *(r.id for r in cargo)], reverse=True)  # newest first
    assert 'data-status="cancelled"><span class="badge cancelled">cancelled</span><span class="n">1</span>' in html

    def ids(**args):
        response = http.get(site.url + "/", params=args)
        assert response.status_code == 200
        return row_ids(response.text)

    assert ids(workflow="orders") == [orders.id]
    assert ids(status="cancelled") == [cargo[1].id]
    assert ids(state="in_transit") == [cargo[0].id]
    assert ids(q="C-2") == [cargo[2].id]
    assert ids(q=cargo[0].id) == [cargo[0].id]
    assert ids(q=cargo[0].id, status="waiting") == []
    assert ids(q="nobody") == []
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert len(ids(**{"from": today, "to": today})) == 4
    assert ids(to="2000-01-01") == []
    bad = http.get(site.url + "/", params={"status": "bogus"})
    assert bad.status_code == 200 and "status must be one of" in bad.text


def test_runs_page_search_box_takes_search_fields_id_prefixes_and_keys_in_any_case(tmp_path, http):
    with serve(tmp_path, workflows="workflows,tests.search_workflows") as site:
        made = [site.start("test_search_order", data, key=key).id for data, key in (
            ({"customer": "ACME", "total": 5.0}, "Order-1"),
            ({"customer": "ACME Corp", "total": 50.0}, "order-2"),
            ({"customer": XSS, "total": 500.0}, None))]
        cargo = site.start(key="ACME")

        def page(q, **args):
            response = http.get(site.url + "/", params={"q": q, **args})
            assert response.status_code == 200
            return response.text

        def ids(q, **args):
            return row_ids(page(q, **args))

        assert ids("customer:ACME") == [made[0]]
        assert ids('customer:"ACME Corp"') == [made[1]]
        assert ids("customer:ACME*") == [made[1], made[0]]
        assert ids("total>=10 total<1000") == [made[2], made[1]]
        assert ids("customer:ACME* total>10") == [made[1]]
        assert ids("total>=10", status="waiting") == []
        assert ids(f"customer:{XSS}") == [made[2]]
        assert ids("ORDER-2") == [made[1]]                              # a business key, any case
        assert ids("acme") == [cargo.id]                                # not a term: a key
        assert ids(made[0][:16].upper()) == [made[0]]                    # the start of a run id
        assert ids(made[0][:14] + "…") == [made[0]]                      # as the pages shorten it
        assert ids(made[0]) == [made[0]]
        html = page("total>=10")
        assert 'data-status="running"><span class="badge running">running</span><span class="n">2</span>' in html
        refused = page("total>=ten")
        assert "is not one" in refused and row_ids(refused) == sorted([*made, cargo.id], reverse=True)
        assert 'value="total&gt;=ten"' in refused
        assert XSS not in page(f"customer:{XSS}") and str(escape(XSS)) in page(f"customer:{XSS}")


def test_runs_page_keyset_pagination(site, http):
    started = sorted((site.start(key=f"K-{i}").id for i in range(53)), reverse=True)  # ids sort by time
    first = http.get(site.url + "/").text
    assert row_ids(first) == started[:50]
    next_link = first.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    second = http.get(site.url + next_link).text
    assert row_ids(second) == started[50:]
    assert 'rel="next"' not in second


def test_run_page_shows_diagram_waiting_for_and_timeline(site, http):
    run = site.start(key="MSCU1")
    site.rt.send(run.id, "depart", {"vessel": "Ever Given"})
    html = http.get(f"{site.url}/runs/{run.id}").text
    assert 'class="node initial visited" data-state="booked"' in html
    assert 'class="node visited current" data-state="in_transit"' in html
    assert 'class="edge taken" data-edge="booked|depart|in_transit"' in html
    assert "track to be picked up by a worker" in html          # the explain answer
    assert 'class="countdown"' in html                          # the 30-day timer
    assert "depart: booked → in_transit" in html
    assert "Ever Given" in html
    assert '<option value="declare_lost">' in html              # accepted now
    assert '<option value="arrive">' in html


def test_run_fragment_sends_only_newer_entries(site, http):
    run = site.start()
    site.rt.send(run.id, "depart")
    response = http.get(f"{site.url}/runs/{run.id}?after=1", headers={"X-Interlock-Fragment": "1"})
    body = response.json()
    assert body["last_seq"] == 2 and body["status"] == "running"  # its step waits for a worker
    assert 'data-seq="2"' in body["rows"] and 'data-seq="1"' not in body["rows"]
    assert 'data-state="in_transit"' in body["diagram"]


def test_workflows_pages_count_runs_per_state(site, http):
    for _ in range(3):
        site.start()
    site.rt.send(site.start().id, "depart")
    overview = http.get(site.url + "/workflows").text
    assert 'data-workflow="cargo"' in overview and 'data-workflow="orders"' in overview
    assert "<title>Booked: 3 runs</title>" in overview
    detail = http.get(site.url + "/workflows/cargo").text
    assert "<code>track</code>" in detail and "<code>timeout</code>" in detail
    assert "after 30 d 0 h → declare_lost" in detail
    assert http.get(site.url + "/workflows/nope").status_code == 404


def test_unknown_run_is_a_404_page(site, http):
    response = http.get(site.url + "/runs/" + "0" * 32)
    assert response.status_code == 404 and "unknown run" in response.text


# -- actions --------------------------------------------------------------------------------

def test_cross_site_post_without_csrf_token_is_refused_and_changes_nothing(site, http):
    run = site.start()
    token = csrf_of(http.get(f"{site.url}/runs/{run.id}").text)
    action = f"{site.url}/runs/{run.id}/events"
    form = {"event": "depart", "confirm": "yes"}

    attacker = requests.Session()  # another site's page: the browser sends no session (SameSite)
    with attacker:
        assert attacker.post(action, data=form, headers={"Origin": "http://evil.example"}).status_code == 403
    assert http.post(action, data=form).status_code == 403                        # no token
    assert http.post(action, data={**form, "csrf_token": "forged"}).status_code == 403
    assert http.post(action, data={**form, "csrf_token": token},                  # token, foreign origin
                     headers={"Origin": "http://evil.example"}).status_code == 403
    assert http.post(f"{site.url}/runs/{run.id}/cancel", data={"confirm": "yes"}).status_code == 403
    after = site.rt.get(run.id)
    assert (after.state, after.status, after.last_seq) == ("booked", "waiting", run.last_seq)

    ok = http.post(action, data={**form, "csrf_token": token}, allow_redirects=False)
    assert ok.status_code == 303
    assert site.rt.get(run.id).state == "in_transit"


def test_actions_ask_for_confirmation_first(site, http):
    run = site.start()
    token = csrf_of(http.get(f"{site.url}/runs/{run.id}").text)
    page = http.post(f"{site.url}/runs/{run.id}/events", data={"csrf_token": token, "event": "depart",
                                                               "data": '{"vessel": "V"}'})
    assert page.status_code == 200 and 'name="confirm" value="yes"' in page.text
    assert site.rt.get(run.id).state == "booked"
    done = http.post(f"{site.url}/runs/{run.id}/events",
                     data={"csrf_token": token, "event": "depart", "data": '{"vessel": "V"}', "confirm": "yes"})
    assert done.status_code == 200 and "Sent depart" in done.text     # after the redirect
    assert site.rt.get(run.id).data["vessel"] == "V"


def test_refused_actions_show_the_api_error_text(site, http):
    run = site.start()
    token = csrf_of(http.get(f"{site.url}/runs/{run.id}").text)
    api = http.post(f"{site.url}/api/runs/{run.id}/events", json={"event": "arrive"}).json()
    page = http.post(f"{site.url}/runs/{run.id}/events",
                     data={"csrf_token": token, "event": "arrive", "confirm": "yes"}).text
    assert str(escape(api["detail"])) in page and "Refused (" in page
    as_json = http.post(f"{site.url}/runs/{run.id}/events", headers={"Accept": "application/json"},
                        data={"csrf_token": token, "event": "arrive", "confirm": "yes"})
    assert as_json.status_code == api["status"] and as_json.json()["detail"] == api["detail"]

    bad_json = http.post(f"{site.url}/runs/{run.id}/events", headers={"Accept": "application/json"},
                         data={"csrf_token": token, "event": "depart", "data": "{nope", "confirm": "yes"})
    assert bad_json.status_code == 400 and "not JSON" in bad_json.json()["detail"]
    not_object = http.post(f"{site.url}/runs/{run.id}/events", headers={"Accept": "application/json"},
                           data={"csrf_token": token, "event": "depart", "data": "[1]", "confirm": "yes"})
    assert not_object.status_code == 422
    with pytest.raises(RunNotActive) as refusal:
        site.rt.retry(run.id)
    retry = http.post(f"{site.url}/runs/{run.id}/retry", data={"csrf_token": token, "confirm": "yes"}).text
    assert f"Refused (409 Run not active): {escape(str(refusal.value))}" in retry
    assert site.rt.get(run.id).last_seq == run.last_seq


def test_cancel_through_the_form(site, http):
    run = site.start()
    token = csrf_of(http.get(f"{site.url}/runs/{run.id}").text)
    http.post(f"{site.url}/runs/{run.id}/cancel", data={"csrf_token": token, "reason": "wrong box", "confirm": "yes"})
    assert site.rt.get(run.id).status == "cancelled"
    assert site.rt.history(run.id)[-1].kind == "cancelled"


# -- signing in ---------------------------------------------------------------------------------

def test_pages_require_signing_in_when_tokens_are_configured(tmp_path, http):
    with serve(tmp_path, tokens="s3cret:rw,viewer:ro") as served:
        run = served.start()
        first = http.get(served.url + "/", allow_redirects=False)
        assert first.status_code == 302 and "/login" in first.headers["Location"]
        assert http.get(served.url + "/live/stream").status_code == 401
        login = http.get(served.url + "/login?next=/workflows").text
        token = csrf_of(login)
        wrong = http.post(served.url + "/login", data={"csrf_token": token, "token": "guess", "next": "/"})
        assert wrong.status_code == 401 and "s3cret" not in http.cookies.get("interlock_session", "")
        signed = http.post(served.url + "/login", data={"csrf_token": token, "token": "s3cret", "next": "//evil"},
                           allow_redirects=False)
        assert signed.status_code == 303 and signed.headers["Location"] == "/"
        cookie = signed.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "s3cret" not in cookie
        page = http.get(f"{served.url}/runs/{run.id}").text
        assert 'id="send-form"' in page
        http.post(served.url + "/logout", data={"csrf_token": csrf_of(page)})
        assert http.get(served.url + "/", allow_redirects=False).status_code == 302

        with requests.Session() as viewer:
            token = csrf_of(viewer.get(served.url + "/login").text)
            viewer.post(served.url + "/login", data={"csrf_token": token, "token": "viewer"})
            page = viewer.get(f"{served.url}/runs/{run.id}").text
            assert "read-only token" in page and 'id="send-form"' not in page
            refused = viewer.post(f"{served.url}/runs/{run.id}/events",
                                  data={"csrf_token": csrf_of(page), "event": "depart", "confirm": "yes"})
            assert refused.status_code == 403
        assert served.rt.get(run.id).state == "booked"


# -- live routes ----------------------------------------------------------------------------------

def test_sse_routes_answer_503_when_turned_off(tmp_path, http):
    with serve(tmp_path, WEB_SSE=False) as served:
        run = served.start()
        assert http.get(served.url + "/live/stream").status_code == 503
        assert http.get(f"{served.url}/live/runs/{run.id}/stream").status_code == 503
        poll = http.get(f"{served.url}/live/runs/{run.id}/history?after=0")
        assert poll.status_code == 200 and poll.json()["last_seq"] == 1


def test_run_stream_through_the_page_route(site, http):
    run = site.start()
    with http.get(f"{site.url}/live/runs/{run.id}/stream", stream=True, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = response.iter_lines(decode_unicode=True)
        assert wait_until(lambda: next(lines) == "id: 1", message="the first event")


def test_changes_long_poll_wakes_on_a_new_run(site, http):
    first = http.get(site.url + "/live/changes", params={"since": time.time() + 1, "wait": 0}).json()
    assert first["changed"] is False
    answer = {}

    def poll():
        with requests.Session() as session:
            answer.update(session.get(site.url + "/live/changes",
                                      params={"since": first["cursor"], "wait": 20}, timeout=30).json())

    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_until(lambda: site.rt.notifier.watching() >= 1, message="the long poll to wait")
    started = time.monotonic()
    site.start()
    waiter.join(25)
    assert answer["changed"] is True and time.monotonic() - started < 5


@pytest.mark.parametrize("wait", ["nan", "inf", "-inf", "1e400", "-1", "soon", ""])
def test_changes_long_poll_refuses_a_wait_that_is_not_a_finite_number_of_seconds(site, http, wait):
    # Before: nan held the server thread for good (the request outlived any timeout).
    response = http.get(site.url + "/live/changes", params={"since": time.time() + 1, "wait": wait}, timeout=5)
    assert response.status_code == 422 and response.headers["Content-Type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == "urn:interlock:problem:validation-error" and body["field"] == "wait"
    assert site.rt.notifier.watching() == 0


def test_changes_long_poll_takes_a_huge_wait_and_counts_as_an_open_long_poll(site, http):
    def long_polls():
        text = http.get(site.url + "/metrics", timeout=5).text
        return sum(float(sample.value) for family in text_string_to_metric_families(text)
                   for sample in family.samples
                   if sample.name == "interlock_open_streams" and sample.labels == {"kind": "long_poll"})

    cursor = http.get(site.url + "/live/changes", params={"wait": 0}).json()["cursor"]
    before = long_polls()
    answer = {}

    def poll():
        with requests.Session() as session:
            answer.update(session.get(site.url + "/live/changes",
                                      params={"since": cursor, "wait": "1e308"}, timeout=30).json())

    waiter = threading.Thread(target=poll)
    waiter.start()
    wait_until(lambda: site.rt.notifier.watching() >= 1, message="the long poll to wait")
    assert long_polls() == before + 1
    site.start()
    waiter.join(25)
    assert answer["changed"] is True
    wait_until(lambda: long_polls() == before, message="the long poll to be uncounted")


# -- the diagram -----------------------------------------------------------------------------------

def test_diagram_marks_current_visited_and_counts(site):
    cls = site.rt.registry.get("orders")
    svg = str(diagram.render(cls, current={"review"}, visited={"placed", "payment", "review"},
                             taken={"placed|reserved|payment"}, counts={"payment": 1234}))
    assert svg.startswith("<svg") and svg.count('class="node') == len(cls.states_map)
    assert 'class="node visited current" data-state="review"' in svg
    assert 'class="edge back" data-edge="review|approve|payment"' in svg    # drawn pointing back up
    assert "1,234" in svg


def test_the_run_page_pauses_and_resumes_a_run(site, http):
    run = site.start()
    token = csrf_of(http.get(f"{site.url}/runs/{run.id}").text)
    paused = http.post(f"{site.url}/runs/{run.id}/pause", data={"csrf_token": token, "reason": "audit", "confirm": "yes"})
    assert paused.status_code == 200 and "Paused the run" in paused.text      # after the redirect
    assert 'id="run-paused"' in paused.text and f'action="/runs/{run.id}/resume"' in paused.text
    assert site.rt.get(run.id).paused_at is not None
    listed = http.get(f"{site.url}/").text
    assert '<span class="badge paused">paused</span>' in listed
    resumed = http.post(f"{site.url}/runs/{run.id}/resume", data={"csrf_token": token, "confirm": "yes"})
    assert "Resumed: the run is" in resumed.text and 'id="run-paused"' not in resumed.text
    assert site.rt.get(run.id).paused_at is None


def test_workflow_descriptions_show_docstring_markup_rendered_not_raw(site, http):
    from api.web import rst_inline

    page = http.get(f"{site.url}/workflows/orders").text
    assert "<code>cancelled</code>" in page and "``" not in page
    assert "``" not in http.get(f"{site.url}/workflows").text
    assert str(rst_inline("ends ``cancelled`` via :class:`Foo` and `bar`, **not** *here* <b>")) == \
        "ends <code>cancelled</code> via Foo and bar, <strong>not</strong> <em>here</em> &lt;b&gt;"


def test_history_entries_show_what_they_changed_in_the_data_also_in_live_fragments(site, http):
    run = site.start(key="DIFF-1")
    site.rt.update_data(run.id, {"port": "Rotterdam", "note": "x"})
    site.rt.update_data(run.id, {"port": "Hamburg", "note": "x"})
    page = http.get(f"{site.url}/runs/{run.id}").text
    assert page.count('<ul class="diff"') == 2
    assert "<code>port</code> <span class=\"sr-only\">added:</span> <code>&#34;Rotterdam&#34;</code>" in page
    assert "<del><code>&#34;Rotterdam&#34;</code></del> → <ins><code>&#34;Hamburg&#34;</code></ins>" in page
    last = site.rt.get(run.id).last_seq
    fragment = http.get(f"{site.url}/runs/{run.id}?after={last - 1}", headers={"X-Interlock-Fragment": "1"}).json()
    assert "<del><code>&#34;Rotterdam&#34;</code></del>" in fragment["rows"]   # the data before, read back
    assert "<code>note</code>" not in fragment["rows"]                        # unchanged keys left out
    assert 'class="lane k-state"' in fragment["gantt"]


def test_blocked_by_guards_lists_no_nameless_events_for_a_parallel_run(tmp_path, http):
    with serve(tmp_path, workflows="workflows,tests.parallel_workflows") as served:
        from engine.explain import explain

        run = served.rt.start("test_parallel", {})
        assert "" in [b["event"] for b in explain(served.rt, run.id)["blocked_events"]]  # what explain reads
        page = http.get(f"{served.url}/runs/{run.id}").text
        assert "<code></code>" not in page
