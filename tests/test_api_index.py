"""GET /api: the API's index, from a real server: where the OpenAPI document, every route, the web
pages and the metrics are, each link answering; the index is in the document like any route."""

import pytest
import requests

from .apitools import serving


@pytest.fixture
def base(sqlite_interlock):
    with serving(sqlite_interlock) as url:
        yield url


def test_api_answers_with_an_index_whose_links_answer(base):
    response = requests.get(f"{base}/api", timeout=10)
    assert response.status_code == 200 and response.headers["Content-Type"] == "application/json"
    index = response.json()
    document = requests.get(base + index["openapi"], timeout=10).json()
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    listed = {(route["method"], route["path"]) for route in index["routes"]}
    assert listed == documented - {("GET", "/api")}
    assert ("GET", "/api/runs/{run_id}") in listed and all(route["summary"] for route in index["routes"])
    assert document["paths"]["/api"]["get"]["responses"]["200"]["content"]["application/json"]
    for link in (index["web"], index["metrics"], "/api/workflows", "/api/runs"):
        assert requests.get(base + link, timeout=10).status_code == 200, link
