"""/metrics in the Prometheus text format, scraped from a real server while runs move.

Counters live in the process that did the work (here the test's own: API and worker are in
it), so each check is a difference between two scrapes.
"""

import threading

import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from .apitools import serving
from .conftest import wait_until
from .test_streams import SSE


def scrape(base) -> dict:
    """{(sample name, sorted label items): value} of one scrape."""
    response = requests.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST  # one charset, as prometheus_client says
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text) for sample in family.samples}


def value(samples, name, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def api(sqlite_interlock):
    with serving(sqlite_interlock) as base:
        yield sqlite_interlock, base


def test_metrics_count_runs_transitions_step_attempts_failures_durations_and_queue_lag(api, tmp_path):
    rt, base = api
    before = scrape(base)
    start = f"{base}/api/workflows/test_counter/runs"
    run = requests.post(start, json={}, timeout=10).json()
    for event in ("add", "close"):
        assert requests.post(f"{base}/api/runs/{run['id']}/events", json={"event": event}, timeout=10).ok
    approval = requests.post(f"{base}/api/workflows/test_approval/runs", json={}, timeout=10).json()
    assert requests.post(f"{base}/api/runs/{approval['id']}/cancel", json={}, timeout=10).ok

    flag = tmp_path / "flag"
    flag.write_text("fail")
    with rt.worker(2):
        flaky = requests.post(f"{base}/api/workflows/test_flaky/runs", json={"data": {"flag": str(flag)}},
                              timeout=10).json()
        wait_until(lambda: rt.get(flaky["id"]).status == "failed", message="the flaky step to fail for good")
    after = scrape(base)

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("interlock_runs_started_total", workflow="test_counter") == 1
    assert delta("interlock_runs_started_total", workflow="test_flaky") == 1
    assert delta("interlock_runs_finished_total", workflow="test_counter", status="succeeded") == 1
    assert delta("interlock_runs_finished_total", workflow="test_approval", status="cancelled") == 1
    assert delta("interlock_runs_finished_total", workflow="test_flaky", status="failed") == 1
    assert delta("interlock_transitions_total", workflow="test_counter", cause="api") == 2
    assert delta("interlock_transitions_total", workflow="test_flaky", cause="step") == 1  # prepared
    attempts = 3  # retries=2
    assert delta("interlock_step_attempts_total", workflow="test_flaky", step="get_ready", outcome="succeeded") == 1
    assert delta("interlock_step_attempts_total", workflow="test_flaky", step="work", outcome="failed") == attempts
    assert delta("interlock_step_failures_total", workflow="test_flaky", step="work") == attempts
    assert delta("interlock_step_duration_seconds_count", workflow="test_flaky", step="work") == attempts
    assert delta("interlock_step_duration_seconds_bucket", workflow="test_flaky", step="work", le="+Inf") == attempts
    assert delta("interlock_step_duration_seconds_sum", workflow="test_flaky", step="work") >= 0
    assert delta("interlock_queue_lag_seconds_count", workflow="test_flaky") == 1 + attempts
    # Read from the database at scrape time: every run there, by workflow and status.
    assert value(after, "interlock_runs", workflow="test_flaky", status="failed") == 1
    assert value(after, "interlock_runs", workflow="test_counter", status="succeeded") == 1


def test_open_streams_counts_the_sse_streams_and_long_polls_being_held(api):
    rt, base = api
    run = rt.start("test_counter")

    def open_now(kind):
        return value(scrape(base), "interlock_open_streams", kind=kind)

    initial = {kind: open_now(kind) for kind in ("run_stream", "all_stream", "long_poll")}
    one_run = SSE(base, f"/api/runs/{run.id}/stream")
    every_run = SSE(base, "/api/stream")
    assert one_run.next()["id"] == "1" and every_run.next() is None  # both are streaming
    assert open_now("run_stream") == initial["run_stream"] + 1
    assert open_now("all_stream") == initial["all_stream"] + 1

    answer = {}
    poll = threading.Thread(target=lambda: answer.update(requests.get(
        f"{base}/api/runs/{run.id}/history", params={"after": 1, "wait": 20}, timeout=30).json()))
    poll.start()
    wait_until(lambda: rt.notifier.watching(run.id) == 2, message="the long poll to wait")
    assert open_now("long_poll") == initial["long_poll"] + 1
    rt.send(run.id, "add")  # wakes the long poll: it answers and stops counting
    poll.join(10)
    assert [e["seq"] for e in answer["history"]] == [2]
    wait_until(lambda: open_now("long_poll") == initial["long_poll"], message="the long poll to be uncounted")

    for stream in (one_run, every_run):
        stream.response.close()  # the connection's socket stays open while its response is
        stream.close()
    # The server notices a closed connection at its next keep-alive write, then lets go.
    wait_until(lambda: open_now("run_stream") == initial["run_stream"], message="the run stream to be uncounted")
    wait_until(lambda: open_now("all_stream") == initial["all_stream"], message="the all-runs stream to be uncounted")
    assert rt.notifier.watching(run.id) == 0 and rt.notifier.watching() == 0
