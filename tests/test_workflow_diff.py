"""The static diff of two workflow versions (engine/workflow_diff.py): the delivery example with and
without its rename, each kind of declaration changed once (tests/diff_workflows.py), identical
versions, mappings refused, and the same diff through `interlock diff`, the API and the diff page."""

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from api import create_app
from api.web import diagram, versions
from engine.config import Settings
from engine.db import Database
from engine.errors import InvalidMapping
from engine.registry import Registry
from engine.runtime import Interlock
from engine.workflow_diff import diff, parse_renames, render_text
from tests.test_web_diagrams import collisions

ROOT = Path(__file__).resolve().parent.parent
MODULES = "workflows,tests.diff_workflows"
REGISTRY = Registry().load_modules(MODULES.split(","))
DAYS = timedelta(days=1).total_seconds()


def pair(name):
    return REGISTRY.get(name, 1), REGISTRY.get(name, 2)


def triples(transitions):
    return {(t["source"], t["event"], t["target"]) for t in transitions}


# -- the delivery example -----------------------------------------------------------------------

def test_delivery_without_the_rename_loses_shipped_and_gains_in_transit():
    d = diff(*pair("delivery"))
    assert (d["workflow"], d["from"], d["to"], d["renames"], d["identical"]) == ("delivery", 1, 2, {}, False)
    assert d["states"] == {"added": ["in_transit"], "removed": ["labelling", "shipped"], "renamed": [], "changed": []}
    assert d["events"] == {"added": [], "removed": ["labelled"]}
    # Every transition touching shipped is gone, and comes back from in_transit.
    assert triples(d["transitions"]["removed"]) == {("packing", "packed", "labelling"),
                                                    ("labelling", "labelled", "shipped"),
                                                    ("shipped", "deliver", "delivered"), ("shipped", "give_up", "returned")}
    assert triples(d["transitions"]["added"]) == {("packing", "packed", "in_transit"),
                                                  ("in_transit", "deliver", "delivered"),
                                                  ("in_transit", "give_up", "returned")}
    [timer] = d["timers"]["changed"]
    assert timer["name"] == "patience"
    assert timer["changes"] == {"state": ["shipped", "in_transit"], "after": [3 * DAYS, 5 * DAYS]}


def test_delivery_with_the_rename_compares_shipped_with_in_transit():
    d = diff(*pair("delivery"), {"shipped": "in_transit"})
    assert d["renames"] == {"shipped": "in_transit"}
    assert d["states"] == {"added": [], "removed": ["labelling"], "renamed": [{"from": "shipped", "to": "in_transit"}],
                           "changed": []}
    # deliver and give_up leave the same state now: not differences. Removed ones keep v1's ids.
    assert triples(d["transitions"]["removed"]) == {("packing", "packed", "labelling"),
                                                    ("labelling", "labelled", "shipped")}
    assert triples(d["transitions"]["added"]) == {("packing", "packed", "in_transit")}
    assert [s["name"] for s in d["steps"]["removed"]] == ["print_label"]
    assert d["steps"]["changed"] == [{"name": "pack", "state": "packing", "old_state": "packing",
                                      "changes": {"retries": [3, 5]}}]
    assert d["timers"]["changed"] == [{"name": "patience", "state": "in_transit", "old_state": "shipped",
                                       "changes": {"after": [3 * DAYS, 5 * DAYS]}}]
    text = render_text(d).splitlines()
    assert text[0] == "delivery v1 → v2 (mapping shipped → in_transit)"
    for line in ("- state labelling", "= state shipped renamed in_transit", "- event labelled",
                 "+ transition packing → in_transit on packed", "- step print_label (labelling)",
                 "~ step pack (packing): retries 3 → 5",
                 "~ timer patience (shipped → in_transit): after 3 days → 5 days"):
        assert line in text
    assert not [line for line in text[1:] if "deliver" in line or "give_up" in line]


def test_the_way_back_is_the_mirror_image():
    v1, v2 = pair("delivery")
    there, back = diff(v1, v2, {"shipped": "in_transit"}), diff(v2, v1, {"in_transit": "shipped"})
    assert back["states"]["added"] == there["states"]["removed"] == ["labelling"]
    assert [s["name"] for s in back["steps"]["added"]] == ["print_label"]
    assert back["steps"]["changed"][0]["changes"] == {"retries": [5, 3]}
    assert triples(back["transitions"]["added"]) == triples(there["transitions"]["removed"])


# -- each kind of change -----------------------------------------------------------------------

def test_states_events_transitions_and_guards():
    d = diff(*pair("diff_kinds"))
    assert d["states"]["changed"] == [{"id": "lost", "old_id": "lost", "changes": {"status": ["failed", "cancelled"]}}]
    assert d["events"] == {"added": ["reply"], "removed": ["answer"]}
    assert triples(d["transitions"]["removed"]) == {("waiting", "answer", "review")}
    assert triples(d["transitions"]["added"]) == {("waiting", "reply", "review")}
    [guarded] = d["transitions"]["changed"]
    assert (guarded["source"], guarded["event"], guarded["target"]) == ("review", "approve", "approved")
    assert guarded["changes"] == {"guards": [["small"], ["small", "signed"]]}
    assert "~ transition review → approved on approve: guards small → small and signed" in render_text(d)


def test_steps_activities_timers_and_triggers():
    d = diff(*pair("diff_kinds"))
    assert d["steps"]["changed"][0]["changes"] == {"retries": [3, 5], "backoff": [1.0, 2.0],
                                                   "on_error": ["escalate", "drop"]}
    assert d["activities"]["changed"] == [{"name": "diff.answer", "state": "waiting", "old_state": "waiting",
                                           "changes": {"retries": [3, 1], "visibility_timeout": [30.0, 60.0]}}]
    assert [t["name"] for t in d["timers"]["removed"]] == ["deadline"]
    assert d["timers"]["removed"][0]["at_field"] == "due"
    assert [(t["name"], t["after"], t["send"]) for t in d["timers"]["added"]] == [("nudge", 600.0, "reply")]
    assert d["timers"]["changed"][0]["changes"] == {"after": [3600.0, 7200.0]}
    assert d["triggers"]["changed"] == [{"name": "big_order", "changes": {"states": [["review"], ["review", "waiting"]]}}]
    text = render_text(d)
    assert "~ activity diff.answer (waiting): retries 3 → 1, visibility_timeout 30 s → 1 min" in text
    assert "- timer deadline (review): at data.due → escalate" in text


def test_child_runs_and_maps():
    d = diff(*pair("diff_parent"))
    assert d["children"]["changed"] == [{"name": "ship", "state": "shipping", "old_state": "shipping",
                                         "changes": {"version": [1, None], "parent_close": ["cancel", "abandon"]}}]
    assert d["maps"]["changed"] == [{"name": "parcels", "state": "fanning", "old_state": "fanning",
                                     "changes": {"max_concurrency": [2, 4], "tolerated_failures": [0, 1]}}]
    assert all(not d[s][k] for s in ("states", "transitions", "steps", "timers") for k in d[s])


def test_a_state_moved_into_a_new_compound_state():
    d = diff(*pair("diff_nested"))
    assert d["states"]["added"] == ["work", "checked"]
    assert d["states"]["changed"] == [{"id": "check", "old_id": "check",
                                       "changes": {"initial": [False, True], "parent": [None, "work"]}}]
    assert ("begin", "go", "work") in triples(d["transitions"]["added"])


def test_a_renamed_parent_is_not_a_change_of_its_children():
    from engine import State, Workflow

    class Before(Workflow):
        name, version = "diff_local", 1
        begin = State(initial=True)

        class work(State.Compound):
            check = State(initial=True)
            checked = State(final=True)
            confirm = check.to(checked)

        end = State(final=True)
        go = begin.to(work)
        done_state_work = work.to(end)

    class After(Workflow):
        name, version = "diff_local", 2
        begin = State(initial=True)

        class job(State.Compound):
            check = State(initial=True)
            checked = State(final=True)
            confirm = check.to(checked)

        end = State(final=True)
        go = begin.to(job)
        done_state_job = job.to(end)

    renamed = diff(Before, After, {"work": "job"})
    assert renamed["states"]["changed"] == [] and renamed["states"]["renamed"] == [{"from": "work", "to": "job"}]
    assert triples(renamed["transitions"]["added"]) == {("job", "done_state_job done.state.job", "end")}
    plain = diff(Before, After)
    assert {s["id"]: s["changes"] for s in plain["states"]["changed"]} == {
        "check": {"parent": ["work", "job"]}, "checked": {"parent": ["work", "job"]}}


def test_a_triggers_states_are_compared_in_any_order_and_after_renaming():
    from engine import State, Workflow, trigger

    class Before(Workflow):
        name, version = "diff_local", 1
        a, b = State(initial=True), State()
        c = State(final=True)
        go = a.to(b)
        stop = b.to(c)
        watch = trigger("total", send="stop", states=[a, b])

    class After(Workflow):
        name, version = "diff_local", 2
        a, bee = State(initial=True), State()
        c = State(final=True)
        go = a.to(bee)
        stop = bee.to(c)
        watch = trigger("total", send="stop", states=[bee, a])

    assert diff(Before, After, {"b": "bee"})["triggers"]["changed"] == []
    assert diff(Before, After, {"b": "bee"})["identical"] is False  # the rename itself
    [changed] = diff(Before, After)["triggers"]["changed"]
    assert changed["changes"] == {"states": [["a", "b"], ["bee", "a"]]}


def test_identical_versions():
    d = diff(*pair("diff_same"))
    assert d["identical"] is True
    assert render_text(d).splitlines() == ["diff_same v1 → v2", "no differences"]
    v1, _ = pair("delivery")
    assert diff(v1, v1)["identical"] is True


# -- mappings refused --------------------------------------------------------------------------

@pytest.mark.parametrize("renames, says", [
    ({"ship": "in_transit"}, "delivery v1 has no state 'ship'"),
    ({"shipped": "moving"}, "delivery v2 has no state 'moving'"),
    ({"shipped": "in_transit", "labelling": "in_transit"}, "would both be 'in_transit'"),
    ({"labelling": "packing"}, "'packing' is a state of delivery v1 too"),
])
def test_a_mapping_the_versions_cannot_take_is_refused(renames, says):
    with pytest.raises(InvalidMapping) as raised:
        diff(*pair("delivery"), renames)
    assert says in str(raised.value)
    assert raised.value.status == 422 and raised.value.field == "map"


def test_mappings_are_parsed_strictly():
    assert parse_renames(["shipped=in_transit", " a = b "]) == {"shipped": "in_transit", "a": "b"}
    assert parse_renames(["shipped:in_transit"], ":") == {"shipped": "in_transit"}
    for bad in (["shipped"], ["=x"], ["x="], ["a=b=c"]):
        with pytest.raises(InvalidMapping):
            parse_renames(bad)
    with pytest.raises(InvalidMapping, match="mapped twice"):
        parse_renames(["a=b", "a=c"])


# -- the command ----------------------------------------------------------------------------------

def interlock(*args):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}, "INTERLOCK_WORKFLOWS": MODULES}
    return subprocess.run([sys.executable, "-m", "engine.cli", "diff", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_the_command_prints_the_diff_and_refuses_bad_input_in_one_line():
    shown = interlock("delivery", "1", "2", "--map", "shipped=in_transit")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == render_text(diff(*pair("delivery"), {"shipped": "in_transit"}))
    as_json = interlock("delivery", "1", "2", "--map", "shipped=in_transit", "--json")
    assert json.loads(as_json.stdout) == diff(*pair("delivery"), {"shipped": "in_transit"})
    for args, says in ((("delivery", "1", "3"), "unknown workflow 'delivery v3'"),
                       (("parcels", "1", "2"), "unknown workflow 'parcels v1'"),
                       (("delivery", "1", "2", "--map", "shipped=moving"), "delivery v2 has no state 'moving'"),
                       (("delivery", "1", "2", "--map", "shipped"), "is not a mapping old=new")):
        refused = interlock(*args)
        assert refused.returncode == 2, (args, refused.stdout, refused.stderr)
        assert refused.stdout == "" and refused.stderr.count("\n") == 1 and says in refused.stderr


# -- the API and the page ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('diff') / 'diff.db'}"
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, workflows=MODULES))
    yield create_app({"SECRET_KEY": "diff"}, interlock=rt).test_client()
    rt.close()


def test_the_api_answers_the_diff_and_problems(client):
    ok = client.get("/api/workflows/delivery/diff?from=1&to=2&map=shipped:in_transit")
    assert ok.status_code == 200
    assert ok.json == diff(*pair("delivery"), {"shipped": "in_transit"})
    assert client.get("/api/workflows/diff_same/diff?from=1&to=2").json["identical"] is True
    two = client.get("/api/workflows/delivery/diff?from=1&to=2&map=shipped:in_transit&map=labelling:delivered")
    assert two.status_code == 422 and "'delivered' is a state of delivery v1 too" in two.json["detail"]
    for path, status, kind in (("/api/workflows/delivery/diff?from=1&to=7", 404, "workflow-not-found"),
                               ("/api/workflows/parcels/diff?from=1&to=2", 404, "workflow-not-found"),
                               ("/api/workflows/delivery/diff?from=1&to=2&map=ship:in_transit", 422, "invalid-mapping"),
                               ("/api/workflows/delivery/diff?from=1&to=2&map=shipped", 422, "validation-error"),
                               ("/api/workflows/delivery/diff?to=2", 422, "validation-error")):
        refused = client.get(path)
        assert refused.status_code == status, (path, refused.json)
        assert refused.mimetype == "application/problem+json"
        assert refused.json["type"] == f"urn:interlock:problem:{kind}"


def test_the_document_describes_the_route():
    from api.openapi import API

    [op] = [op for op in API.operations if op.path == "/api/workflows/{name}/diff"]
    assert op.method == "get" and not op.write
    assert set(op.query.model_json_schema()["properties"]) == {"from", "to", "map"}


def test_the_marks_of_both_diagrams():
    old, new = versions.marks(diff(*pair("delivery"), {"shipped": "in_transit"}))
    assert old["states"] == {"labelling": "removed", "packing": "changed", "shipped": "renamed"}
    assert new["states"] == {"packing": "changed", "in_transit": "renamed"}
    assert old["edges"] == {"packing|packed|labelling": "removed", "labelling|labelled|shipped": "removed"}
    assert new["edges"] == {"packing|packed|in_transit": "added"}
    old, new = versions.marks(diff(*pair("diff_kinds")))
    # The activity, timers and trigger's states changed; lost's final status did.
    assert set(new["states"]) == {"review", "waiting", "lost"} and set(new["states"].values()) == {"changed"}
    assert old["edges"]["review|approve|approved"] == new["edges"]["review|approve|approved"] == "changed"


def test_marked_diagrams_keep_their_labels_clear_and_say_the_mark_in_text():
    v1, v2 = pair("delivery")
    old, new = versions.marks(diff(v1, v2, {"shipped": "in_transit"}))
    svg = str(diagram.render(v1, marks=old, label="v1"))
    assert collisions(svg) == []
    assert 'class="node mark-removed" data-state="labelling"' in svg
    assert "<title>Labelling (removed)</title>" in svg
    assert "\u2212 labelled</text>" in svg  # the sign in the label, not colour alone
    svg = str(diagram.render(v2, marks=new, label="v2"))
    assert collisions(svg) == [] and "+ packed</text>" in svg and 'class="edge mark-added"' in svg
    plain = str(diagram.render(v2, label="v2"))
    assert "mark-" not in plain and "+ packed" not in plain  # the unmarked layout is another one


def test_the_diff_page_lists_the_changes_and_marks_both_diagrams(client):
    page = client.get("/workflows/delivery/diff?from=1&to=2&map=shipped:in_transit")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "state shipped renamed in_transit" in html and "step pack (packing): retries 3 → 5" in html
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="diagram"') == 2
    assert 'data-state="labelling"' in html and 'class="node mark-renamed" data-state="in_transit"' in html
    assert 'id="diff-legend"' in html
    plain = client.get("/workflows/delivery/diff").get_data(as_text=True)  # the newest two, no mapping
    assert "+ state in_transit" not in plain and "state in_transit" in plain and "mark-renamed" not in plain


def test_the_diff_page_says_what_is_wrong_and_keeps_what_was_typed(client):
    page = client.get("/workflows/delivery/diff?from=1&to=2&map=ship:in_transit")
    html = page.get_data(as_text=True)
    assert page.status_code == 422
    assert "delivery v1 has no state &#39;ship&#39;" in html and 'value="ship:in_transit"' in html
    assert "<svg" not in html
    assert client.get("/workflows/delivery/diff?from=1&to=9").status_code == 422
    assert client.get("/workflows/parcels/diff").status_code == 404


def test_the_compare_form_is_on_the_page_of_a_workflow_with_several_versions(client):
    assert 'action="/workflows/delivery/diff"' in client.get("/workflows/delivery").get_data(as_text=True)
    assert "Compare versions" not in client.get("/workflows/diff_leaf").get_data(as_text=True)
