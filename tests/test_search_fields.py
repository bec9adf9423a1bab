"""Search fields: the rows of ``run_search`` equal what a workflow's ``search`` extracts from each
run's stored data after every kind of change, and runs are filtered by them through the Python API,
GET /api/runs and the runs page, on SQLite, PostgreSQL and MariaDB."""

from datetime import datetime

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from sqlalchemy import select

from engine import DefinitionError, State, Workflow
from engine import search
from engine.cli import cli
from engine.config import Settings
from engine.db import Database
from engine.errors import InvalidSearch
from engine.models import run_search, runs

from .apitools import app_for
from .conftest import TEST_WORKFLOWS, _runtime, require_server, wait_until
from .test_migrations import fresh_database

WORKFLOWS = TEST_WORKFLOWS + ",tests.search_workflows"


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def rt(request, tmp_path):
    if request.param == "mariadb":
        require_server("MariaDB", "127.0.0.1", 3306)
        with fresh_database("mariadb", tmp_path) as url:
            Database(url).upgrade()
            yield from _runtime(Settings(database_url=url, workflows=WORKFLOWS, poll_interval=0.05))
        return
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    yield from _runtime(settings.replace(workflows=WORKFLOWS))


def stored(rt, run_id) -> dict:
    """The run's rows of run_search, as ``search.values`` gives them."""
    with rt.db.read() as conn:
        rows = conn.execute(select(run_search).where(run_search.c.run_id == run_id)).mappings().all()
    return {r["field"]: (r["text_value"], r["num_value"]) for r in rows}


def expected(rt, run_id) -> dict:
    """What the workflow's declaration extracts from the run's stored data."""
    with rt.db.read() as conn:
        row = conn.execute(select(runs.c.workflow, runs.c.version, runs.c.data).where(runs.c.id == run_id)).one()
    return search.values(rt.registry.get(row.workflow, row.version)._search, row.data)


def in_sync(rt, run_id) -> dict:
    found = stored(rt, run_id)
    assert found == expected(rt, run_id)
    return found


def has_state(rt, run_id, state, status=None):
    return lambda: (run := rt.get(run_id)).state == state and (status is None or run.status == status)


# -- the table follows the data ------------------------------------------------------------------

def test_indexed_values_equal_the_data_after_every_kind_of_change(rt, tmp_path):
    flag = tmp_path / "declined"
    flag.write_text("")
    run = rt.start("test_search_order", {"customer": "acme", "base": 10, "flag": str(flag)})
    assert in_sync(rt, run.id) == {"customer": ("acme", None)}                  # the start
    with rt.worker(2):
        wait_until(has_state(rt, run.id, "reviewing"), message="the price step")
        assert in_sync(rt, run.id) == {"customer": ("acme", None), "total": (None, 15.0),
                                       "items": (None, 3.0)}                     # a step's result
        rt.send(run.id, "review", {"country": "NL", "items": "three"})          # an event's callback
        assert in_sync(rt, run.id) == {"customer": ("acme", None), "total": (None, 15.0),
                                       "country": ("NL", None)}                  # "three" is no int
        rt.update_data(run.id, {"paid": True})                                   # a data update...
        # ...whose trigger confirms (its callback sets `due`), which starts the invoice child, whose
        # result comes back in the parent's data; then the charge step fails: the run fails.
        wait_until(lambda: rt.get(run.id).status == "failed", message="the declined charge")
        found = in_sync(rt, run.id)
        assert found["paid"] == (None, 1.0)
        assert found["due"] == (None, datetime.fromisoformat("2026-03-01T12:00:00+00:00").timestamp())
        assert found["customer"] == ("ACME LTD", None)
        [invoice] = rt.children(run.id).runs
        assert in_sync(rt, invoice.id) == {"customer": ("ACME LTD", None)}       # a child run's own
        flag.unlink()
        rt.retry(run.id)                                                         # a retried step
        wait_until(lambda: rt.get(run.id).status == "succeeded", message="the retried charge")
    found = in_sync(rt, run.id)
    assert found["total"] == (None, 16.0) and "country" not in found            # set to null: no row


def test_a_workflow_without_search_writes_no_rows(rt):
    run = rt.start("test_counter")
    with rt.db.read() as conn:
        assert conn.execute(select(run_search)).all() == []
    assert rt.get(run.id).status in ("running", "waiting")


def test_a_value_of_the_wrong_type_is_not_indexed_and_does_not_block_the_run(rt):
    run = rt.start("test_search_order", {"customer": 42, "total": "lots", "paid": "yes", "due": "someday",
                                         "items": 2.5, "country": "x" * 256})
    assert in_sync(rt, run.id) == {}
    rt.update_data(run.id, {"customer": "nul\x00", "items": 2.0, "total": True})
    assert in_sync(rt, run.id) == {"items": (None, 2.0)}


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(patches=st.lists(st.dictionaries(
    st.sampled_from(["customer", "total", "country", "paid", "items", "other"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-1e6, 1e6, allow_nan=False),
              st.text("aAé\x00 ", max_size=4)), max_size=3), min_size=1, max_size=6))
def test_any_sequence_of_data_updates_keeps_the_rows_equal_to_the_data(sqlite_interlock, patches):
    rt = sqlite_interlock
    if "tests.search_workflows" not in rt.settings.workflows:
        rt.registry.load_modules(["tests.search_workflows"])
    run = rt.start("test_search_order", patches[0])
    in_sync(rt, run.id)
    for patch in patches[1:]:
        rt.update_data(run.id, patch)
        in_sync(rt, run.id)


# -- filtering ---------------------------------------------------------------------------------

@pytest.fixture
def orders(rt):
    """Five orders waiting in `pricing` (no worker runs), oldest first."""
    made = [rt.start("test_search_order", data) for data in (
        {"customer": "ACME", "total": 5.0, "country": "NL"},
        {"customer": "ACME Corp", "total": 10.0, "country": "DE", "paid": True},
        {"customer": "acme", "total": 50.0, "country": "NL", "due": "2026-01-01T00:00:00Z"},
        {"customer": "Globex", "total": 99.5, "country": "NL", "paid": False},
        {"customer": "ACME", "total": 100.0, "country": "FR", "items": 4})]
    return [r.id for r in made]


def newest_first(ids, *picked):
    return [ids[i] for i in sorted(picked, reverse=True)]


def test_filters_by_equality_ranges_and_prefix_combined_with_the_others(rt, orders):
    def ids(**filters):
        return [r.id for r in rt.list_runs(**filters).runs]

    assert ids(search={"customer": "ACME"}) == newest_first(orders, 0, 4)
    assert ids(search={"customer": ("prefix", "ACME")}) == newest_first(orders, 0, 1, 4)
    assert ids(search={"customer": ("prefix", "")}) == newest_first(orders, 0, 1, 2, 3, 4)
    assert ids(search={"total": [(">=", 10), ("<", 100)]}) == newest_first(orders, 1, 2, 3)
    assert ids(search={"total": (">", 10), "country": "NL"}) == newest_first(orders, 2, 3)
    assert ids(search={"paid": True}) == [orders[1]]
    assert ids(search={"paid": "false"}) == [orders[3]]
    assert ids(search={"due": ("<", datetime(2026, 6, 1))}) == [orders[2]]
    assert ids(search={"items": 4}) == [orders[4]]
    assert ids(search={"customer": "ACME"}, status="waiting") == []
    assert ids(search={"customer": "ACME"}, workflow="test_search_order", state="pricing") == \
        newest_first(orders, 0, 4)
    # Keyset pages: the same runs, newest first, a page at a time.
    first = rt.list_runs(search={"country": "NL"}, limit=2)
    assert [r.id for r in first.runs] == newest_first(orders, 2, 3)
    second = rt.list_runs(search={"country": "NL"}, limit=2, cursor=first.next)
    assert [r.id for r in second.runs] == [orders[0]] and second.next is None


@pytest.mark.parametrize("filters, message", [
    ({"nope": "x"}, "no loaded workflow declares search field 'nope'"),
    ({"total": ("gte", "ten")}, "'ten' is not one"),
    ({"total": ("prefix", "1")}, "it takes eq, gt, gte, lt, lte, not prefix"),
    ({"customer": (">", "A")}, "it takes eq, prefix, not gt"),
    ({"paid": "maybe"}, "is not one (true or false)"),
    ({"total": ("~", 1)}, "unknown operator '~'"),
    ({"due": ("<", "1700000000")}, "ISO 8601"),
])
def test_a_filter_the_workflows_cannot_answer_is_refused(rt, filters, message):
    with pytest.raises(InvalidSearch, match=message.replace("(", r"\(").replace(")", r"\)")):
        rt.list_runs(search=filters)


def test_a_field_declared_with_two_types_needs_a_workflow_filter(rt, orders):
    class Ticket(Workflow):
        name, version = "test_search_ticket", 1
        search = {"customer": int}
        open = State(initial=True)
        closed = State(final=True)
        close = open.to(closed)

    rt.registry.add(Ticket)
    ticket = rt.start("test_search_ticket", {"customer": 7})
    with pytest.raises(InvalidSearch, match="different types"):
        rt.list_runs(search={"customer": "ACME"})
    assert [r.id for r in rt.list_runs(search={"customer": 7}, workflow="test_search_ticket").runs] == [ticket.id]
    with pytest.raises(InvalidSearch, match="workflow 'test_counter' declares no search field"):
        rt.list_runs(search={"customer": "ACME"}, workflow="test_counter")


def test_get_api_runs_filters_by_search_fields(rt, orders):
    client = app_for(rt).test_client()

    def ids(**args):
        response = client.get("/api/runs", query_string=args)
        assert response.status_code == 200, response.json
        return [r["id"] for r in response.json["runs"]]

    assert ids(**{"search.customer": "ACME"}) == newest_first(orders, 0, 4)
    assert ids(**{"search.customer.prefix": "ACME", "search.country": "NL"}) == [orders[0]]
    assert ids(**{"search.total.gte": "10", "search.total.lt": "100", "limit": "2"}) == newest_first(orders, 2, 3)
    page = client.get("/api/runs", query_string={"search.total.gte": "10", "limit": "2"}).json
    rest = client.get("/api/runs", query_string={"search.total.gte": "10", "limit": "2", "cursor": page["next"]}).json
    assert [r["id"] for r in page["runs"] + rest["runs"]] == newest_first(orders, 1, 2, 3, 4)
    for args, field in ((({"search.nope": "x"}), "nope"), ({"search.total.gte": "ten"}, "total"),
                        ({"search.total.between": "1"}, "total"), ({"search.": "1"}, "search.")):
        response = client.get("/api/runs", query_string=args)
        assert response.status_code == 400, args
        assert response.mimetype == "application/problem+json"
        assert response.json["type"] == "urn:interlock:problem:invalid-search"
        assert response.json["field"] == field


def test_the_search_parameters_are_in_the_openapi_document(rt):
    document = app_for(rt).test_client().get("/api/openapi.json").json
    names = {p["name"]: p for p in document["paths"]["/api/runs"]["get"]["parameters"]}
    assert "search.{field}" in names and "search.{field}.{op}" in names
    assert "prefix" in names["search.{field}.{op}"]["description"]


# -- declarations ------------------------------------------------------------------------------

@pytest.mark.parametrize("declared, message", [
    ({"total": "float"}, "has type 'float'"),
    ({"total": dict}, "has type"),
    ({1: str}, "search field 1 must be a name"),
    ({"a.b": str}, "must be a name"),
    (["customer"], "search must be a dict"),
])
def test_a_malformed_search_declaration_fails_at_import(declared, message):
    with pytest.raises(DefinitionError, match=message):
        class Bad(Workflow):
            name, version = "test_search_bad", 1
            search = declared
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)


def test_a_state_named_search_is_not_a_declaration():
    class Searching(Workflow):
        name, version = "test_search_state", 1
        search = State(initial=True)
        found = State(final=True)
        find = search.to(found)

    assert Searching._search is None


def test_reindex_writes_the_rows_of_runs_from_their_stored_data(rt, orders):
    with rt.db.write() as conn:
        conn.execute(run_search.delete())
        search.reindex(conn, rt.registry.get("test_search_order"), orders)
    for run_id in orders:
        assert in_sync(rt, run_id)


def test_interlock_runs_takes_search_terms(sqlite_interlock):
    rt = sqlite_interlock
    rt.registry.load_modules(["tests.search_workflows"])
    made = [rt.start("test_search_order", data).id
            for data in ({"customer": "ACME", "total": 5}, {"customer": "ACME Corp", "total": 50})]
    runner = CliRunner()
    args = ["--database-url", rt.settings.database_url, "--workflows", "tests.search_workflows", "runs"]
    listed = runner.invoke(cli, [*args, "--search", "customer=ACME*", "--search", "total>=10"])
    assert listed.exit_code == 0, listed.output
    assert made[1] in listed.output and made[0] not in listed.output
    refused = runner.invoke(cli, [*args, "--search", "nope=1"], standalone_mode=False)
    assert isinstance(refused.exception, InvalidSearch)
    assert runner.invoke(cli, [*args, "--search", "customer"]).exit_code == 2
