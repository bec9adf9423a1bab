"""Seeing the tree of runs: a run's children over the API (newest first, filtered, keyset-paged) and
the Python API, the parent and children in `interlock show`, what explain says of a parent waiting
for its child, and the run page's parent link, children table and timeline links."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from engine import State, Workflow, child
from engine.config import Settings
from engine.db import Database
from engine.registry import Registry
from engine.runtime import Interlock
from tests.apitools import PROBLEM, app_for
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.child_workflows"
ROOT = Path(__file__).resolve().parent.parent


class Dispatching(Workflow):
    """Each entry of `sending` starts a letter that goes on alone when the parent sends another;
    `closing` starts an invoice (whose step no worker runs here)."""

    name, version = "test_dispatching", 1

    sending = State(initial=True)
    closing = State()
    closed = State(final=True)

    again = sending.to(sending)
    close = sending.to(closing)
    finish = closing.to(closed)

    letter = child(sending, workflow="test_paperwork", parent_close="abandon")
    receipt = child(closing, workflow="test_invoice", data={"order": "D-1"}, on_done="finish")


class Careless(Workflow):
    """A parent with no on_error: when its invoice fails it waits for a person."""

    name, version = "test_careless", 1

    invoicing = State(initial=True)
    shipped = State(final=True)
    invoiced = invoicing.to(shipped)

    invoice = child(invoicing, workflow="test_invoice", data={"order": "C-1", "fail": True}, on_done="invoiced")


def runtime(settings) -> Interlock:
    registry = Registry().load_modules(WORKFLOWS.split(","))
    registry.add(Dispatching)
    registry.add(Careless)
    return Interlock(settings.replace(workflows=WORKFLOWS), registry=registry)


@pytest.fixture
def rt(settings):
    engine = runtime(settings)
    yield engine
    engine.close()


@pytest.fixture
def local_rt(sqlite_settings):
    engine = runtime(sqlite_settings)
    yield engine
    engine.close()


def client_of(engine):
    return app_for(engine).test_client()


def started_children(engine, parent_id) -> list[str]:
    return [e.detail["child"] for e in engine.history(parent_id) if e.kind == "child_started"]


def newest_first(run_ids) -> list[str]:
    return sorted(run_ids, reverse=True)  # ids sort by creation time


def dispatched(engine, letters=5):
    """A parent with ``letters`` letters (the first two signed) and, in `closing`, an invoice."""
    parent = engine.start("test_dispatching")
    for _ in range(letters - 1):
        engine.send(parent.id, "again")
    engine.send(parent.id, "close")
    kids = started_children(engine, parent.id)
    for letter in kids[:2]:
        engine.send(letter, "sign")
    return parent, kids


# -- the API -------------------------------------------------------------------------------------

def test_children_are_listed_newest_first_across_pages_and_filtered(rt):
    parent, kids = dispatched(rt)
    api = client_of(rt)
    seen, cursor, pages = [], None, 0
    while True:
        response = api.get(f"/api/runs/{parent.id}/children", query_string={"limit": 2, **(
            {"cursor": cursor} if cursor else {})})
        assert response.status_code == 200, response.text
        page = response.get_json()
        assert len(page["runs"]) <= 2
        seen += page["runs"]
        pages += 1
        cursor = page["next"]
        if cursor is None:
            break
    assert pages == 3
    assert [r["id"] for r in seen] == newest_first(kids)
    assert {(r["parent_id"], r["parent_state"]) for r in seen} == {(parent.id, "sending"), (parent.id, "closing")}

    def ids(**filters):
        response = api.get(f"/api/runs/{parent.id}/children", query_string=filters)
        assert response.status_code == 200, response.text
        return [r["id"] for r in response.get_json()["runs"]]

    letters, invoice = kids[:-1], kids[-1]
    assert ids(state="sending") == newest_first(letters)
    assert ids(state="closing") == [invoice]
    assert ids(workflow="test_invoice") == [invoice]
    assert ids(status="succeeded") == newest_first(letters[:2])
    assert ids(status="waiting", state="sending") == newest_first(letters[2:])
    assert ids(state="closed") == [] and ids(workflow="test_counter") == []
    # The Python API answers the same.
    assert [r.id for r in rt.children(parent.id, status="waiting", workflow="test_paperwork").runs] == \
        newest_first(letters[2:])


def test_children_of_an_unknown_run_or_with_a_bad_page_are_problems(rt):
    parent = rt.start("test_dispatching")
    api = client_of(rt)
    missing = api.get(f"/api/runs/{'0' * 32}/children")
    assert missing.status_code == 404 and missing.content_type == PROBLEM
    assert missing.get_json()["type"] == "urn:interlock:problem:run-not-found"
    for query in ({"limit": 501}, {"limit": 0}, {"cursor": "not-a-cursor"}, {"status": "sleeping"}):
        response = api.get(f"/api/runs/{parent.id}/children", query_string=query)
        assert response.status_code == 422 and response.content_type == PROBLEM, query
    assert api.get(f"/api/runs/{parent.id}/children", query_string={"limit": 500}).status_code == 200


def test_a_child_run_names_its_parent_and_the_document_describes_it(local_rt):
    parent = local_rt.start("test_ordering", {"order": "A-1"})
    [kid] = started_children(local_rt, parent.id)
    api = client_of(local_rt)
    resource = api.get(f"/api/runs/{kid}").get_json()
    assert (resource["parent_id"], resource["parent_state"]) == (parent.id, "invoicing")
    top = api.get(f"/api/runs/{parent.id}").get_json()
    assert (top["parent_id"], top["parent_state"]) == (None, None)

    document = api.get("/api/openapi.json").get_json()
    operation = document["paths"]["/api/runs/{run_id}/children"]["get"]
    params = {p["name"]: p for p in operation["parameters"]}
    assert set(params) == {"run_id", "status", "workflow", "state", "cursor", "limit"}
    assert params["limit"]["schema"]["maximum"] == 500
    assert "parent's state" in json.dumps(params["state"])
    assert {"200", "404", "422"} <= set(operation["responses"])
    run_out = document["components"]["schemas"]["RunOut"]["properties"]
    assert run_out["parent_id"]["description"] and run_out["parent_state"]["description"]
    assert "children" in document["components"]["schemas"]["Explanation"]["required"]


# -- explain ------------------------------------------------------------------------------------

def test_a_parent_explains_it_waits_for_its_running_child(rt):
    parent = rt.start("test_ordering", {"order": "A-1"})
    [kid] = started_children(rt, parent.id)
    why = client_of(rt).get(f"/api/runs/{parent.id}/explain").get_json()
    assert f"child run {kid} (test_invoice v1, running in issuing)" in why["waiting_for"]
    assert why["children"] == [{"id": kid, "workflow": "test_invoice", "version": 1, "status": "running",
                                "state": "issuing", "parent_state": "invoicing"}]
    with rt.worker(2):
        wait_until(lambda: rt.get(parent.id).state == "shipping", message="the invoice to reach the parent")
    why = client_of(rt).get(f"/api/runs/{parent.id}/explain").get_json()
    assert why["children"] == [] and "child run" not in why["waiting_for"]


def test_a_failed_child_the_parent_has_no_on_error_for_asks_for_a_person(rt):
    parent = rt.start("test_careless")
    [kid] = started_children(rt, parent.id)
    with rt.worker(2):
        wait_until(lambda: "child_ended" in [e.kind for e in rt.history(parent.id)],
                   message="the failed invoice to reach the parent")
    assert rt.get(kid).status == "failed" and rt.get(parent.id).status == "waiting"
    why = client_of(rt).get(f"/api/runs/{parent.id}/explain").get_json()
    assert f"child run {kid} failed; retry it, or send the parent an event" in why["waiting_for"]
    assert [(c["id"], c["status"]) for c in why["children"]] == [(kid, "failed")]


# -- interlock show -----------------------------------------------------------------------------

def interlock_show(settings, *args) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env.update(INTERLOCK_DATABASE_URL=settings.database_url, INTERLOCK_WORKFLOWS=WORKFLOWS)
    result = subprocess.run([str(ROOT / ".venv" / "bin" / "interlock"), "show", *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def test_show_lists_the_parent_and_the_children(local_rt, sqlite_settings):
    parent = local_rt.start("test_ordering", {"order": "A-1"})
    [kid] = started_children(local_rt, parent.id)

    shown = interlock_show(sqlite_settings, parent.id)
    assert "children (1, newest first):" in shown and "\nparent " not in shown
    [row] = [line for line in shown.splitlines() if line.startswith(f"  {kid}")]
    assert re.fullmatch(rf"  {kid}  test_invoice v1 +issuing +running +\d+\.\ds  from invoicing", row), row
    assert f"child_started   invoice: run {kid} of test_invoice v1" in shown

    shown = interlock_show(sqlite_settings, kid)
    assert f"parent {parent.id}  test_ordering v1  waiting  state=invoicing  (started this run in invoicing)" \
        in shown
    assert "children (" not in shown

    as_json = json.loads(interlock_show(sqlite_settings, parent.id, "--json"))
    assert as_json["parent"] is None
    assert [(c["id"], c["workflow"], c["state"], c["status"]) for c in as_json["children"]] == \
        [(kid, "test_invoice", "issuing", "running")]
    assert as_json["children"][0]["duration_seconds"] >= 0
    as_json = json.loads(interlock_show(sqlite_settings, kid, "--json"))
    assert as_json["parent"]["id"] == parent.id and as_json["children"] == []


# -- the run page ---------------------------------------------------------------------------------

def children_rows(html: str) -> list[str]:
    body = re.search(r'<tbody id="children-rows">(.*?)</tbody>', html, re.S)
    return re.findall(r'<tr data-run-id="([0-9a-f]{32})"', body.group(1)) if body else []


def test_the_run_page_links_parent_and_children_and_keeps_them_live(local_rt):
    parent = local_rt.start("test_impatient")
    [kid] = started_children(local_rt, parent.id)
    web = client_of(local_rt)

    page = web.get(f"/runs/{parent.id}").get_data(as_text=True)
    assert children_rows(page) == [kid]
    row = page[page.index(f'<tr data-run-id="{kid}"'):]
    row = row[:row.index("</tr>")]
    assert f'href="/runs/{kid}"' in row and "test_paperwork" in row and ">waiting<" in row
    assert 'data-children-live="1"' in page
    timeline = page[page.index('id="timeline"'):]
    assert f'href="/runs/{kid}"' in timeline  # the child_started entry links the child
    assert 'id="run-parent"' not in page

    child_page = web.get(f"/runs/{kid}").get_data(as_text=True)
    parent_link = re.search(r'<dd id="run-parent">(.*?)</dd>', child_page, re.S).group(1)
    assert f'href="/runs/{parent.id}"' in parent_link and "test_impatient v1" in parent_link
    assert 'id="h-children"' not in child_page  # no children: no table

    # The page's watch on its children wakes when one changes, and its refresh shows the change.
    cursor = web.get("/live/changes", query_string={"parent": parent.id}).get_json()["cursor"]
    assert web.get("/live/changes", query_string={"parent": parent.id, "since": cursor}).get_json()["changed"] \
        is False
    local_rt.send(kid, "sign")
    assert web.get("/live/changes", query_string={"parent": parent.id, "since": cursor}).get_json()["changed"]
    fragment = web.get(f"/runs/{parent.id}", headers={"X-Interlock-Fragment": "1"}).get_json()
    assert children_rows(fragment["children"]) == [kid] and ">succeeded<" in fragment["children"]
    assert fragment["children_live"] is False
    ended = fragment["rows"][fragment["rows"].index('class="k-child_ended'):]
    assert f'href="/runs/{kid}"' in ended[:ended.index("</li>")]  # so does its end


def test_many_children_are_paged_on_the_run_page_without_javascript(local_rt):
    parent, kids = dispatched(local_rt, letters=52)
    web = client_of(local_rt)
    first = web.get(f"/runs/{parent.id}").get_data(as_text=True)
    assert children_rows(first) == newest_first(kids)[:50]
    assert "53 in all: 1 running, 50 waiting, 2 succeeded." in first
    older = re.search(r'href="([^"]+)#h-children" rel="next"', first).group(1).replace("&amp;", "&")
    second = web.get(older).get_data(as_text=True)
    assert children_rows(second) == newest_first(kids)[50:]
    assert 'rel="next"' not in second and "« Newest" in second
