"""Listing runs by state: GET /api/runs, ``Interlock.list_runs`` and the runs page agree, on
SQLite, PostgreSQL and MariaDB, for plain states and for the comma-joined leaves of parallel ones."""

import re

import pytest

from engine.config import Settings
from engine.db import Database

from .apitools import app_for
from .conftest import TEST_WORKFLOWS, _runtime, require_server
from .test_migrations import fresh_database

WORKFLOWS = TEST_WORKFLOWS + ",tests.parallel_workflows"
COUNT = re.compile(r'data-status="(\w+)"><span class="badge \w+">\w+</span><span class="n">([\d,]+)</span>')


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def rt(request, tmp_path):
    if request.param == "mariadb":
        require_server("MariaDB", "127.0.0.1", 3306)
        with fresh_database("mariadb", tmp_path) as url:
            Database(url).upgrade()
            yield from _runtime(Settings(database_url=url, workflows=WORKFLOWS))
        return
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    yield from _runtime(settings.replace(workflows=WORKFLOWS))


class Views:
    """The same filter through the API, the Python API and the runs page."""

    def __init__(self, rt):
        self.rt, self.client = rt, app_for(rt).test_client()

    def ids(self, **filters) -> list[str]:
        api = self.client.get("/api/runs", query_string=filters)
        assert api.status_code == 200, api.json
        found = [run["id"] for run in api.json["runs"]]
        assert [run.id for run in self.rt.list_runs(**filters).runs] == found
        web = {"state": filters["state"]}
        page = self.client.get("/", query_string=web).text
        assert [part.split('"', 1)[0] for part in page.split('<tr data-run-id="')[1:]] == found
        assert sum(int(n.replace(",", "")) for _, n in COUNT.findall(page)) == len(found)
        return found


def test_a_state_filter_matches_leaf_names_literally_not_as_like_patterns(rt):
    first = rt.start("test_parallel")                                   # in_review,packing
    second = rt.start("test_parallel")
    assert rt.send(second.id, "approve").state == "packing,in_order"
    plain = rt.start("test_counter")                                    # counting
    views = Views(rt)
    assert views.ids(state="in_review") == [first.id]
    assert views.ids(state="packing") == sorted([first.id, second.id], reverse=True)
    assert views.ids(state="in_order") == [second.id]
    assert views.ids(state="counting") == [plain.id]
    for pattern in ("%", "_", "in%", "%packing", "_n_review", "in_revie_", "packin_", "in_review,%",
                    "%,packing", "in/_review", "in\\_review", "count%", "countin_"):
        assert views.ids(state=pattern) == [], pattern
