"""What /api/openapi.json says a Last-Event-ID header and an activity name may be is exactly what
the server takes: each value below is refused by the server if and only if the document refuses it.

(No value starts with whitespace: HTTP drops it before the value, and clients refuse to send it.)"""

import re
from urllib.parse import quote

import pytest
import requests

from engine import activities as act

from .apitools import serving
from .conftest import TEST_WORKFLOWS, _runtime

SEQ_IDS = ["", "0", "7", "10", "007", "2147483647", "2147483648", "9999999999", "99999999999", "-1", "+5", "1.0",
           "1e3", "0x10", "1_000", "5 ", "5\t", "nan", "inf", "x"]
TIME_IDS = ["", "0", "1700000000", "1700000000.5", "1700000000.123456", "1700000000.1234567", "99999999999",
            "99999999999.999999", "100000000000", "0001700000000", "1e10", "1.7e9", "-1", "+1", ".5", "5.",
            "1_700_000_000", "nan", "inf", "1 ", "x"]
ACTIVITY_NAMES = ["a", "customs_review", "warehouse.pick", "A:b-c_d.e", "9", "a" * 200, "a" * 201, "-a", ".a",
                  "_a", ":a", "a b", "a\n", "a\t", "a%b", "a+b", "a@b", "é", "a,b", "a*"]


def documented(schema, value) -> bool:
    """JSON Schema's reading: ``pattern`` is ECMA-262, where ``$`` is the end of the string."""
    assert schema["type"] == "string"
    pattern = schema["pattern"].removesuffix("$") + r"\Z"
    return len(value) <= schema.get("maxLength", len(value)) and re.search(pattern, value) is not None


def parameter(document, path, method, where, name) -> dict:
    [found] = [p for p in document["paths"][path][method]["parameters"] if p["in"] == where and p["name"] == name]
    return found["schema"]


@pytest.fixture
def rt(sqlite_settings):
    yield from _runtime(sqlite_settings.replace(workflows=TEST_WORKFLOWS + ",tests.activity_workflows"))


@pytest.fixture
def served(rt):
    """The engine, the server's base URL, an HTTP session and the document the server serves."""
    with serving(rt) as base, requests.Session() as http:
        yield rt, base, http, http.get(f"{base}/api/openapi.json", timeout=10).json()


def taken(http, url, **kwargs) -> bool:
    """Whether the server takes the request (refusals of the value are 422 problems)."""
    with http.request(kwargs.pop("method", "GET"), url, stream=True, timeout=10, **kwargs) as response:
        assert response.status_code in (200, 422), (url, kwargs, response.status_code)
        return response.status_code == 200


@pytest.mark.parametrize("path, values", [("/api/runs/{run_id}/stream", SEQ_IDS), ("/api/stream", TIME_IDS)],
                         ids=["run stream", "all runs stream"])
def test_last_event_id_is_documented_as_the_server_checks_it(served, path, values):
    rt, base, http, document = served
    schema = parameter(document, path, "get", "header", "Last-Event-ID")
    assert "maxLength" in schema and "pattern" in schema
    url = base + path.replace("{run_id}", rt.start("test_counter").id)
    wrong = [(value, documented(schema, value)) for value in values
             if documented(schema, value) != taken(http, url, headers={"Last-Event-ID": value})]
    assert wrong == [], "(value, documented as valid) where the server disagrees"
    assert [documented(schema, v) for v in ("", "0", "x")] == [True, True, False]


def test_an_activity_name_is_documented_as_the_server_checks_it(served):
    rt, base, http, document = served
    path = "/api/activities/{name}/receive"
    schema = parameter(document, path, "post", "path", "name")
    assert "maxLength" in schema and "pattern" in schema
    wrong = [(name, documented(schema, name)) for name in ACTIVITY_NAMES
             if documented(schema, name) != taken(http, f"{base}/api/activities/{quote(name, safe='')}/receive",
                                                  method="POST", json={})]
    assert wrong == [], "(name, documented as valid) where the server disagrees"
    rt.start("clearance", {"container": "C1"})
    assert documented(schema, "customs_review") and act.receive(rt, "customs_review")  # a real name, a real task


SCHEDULE_NAMES = ["a", "nightly", "report.daily:eu-west_1", "9", "a" * 200, "a" * 201, "-a", ".a", "_a", ":a",
                  "a b", "a\n", "a%b", "a;b", "é", "a,b", "a*", "A-Z"]


def test_a_schedule_name_is_documented_as_the_server_checks_it(served):
    """In the body that creates one and in the path that names one (an unknown valid name: 404)."""
    rt, base, http, document = served
    path_schema = parameter(document, "/api/schedules/{name}", "get", "path", "name")
    body_schema = document["components"]["schemas"]["CreateSchedule"]["properties"]["name"]
    assert {k: body_schema[k] for k in ("pattern", "maxLength")} == {k: path_schema[k] for k in ("pattern", "maxLength")}
    wrong = []
    for name in SCHEDULE_NAMES:
        with http.post(f"{base}/api/schedules", json={"name": name, "workflow": "test_counter", "every": 60},
                       timeout=10) as created:
            assert created.status_code in (201, 422), (name, created.text)
        with http.get(f"{base}/api/schedules/{quote(name, safe='')}", timeout=10) as shown:
            assert shown.status_code in (200, 422), (name, shown.text)  # created just before, if valid
        if {documented(path_schema, name), created.status_code == 201, shown.status_code == 200} != \
                {documented(path_schema, name)}:
            wrong.append((name, documented(path_schema, name), created.status_code, shown.status_code))
    assert wrong == [], "(name, documented as valid, create status, get status) where the server disagrees"
