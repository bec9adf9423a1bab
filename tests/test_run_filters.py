"""Listing runs by state: GET /api/runs, ``Interlock.list_runs`` and the runs page agree, on
SQLite, PostgreSQL and MariaDB, for plain states and for the comma-joined leaves of parallel ones."""

import random
import re
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy import event, insert, select

from engine import queries
from engine.config import Settings
from engine.db import Database
from engine.ids import id_at
from engine.models import runs
from engine.runtime import Interlock

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


# -- runs spread over three years: the same answers, read through indexes ----------------------

DAY = 86400.0


def spread_runs(rt, count, parallel_every, seed=5):
    """``count`` more runs created over the last three years (ids made from their creation time, as
    the engine makes them), copied from real runs in four states; every ``parallel_every``-th is parallel."""
    counting, closed = rt.start("test_counter"), rt.start("test_counter")
    rt.send(closed.id, "close")
    in_review, in_order = rt.start("test_parallel"), rt.start("test_parallel")
    rt.send(in_order.id, "approve")
    with rt.db.read() as conn:
        templates = {row["id"]: dict(row) for row in conn.execute(select(runs)).mappings()}
    plain = [templates[counting.id], templates[closed.id]]
    parallel = [templates[in_review.id], templates[in_order.id]]
    rng, now, rows = random.Random(seed), time.time(), []
    for i in range(count):
        template = rng.choice(parallel if i % parallel_every == 0 else plain)
        shared = rows and i % 10 == 0  # some runs share their millisecond with another
        created = rows[-1]["created_at"] if shared else now - rng.uniform(0, 3 * 365 * DAY)
        rows.append({**template, "id": id_at(created, "0")[:12] + f"{rng.getrandbits(80):020x}",
                     "business_key": f"B-{i}", "idempotency_key": None, "created_at": created, "updated_at": created})
    with rt.db.write() as conn:
        conn.execute(insert(runs), rows)
    with rt.db.read() as conn:
        return [queries.Run.from_row(row) for row in conn.execute(select(runs)).mappings()]


def walk(rt, limit, **filters) -> list[str]:
    """Every page of ``list_runs``, following ``next``."""
    ids, cursor = [], None
    while True:
        page = rt.list_runs(**filters, cursor=cursor, limit=limit)
        assert len(page.runs) <= limit and (page.next is None or page.next == page.runs[-1].id)
        ids += [run.id for run in page.runs]
        if page.next is None:
            return ids
        cursor = page.next


def expected(everything, state=None, status=None, workflow=None, created_after=None, created_before=None):
    return sorted((run.id for run in everything if (state is None or state in run.state.split(","))
                   and (status is None or run.status == status) and (workflow is None or run.workflow == workflow)
                   and (created_after is None or run.created_at >= created_after)
                   and (created_before is None or run.created_at < created_before)), reverse=True)


def test_listing_runs_spread_over_time_and_states_finds_exactly_the_matching_runs(rt):
    everything = spread_runs(rt, 400, parallel_every=3)
    times = sorted(run.created_at for run in everything)
    now, middle, early = time.time(), times[len(times) // 2], times[40]
    ranges = [{}, {"created_before": middle}, {"created_after": middle}, {"created_before": early},
              {"created_after": early, "created_before": middle}, {"created_after": middle - 30 * DAY,
                                                                   "created_before": middle + 30 * DAY},
              {"created_before": times[0]}, {"created_after": times[-1]}, {"created_before": now - 4 * 365 * DAY},
              {"created_after": now + DAY}, {"created_before": middle + 0.0005}, {"created_after": middle + 0.0005}]
    for state in (None, "counting", "closed", "in_review", "packing", "in_order", "expired", "in_%"):
        for created in ranges:
            for other in ({}, {"status": "waiting"}, {"workflow": "test_parallel"}):
                filters = {**created, **other, **({"state": state} if state else {})}
                want = expected(everything, **filters)
                assert walk(rt, 7, **filters) == want, filters
                assert [run.id for run in rt.list_runs(**filters, limit=500).runs] == want, filters


def test_the_api_lists_a_created_range_and_a_state_page_by_page(rt):
    everything = spread_runs(rt, 200, parallel_every=4)
    client = app_for(rt).test_client()
    middle = sorted(run.created_at for run in everything)[100]
    before = datetime.fromtimestamp(int(middle), timezone.utc)
    for query in ({"created_before": before.isoformat()}, {"created_after": before.isoformat(), "state": "packing"},
                  {"created_before": before.isoformat(), "state": "counting"}):
        ids, cursor = [], None
        while True:
            page = client.get("/api/runs", query_string={**query, "limit": 9, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.json
            ids += [run["id"] for run in page.json["runs"]]
            if not (cursor := page.json["next"]):
                break
        bounds = {k: before.timestamp() for k in ("created_after", "created_before") if k in query}
        assert ids == expected(everything, state=query.get("state"), **bounds), query


def rows_read(conn, statement, parameters) -> int:
    """Rows of `runs` PostgreSQL read to answer ``statement`` (returned or filtered out)."""
    [[plan]] = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters).one()
    nodes, read = [plan["Plan"]], 0
    while nodes:
        node = nodes.pop()
        nodes += node.get("Plans", [])
        if node.get("Relation Name") == "runs":
            read += node["Actual Rows"] * node["Actual Loops"] + node.get("Rows Removed by Filter", 0) \
                + node.get("Rows Removed by Index Recheck", 0)
    return read


def test_a_rare_state_or_an_old_range_reads_few_runs_on_postgresql(pg_settings):
    """At 10^6 runs these views read the whole table (bench/scale.py): what a page reads must
    stay near its size, whatever plan PostgreSQL picks, not grow with the runs stored (4,000 here)."""
    rt = Interlock(pg_settings.replace(workflows=WORKFLOWS))
    try:
        everything = spread_runs(rt, 4000, parallel_every=200)
        with rt.db.write() as conn:
            conn.exec_driver_sql("ANALYZE runs")
        oldest = sorted(run.created_at for run in everything)[200]
        statements = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            statements.append((statement, parameters))

        for filters in ({"state": "expired"}, {"state": "closed"}, {"state": "in_review"},
                        {"created_before": oldest}, {"created_before": oldest, "state": "counting"}):
            statements.clear()
            event.listen(rt.db.engine, "before_cursor_execute", capture)
            rt.list_runs(**filters, limit=50)
            event.remove(rt.db.engine, "before_cursor_execute", capture)
            with rt.db.read() as conn:
                read = sum(rows_read(conn, statement, parameters) for statement, parameters in statements)
            assert read <= 300, (filters, read)
    finally:
        rt.close()
