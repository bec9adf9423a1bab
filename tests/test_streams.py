"""Live streams over HTTP: long poll, SSE with resume, the all-runs stream, and the notifier behind them.

Servers are real: werkzeug's threaded server in the test's process, or `interlock serve`
and `interlock worker` as separate processes.
"""

import http.client
import json
import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime

import pytest
import requests
from sqlalchemy import create_engine, text

from api import create_app
from api.serving import ThreadedServer
from engine.notify import Notifier
from engine.runtime import Interlock

from . import workflows as test_workflows
from .conftest import REDIS_URL, require_server, wait_until
from .processes import Process, env_for

KEEPALIVE = 0.2


@contextmanager
def serving(rt):
    app = create_app(interlock=rt, config={"STREAM_KEEPALIVE_SECONDS": KEEPALIVE})
    server = ThreadedServer(app, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.stop()


@pytest.fixture
def api(interlock):
    with serving(interlock) as base:
        yield base


@pytest.fixture
def sqlite_api(sqlite_interlock):
    with serving(sqlite_interlock) as base:
        yield base


def epoch(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time.replace("Z", "+00:00")).timestamp()


class LongPoll(threading.Thread):
    """A long-poll request in the background; ``received`` is when its response arrived."""

    def __init__(self, url, **params):
        super().__init__(daemon=True)
        self.url, self.params = url, params
        self.response = self.received = self.sent = None

    def run(self):
        self.sent = time.time()
        self.response = requests.get(self.url, params=self.params, timeout=40)
        self.received = time.time()

    def result(self, timeout=40):
        self.join(timeout)
        assert self.response is not None, "the long poll did not return"
        return self.response


class SSE:
    """A minimal EventSource: events as dicts, comments counted, the last id remembered."""

    def __init__(self, base, path, headers=None):
        host, port = base.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=10)
        self.conn.request("GET", path, headers=headers or {})
        self.response = self.conn.getresponse()
        self.last_id = None
        self.comments = 0

    def next(self):
        """The next event with data, or None at a keep-alive comment (the stream is idle)."""
        fields = {}
        while True:
            line = self.response.readline()
            if not line:
                raise EOFError("the stream closed")
            line = line.decode().rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
                return None
            if line == "":
                if "data" in fields:
                    fields["data"] = json.loads(fields["data"])
                    return fields
                fields = {}
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            fields[name] = value
            if name == "id":
                self.last_id = value

    def events_until_idle(self):
        out = []
        while (event := self.next()) is not None:
            out.append(event)
        return out

    def events_until_end(self):
        out = []
        while True:
            event = self.next()
            if event is None:
                continue
            if event["event"] == "end":
                return out, event
            out.append(event)

    def close(self):
        self.conn.close()


# -- the notifier ------------------------------------------------------------------------------

def test_a_change_wakes_only_the_watchers_of_its_run_and_the_all_runs_watchers():
    notifier = Notifier()
    with notifier.watch("a") as a, notifier.watch("b") as b, notifier.watch() as every:
        notifier.publish("a", 2, "waiting")
        assert a.wait(0) and not b.wait(0)
        assert every.wait(0) and every.take() == {"a"}
        # The same change announced again (locally and by the database) wakes nobody.
        notifier.publish("a", 2, "waiting")
        notifier.publish("a", 1, "waiting")
        assert not a.wait(0) and not every.wait(0)
        assert notifier.watching("a") == 1 and notifier.watching() == 1
    assert notifier.watching("a") == 0 and notifier.watching() == 0


# -- long poll ---------------------------------------------------------------------------------

def test_long_poll_issued_before_a_step_finishes_returns_within_half_a_second(interlock, api):
    gate_name = f"gate-{uuid.uuid4().hex}"
    gate = test_workflows.GATES[gate_name] = threading.Event()
    with interlock.worker(2):
        run = interlock.start("test_gated", {"gate": gate_name})
        wait_until(lambda: test_workflows.CALLS.get(run.id), message="the step to begin")
        poll = LongPoll(f"{api}/api/runs/{run.id}/history", after=1, wait=20)
        poll.start()
        wait_until(lambda: interlock.notifier.watching(run.id), message="the long poll to wait")
        gate.set()
        response = poll.result()
    del test_workflows.GATES[gate_name]
    assert response.status_code == 200
    body = response.json()
    assert body["status"] in ("running", "waiting", "succeeded")
    seqs = [e["seq"] for e in body["history"]]
    assert seqs and seqs == list(range(2, 2 + len(seqs)))
    transition = next(e for e in body["history"] if e["kind"] == "transition")
    assert transition["event"] == "check"
    latency = poll.received - epoch(transition["at"])
    assert latency < 0.5, f"woken {latency:.3f}s after the transition"


def test_long_poll_returns_an_empty_list_after_wait_when_nothing_happens(sqlite_interlock, sqlite_api):
    run = sqlite_interlock.start("test_approval")
    started = time.monotonic()
    response = requests.get(f"{sqlite_api}/api/runs/{run.id}/history", params={"after": 1, "wait": 0.4})
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json() == {"run_id": run.id, "status": "waiting", "last_seq": 1, "history": []}
    assert 0.4 <= elapsed < 1.4
    assert sqlite_interlock.notifier.watching(run.id) == 0


def test_long_poll_returns_at_once_when_history_is_newer(sqlite_interlock, sqlite_api):
    run = sqlite_interlock.start("test_counter")
    sqlite_interlock.send(run.id, "add")
    started = time.monotonic()
    # A huge wait is cut to the maximum, not refused: here nothing needs waiting for.
    body = requests.get(f"{sqlite_api}/api/runs/{run.id}/history",
                        params={"after": 1, "wait": 1e9}).json()
    assert time.monotonic() - started < 1
    assert [e["seq"] for e in body["history"]] == [2] and body["last_seq"] == 2
    limited = requests.get(f"{sqlite_api}/api/runs/{run.id}/history", params={"limit": 1}).json()
    assert [e["seq"] for e in limited["history"]] == [1] and limited["last_seq"] == 2


def test_unknown_runs_and_bad_parameters_are_problems(sqlite_interlock, sqlite_api):
    run = sqlite_interlock.start("test_counter")
    for path in ("/api/runs/nope/history?wait=5", "/api/runs/nope/stream"):
        response = requests.get(sqlite_api + path, timeout=10)
        assert response.status_code == 404
        assert response.headers["Content-Type"] == "application/problem+json"
        assert response.json()["type"] == "urn:interlock:problem:run-not-found"
    history = f"{sqlite_api}/api/runs/{run.id}/history"
    for params in ({"wait": -1}, {"wait": "inf"}, {"wait": "nan"}, {"wait": "1e400"}, {"after": -1},
                   {"after": 10**12}, {"limit": 0}, {"wait": "soon"}):
        response = requests.get(history, params=params, timeout=10)
        assert response.status_code == 422, params
        assert response.json()["type"] == "urn:interlock:problem:validation-error"
    for path, last_id in ((f"/api/runs/{run.id}/stream", "x"), (f"/api/runs/{run.id}/stream", "-1"),
                          ("/api/stream", "inf"), ("/api/stream", "nan")):
        response = requests.get(sqlite_api + path, headers={"Last-Event-ID": last_id}, timeout=10)
        assert response.status_code == 422, (path, last_id)


# -- SSE: one run ------------------------------------------------------------------------------

def test_sse_reconnecting_with_last_event_id_gets_exactly_the_missed_events(interlock, api):
    run = interlock.start("test_counter")
    for _ in range(3):
        interlock.send(run.id, "add")
    first = SSE(api, f"/api/runs/{run.id}/stream")
    assert first.response.status == 200
    assert first.response.getheader("Content-Type").startswith("text/event-stream")
    assert first.response.getheader("X-Accel-Buffering") == "no"
    received = [first.next(), first.next()]
    first.close()
    assert [e["id"] for e in received] == ["1", "2"]
    assert received[0]["event"] == "history" and received[0]["data"]["kind"] == "started"

    for _ in range(3):  # while disconnected
        interlock.send(run.id, "add")
    second = SSE(api, f"/api/runs/{run.id}/stream", headers={"Last-Event-ID": first.last_id})
    replayed = second.events_until_idle()
    assert [int(e["id"]) for e in replayed] == [3, 4, 5, 6, 7]
    assert second.comments == 1  # keep-alive while idle
    interlock.send(run.id, "add")  # live
    live = second.next()
    assert (live["id"], live["data"]["event"]) == ("8", "add")
    interlock.send(run.id, "close")
    rest, end = second.events_until_end()
    second.close()
    seqs = [int(e["id"]) for e in received + replayed + [live] + rest]
    assert seqs == list(range(1, interlock.get(run.id).last_seq + 1))
    assert all(e["data"]["seq"] == int(e["id"]) for e in received + replayed + [live] + rest)
    assert end["data"]["status"] == "succeeded"

    # `?after=` resumes too, and a finished run's stream ends after what is left.
    third = SSE(api, f"/api/runs/{run.id}/stream?after=8")
    tail, _ = third.events_until_end()
    third.close()
    assert [int(e["id"]) for e in tail] == seqs[8:]
    wait_until(lambda: interlock.notifier.watching(run.id) == 0, message="streams to let go of their watch")


# -- SSE: every run ----------------------------------------------------------------------------

def test_all_runs_stream_sends_current_states_and_resumes_from_last_event_id(interlock, api):
    stream = SSE(api, "/api/stream?workflow=test_counter")
    assert stream.next() is None and stream.last_id is not None  # a resume point from the start
    a = interlock.start("test_counter")
    interlock.start("test_approval")  # another workflow: filtered out
    event = stream.next()
    assert event["event"] == "run" and event["data"]["id"] == a.id and event["data"]["last_seq"] == 1
    assert stream.events_until_idle() == []
    stream.close()

    interlock.send(a.id, "add")
    interlock.send(a.id, "add")
    b = interlock.start("test_counter")
    interlock.start("test_approval")
    resumed = SSE(api, "/api/stream?workflow=test_counter", headers={"Last-Event-ID": stream.last_id})
    replay = resumed.events_until_idle()
    # Newest state per run, each run once.
    assert sorted((e["data"]["id"], e["data"]["last_seq"]) for e in replay) == sorted([(a.id, 3), (b.id, 1)])
    ids = [float(e["id"]) for e in replay]
    assert ids == sorted(ids) and ids[0] >= float(stream.last_id)
    interlock.send(b.id, "add")
    live = resumed.next()
    assert (live["data"]["id"], live["data"]["last_seq"]) == (b.id, 2)
    resumed.close()


def test_streams_are_in_the_openapi_document(sqlite_api):
    document = requests.get(f"{sqlite_api}/api/openapi.json").json()
    history = document["paths"]["/api/runs/{run_id}/history"]["get"]
    assert {p["name"] for p in history["parameters"]} >= {"run_id", "after", "wait", "limit"}
    for path in ("/api/runs/{run_id}/stream", "/api/stream"):
        operation = document["paths"][path]["get"]
        assert "text/event-stream" in operation["responses"]["200"]["content"]
        assert "Last-Event-ID" in {p["name"] for p in operation["parameters"]}


# -- changes made by other processes ---------------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def two_engines(request):
    """Two engines on one database, as two processes would have: each its own notifier."""
    settings = request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")
    server_side, other = Interlock(settings), Interlock(settings)
    yield server_side, other
    other.close()
    server_side.close()


def test_a_change_made_elsewhere_wakes_a_long_poll(two_engines):
    server_side, other = two_engines
    with serving(server_side) as base:
        run = other.start("test_counter")
        poll = LongPoll(f"{base}/api/runs/{run.id}/history", after=1, wait=20)
        poll.start()
        wait_until(lambda: server_side.notifier.watching(run.id), message="the long poll to wait")
        other.send(run.id, "add")
        body = poll.result().json()
    assert [e["seq"] for e in body["history"]] == [2]
    latency = poll.received - epoch(body["history"][0]["at"])
    assert latency < 0.5, f"woken {latency:.3f}s after the change"


@pytest.mark.postgres
def test_the_listener_reconnects_and_catches_up(pg_settings):
    server_side, other = Interlock(pg_settings), Interlock(pg_settings)
    admin = create_engine(pg_settings.database_url)
    try:
        run = other.start("test_counter")
        with server_side.notifier.watch(run.id) as watch:
            listener = server_side.notifier.source
            first_pid = wait_until(lambda: listener.backend_pid, message="LISTEN")
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": first_pid})
            other.send(run.id, "add")  # probably while the listener is away
            assert watch.wait(5), "the change was not announced after the reconnect"
            wait_until(lambda: listener.backend_pid not in (None, first_pid), message="a new LISTEN")
            other.send(run.id, "add")
            assert watch.wait(2)
    finally:
        admin.dispose()
        other.close()
        server_side.close()


# -- separate processes --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_api(base, process):
    def up():
        assert process.proc.poll() is None, process.output()
        try:
            return requests.get(f"{base}/api/workflows", timeout=5).status_code == 200
        except requests.RequestException:  # not listening yet, or still booting
            return False

    wait_until(up, timeout=30, interval=0.1, message="the API to answer")


def follow_until(base, run_id, kind, event, after=0):
    """Long-poll the run until a `kind` entry for `event` arrives."""
    while True:
        body = requests.get(f"{base}/api/runs/{run_id}/history", params={"after": after, "wait": 10},
                            timeout=30).json()
        for entry in body["history"]:
            if entry["kind"] == kind and entry["event"] == event:
                return entry
        assert body["history"], f"nothing happened to run {run_id}"
        after = body["last_seq"]


@pytest.mark.slow
@pytest.mark.postgres
def test_serve_and_worker_processes_a_watcher_sees_the_workers_transition_within_half_a_second(
        pg_settings, tmp_path):
    require_server("Redis", "127.0.0.1", 6379)
    settings = pg_settings.replace(broker_url=REDIS_URL, queue=f"interlock_test_{uuid.uuid4().hex[:12]}")
    env = env_for(settings)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = Process("serve", "--port", str(port), "--threads", "16", env=env, log_path=tmp_path / "serve.log")
    worker = Process("worker", "--threads", "2", env=env, log_path=tmp_path / "worker.log")
    try:
        wait_for_api(base, server)
        start = f"{base}/api/workflows/test_short_timer/runs"
        # The worker is up once its timer loop has fired a first run's timer.
        warm = requests.post(start, json={}, timeout=10).json()
        follow_until(base, warm["id"], "transition", "remind")

        run = requests.post(start, json={}, timeout=10).json()
        poll = LongPoll(f"{base}/api/runs/{run['id']}/history", after=run["last_seq"], wait=20)
        poll.start()  # the timer fires 0.3 s after the start, in the worker process
        body = poll.result().json()
        transition = next(e for e in body["history"] if e["kind"] == "transition")
        assert transition["event"] == "remind"
        assert epoch(transition["at"]) > poll.sent, "the request must be waiting before the change"
        latency = poll.received - epoch(transition["at"])
        assert latency < 0.5, f"woken {latency:.3f}s after the worker's transition"
    finally:
        worker.stop()
        server.stop()


@pytest.mark.slow
def test_dev_serves_the_api_next_to_the_worker(tmp_path):
    from .processes import clean_env

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    dev = Process("dev", "--port", str(port), env=clean_env(), cwd=tmp_path, log_path=tmp_path / "dev.log")
    try:
        wait_for_api(base, dev)
        run = requests.post(f"{base}/api/workflows/cargo/runs", timeout=10, json={"data": {
            "container": "C1", "manifest": ["x"], "check_every_seconds": 60}}).json()
        poll = LongPoll(f"{base}/api/runs/{run['id']}/history", after=run["last_seq"], wait=20)
        poll.start()
        sent = requests.post(f"{base}/api/runs/{run['id']}/events", json={"event": "depart"}, timeout=10)
        assert sent.status_code == 200, sent.text
        body = poll.result().json()
        assert [e["event"] for e in body["history"] if e["kind"] == "transition"][:1] == ["depart"]
    finally:
        dev.stop()


@pytest.mark.slow
def test_serve_warns_when_open_to_the_network_without_tokens(tmp_path):
    from .processes import clean_env, interlock

    env = clean_env()
    env["INTERLOCK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    # A database behind the migrations: it warns, then refuses before binding anything.
    done = interlock("serve", "--host", "0.0.0.0", "--port", str(free_port()), env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "INTERLOCK_API_TOKENS empty" in done.stderr
    assert "interlock db upgrade" in done.stderr
