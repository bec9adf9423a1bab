"""OpenTelemetry traces and JSON log lines (engine/tracing.py, engine/logs.py).

One trace from the API call through every change and step attempt of a run, a step attempt and
its result's change in another `interlock worker` process included (its spans read from the
SDK's console exporter, chosen by OTEL_TRACES_EXPORTER, its log lines as JSON); the run's
trace kept across a later API request; nothing breaks, and nothing is stored, without
OpenTelemetry.
"""

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import create_engine, select, text

from api import create_app
from engine import logs, tracing
from engine.config import Settings
from engine.db import Database
from engine.errors import ConfigurationError
from engine.models import runs, tasks
from engine.runtime import Interlock
from engine.testing import Harness

from .conftest import PG_ADMIN_URL, REDIS_URL, require_server, wait_until
from .processes import ROOT, clean_env, env_for

WORKFLOWS = "tests.trace_workflows"


@pytest.fixture(scope="module")
def exporter():
    """The SDK's in-memory exporter on this process's tracer provider (set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    assert tracing.ENABLED and tracing.recording()
    yield exporter
    exporter.clear()


@pytest.fixture
def pg_url():
    require_server("PostgreSQL", "127.0.0.1", 5432)
    name = f"trace_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    Database(url).upgrade()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


def _hex(value: int, width: int) -> str:
    return f"{value:0{width}x}"


class Span:
    """A finished span, from the in-memory exporter or the console exporter's JSON."""

    def __init__(self, name, trace_id, span_id, parent_id, attributes, links=(), process="here"):
        self.name, self.trace_id, self.span_id, self.parent_id = name, trace_id, span_id, parent_id
        self.attributes, self.links, self.process = dict(attributes), list(links), process

    @classmethod
    def of(cls, span):
        return cls(span.name, _hex(span.context.trace_id, 32), _hex(span.context.span_id, 16),
                   _hex(span.parent.span_id, 16) if span.parent else None, span.attributes or {},
                   [(_hex(link.context.trace_id, 32), _hex(link.context.span_id, 16)) for link in span.links])

    @classmethod
    def from_console(cls, document):
        def bare(value):
            return value[2:] if value and value.startswith("0x") else value

        return cls(document["name"], bare(document["context"]["trace_id"]), bare(document["context"]["span_id"]),
                   bare(document.get("parent_id")), document.get("attributes") or {},
                   [(bare(link["context"]["trace_id"]), bare(link["context"]["span_id"]))
                    for link in document.get("links") or ()], process="worker")

    def __repr__(self):
        return f"<{self.process} {self.name} {self.trace_id[:8]} {self.span_id} <- {self.parent_id}>"


def console_spans(output: str) -> list:
    """The spans ConsoleSpanExporter wrote: indented JSON documents one after another."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while True:
        at = output.find("{", at)
        if at < 0:
            return spans
        document, at = decoder.raw_decode(output, at)
        spans.append(Span.from_console(document))


def test_one_trace_from_the_api_call_through_every_change_and_attempt_in_two_processes(exporter, pg_url, tmp_path):
    require_server("Redis", "127.0.0.1", 6379)
    settings = Settings(database_url=pg_url, broker_url=REDIS_URL, workflows=WORKFLOWS,
                        queue=f"trace_{uuid.uuid4().hex[:12]}", poll_interval=0.05, resend_after=5.0,
                        lease_seconds=5.0)
    exporter.clear()
    rt = Interlock(settings)
    app = create_app(interlock=rt)
    client = app.test_client()
    try:
        # Here: the start (over the API), the step that fails once and its retry.
        with rt.worker(4):
            created = client.post("/api/workflows/traced/runs", json={"data": {"order": 7}})
            assert created.status_code == 201, created.data
            run_id = created.json["id"]
            wait_until(lambda: rt.get(run_id).state == "held", timeout=20, message="the run to wait in held")
        # There: a worker in another process, with the SDK set up from OTEL_* by `interlock worker`.
        out, err = tmp_path / "worker.out", tmp_path / "worker.err"
        env = env_for(settings, OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="interlock-test-worker",
                      OTEL_BSP_SCHEDULE_DELAY="50", INTERLOCK_LOG_FORMAT="json", INTERLOCK_EAGER_THREADS="0")
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            worker = subprocess.Popen([sys.executable, "-m", "engine.cli", "worker", "--threads", "2"],
                                      env=env, cwd=ROOT, stdout=stdout, stderr=stderr)
        try:
            wait_until(lambda: "worker ready" in err.read_text(), timeout=30, message="the worker to start")
            # A later request: the change joins the run's trace, linked to the request's own.
            sent = client.post(f"/api/runs/{run_id}/events", json={"event": "release"})
            assert sent.status_code == 200, sent.data
            wait_until(lambda: rt.get(run_id).status == "succeeded", timeout=30, message="the run to succeed")
        finally:
            worker.terminate()
            worker.wait(30)
        assert worker.returncode == 0, err.read_text()[-3000:]
        run = rt.get(run_id)
        history = rt.history(run_id)
        with rt.db.read() as conn:
            stored = conn.execute(select(runs.c.trace_context).where(runs.c.id == run_id)).scalar()
            task_contexts = conn.execute(select(tasks.c.name, tasks.c.trace_context)
                                         .where(tasks.c.run_id == run_id)).all()
    finally:
        rt.close()
    assert run.data["packed_by"] == worker.pid  # the pack step ran in the other process

    here = [Span.of(s) for s in exporter.get_finished_spans()]
    there = console_spans(out.read_text())
    assert there, err.read_text()[-3000:]
    ours = [s for s in here + there if s.attributes.get("interlock.run_id") == run_id]
    api = [s for s in here if s.name == "POST /api/workflows/<name>/runs"]
    assert len(api) == 1 and api[0].parent_id is None
    trace_id = api[0].trace_id
    # One trace: the API call, every change and every attempt, here and there.
    assert {s.trace_id for s in ours} == {trace_id}, ours
    assert stored.split("-")[1] == trace_id
    assert all(context and context.split("-")[1] == trace_id for _, context in task_contexts)

    changes = sorted((s for s in ours if "interlock.operation" in s.attributes),
                     key=lambda s: s.attributes["interlock.seq"])
    attempts = [s for s in ours if s.name.startswith("step ")]
    assert [(s.attributes["interlock.operation"], s.process) for s in changes] == [
        ("start", "here"), ("step_failed", "here"), ("step_done", "here"), ("send_event", "here"),
        ("step_done", "worker")]
    assert changes[-1].attributes["interlock.seq"] == run.last_seq
    for span in changes:
        assert span.attributes["interlock.workflow"] == "traced"
        assert span.attributes["interlock.version"] == 1
        assert span.attributes["interlock.state"]
    assert [s.attributes["interlock.state"] for s in changes] == ["checking", "checking", "held", "packing", "done"]
    assert [s.attributes.get("interlock.event") for s in changes] == [None, None, "checked", "release", "packed"]
    # Every attempt the history records has its span, with its number, where it ran.
    recorded = sorted((e.detail["step"], e.detail["attempt"]) for e in history if e.kind == "step_started")
    assert sorted((s.attributes["interlock.step"], s.attributes["interlock.attempt"]) for s in attempts) == recorded
    assert recorded == [("check", 1), ("check", 2), ("pack", 1)]
    by_id = {s.span_id: s for s in ours + api}
    start, failed, checked, released, packed = changes
    assert start.parent_id == api[0].span_id
    for span in attempts:
        outcome = "failed" if span.attributes["interlock.attempt"] == 1 and span.attributes["interlock.step"] == "check" \
            else "succeeded"
        assert span.attributes["interlock.outcome"] == outcome
    pack = next(s for s in attempts if s.attributes["interlock.step"] == "pack")
    assert pack.process == "worker" and pack.parent_id == released.span_id  # its task's change, in this process
    assert packed.parent_id == pack.span_id
    assert by_id[failed.parent_id].attributes["interlock.attempt"] == 1
    assert by_id[checked.parent_id].attributes["interlock.attempt"] == 2
    # The event's own request is another trace, linked from the change it made.
    request = next(s for s in here if s.name == "POST /api/runs/<run_id>/events")
    assert request.trace_id != trace_id and released.parent_id == start.span_id
    assert released.links == [(request.trace_id, request.span_id)]

    # The other process's log lines: one JSON object each, with the ids of what they are about.
    lines = [json.loads(line) for line in err.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    packing = next(line for line in lines if line["message"].startswith("packing in process"))
    assert packing["run_id"] == run_id and packing["workflow"] == "traced"
    assert packing["task_id"] == pack.attributes["interlock.task_id"] and packing["trace_id"] == trace_id
    assert packing["span_id"] == pack.span_id
    done = next(line for line in lines if line["message"] == f"run {run_id} is done")
    assert done["event"] == "packed" and done["trace_id"] == trace_id and done["span_id"] == packed.span_id
    assert done["task_id"] == pack.attributes["interlock.task_id"]


def test_a_traceparent_sent_to_the_api_is_the_run_traces_parent(exporter, tmp_path):
    exporter.clear()
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with Harness(WORKFLOWS, directory=str(tmp_path)) as h:
        client = create_app(interlock=h.rt).test_client()
        created = client.post("/api/workflows/traced/runs", json={"data": {}},
                              headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
        run_id = created.json["id"]
        h.wait(run_id, state="held")
        h.rt.send(run_id, "release")  # no span current: the run's start is the parent
        h.wait(run_id)
    spans = [Span.of(s) for s in exporter.get_finished_spans()]
    ours = [s for s in spans if s.attributes.get("interlock.run_id") == run_id]
    request = next(s for s in spans if s.name.startswith("POST "))
    assert request.trace_id == caller_trace and request.parent_id == caller_span
    assert {s.trace_id for s in ours} == {caller_trace}
    released = next(s for s in ours if s.attributes.get("interlock.operation") == "send_event")
    start = next(s for s in ours if s.attributes.get("interlock.operation") == "start")
    assert released.parent_id == start.span_id and released.links == []


def test_json_log_lines_carry_the_ids_of_the_change_and_the_attempt(exporter, tmp_path):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter(tracing.current_ids))
    logger = logging.getLogger("tests.trace_workflows")
    steps_logger = logging.getLogger("engine.steps")
    logger.addHandler(handler)
    steps_logger.addHandler(handler)
    level, steps_level = logger.level, steps_logger.level
    logger.setLevel(logging.INFO)
    steps_logger.setLevel(logging.INFO)
    was, logs.json_lines = logs.json_lines, True
    try:
        with Harness(WORKFLOWS, directory=str(tmp_path)) as h:
            run = h.run("traced", {}, events={"held": "release"})
    finally:
        logs.json_lines = was
        logger.removeHandler(handler)
        steps_logger.removeHandler(handler)
        logger.setLevel(level)
        steps_logger.setLevel(steps_level)
    assert run.status == "succeeded"
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    packing = next(line for line in lines if line["message"].startswith("packing"))
    done = next(line for line in lines if line["message"].endswith("is done"))
    assert packing["run_id"] == done["run_id"] == run.id
    assert packing["workflow"] == "traced" and packing["state"] == "packing" and packing["attempt"] == 1
    assert done["event"] == "packed" and done["task_id"] == packing["task_id"]
    assert len(packing["trace_id"]) == 32 and packing["trace_id"] == done["trace_id"]
    failed = next(line for line in lines if "failed (attempt 1)" in line["message"])
    assert failed["trace_id"] == done["trace_id"] and failed["workflow"] == "traced" and failed["attempt"] == 1
    assert packing["level"] == "INFO" and packing["logger"] == "tests.trace_workflows"
    # A record's own extra= wins over the context; unknown outside a run.
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "plain %s", ("text",), None)
    record.run_id = "r1"
    plain = json.loads(logs.JsonFormatter(tracing.current_ids).format(record))
    assert plain["message"] == "plain text" and plain["run_id"] == "r1" and "trace_id" not in plain


_WITHOUT_OPENTELEMETRY = textwrap.dedent("""
    import json, logging, sys
    {block}
    from engine import logs, tracing
    from engine.testing import Harness
    from sqlalchemy import select
    from engine.models import runs, tasks
    logs.configure(fmt="json")
    with Harness("tests.trace_workflows") as h:
        run = h.run("traced", {{}}, events={{"held": "release"}})
        with h.rt.db.read() as conn:
            stored = conn.execute(select(runs.c.trace_context)).scalars().all()
            stored += conn.execute(select(tasks.c.trace_context)).scalars().all()
    print(json.dumps({{"enabled": tracing.ENABLED, "status": run.status, "stored": stored,
                      "imported": sorted(m for m, v in sys.modules.items() if m.startswith("opentelemetry") and v)}}))
""")


@pytest.mark.parametrize("how", ["not installed", "OTEL_SDK_DISABLED"])
def test_without_opentelemetry_nothing_breaks_and_nothing_is_stored(how):
    block = "sys.modules['opentelemetry'] = None  # as if not installed" if how == "not installed" else ""
    env = clean_env()
    if how == "OTEL_SDK_DISABLED":
        env["OTEL_SDK_DISABLED"] = "true"
    done = subprocess.run([sys.executable, "-c", _WITHOUT_OPENTELEMETRY.format(block=block)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result == {"enabled": False, "status": "succeeded", "stored": [None] * 3,
                      "imported": [] if how == "not installed" else result["imported"]}
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    packing = next(line for line in lines if line["message"].startswith("packing"))
    assert packing["run_id"] and packing["task_id"] and "trace_id" not in packing


def test_setup_keeps_the_applications_provider_and_reads_otel_variables(exporter, monkeypatch):
    provider = trace.get_tracer_provider()
    assert tracing.setup({"OTEL_TRACES_EXPORTER": "console"}) is True
    assert trace.get_tracer_provider() is provider  # not replaced
    script = textwrap.dedent("""
        import logging, sys
        logging.basicConfig()
        from engine import tracing
        from opentelemetry import trace
        print(tracing.setup({}), tracing.setup({"OTEL_TRACES_EXPORTER": "nonesuch"}),
              tracing.setup({"OTEL_TRACES_EXPORTER": "console"}),
              trace.get_tracer_provider().resource.attributes["service.name"])
    """)
    for env_extra, expected in (({}, "False False True interlock"),
                                ({"OTEL_SERVICE_NAME": "shipping"}, "False False True shipping")):
        env = {**clean_env(), **env_extra}
        done = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == expected.split()
        assert "no span exporter named 'nonesuch'" in done.stderr


def test_log_format_setting():
    assert Settings.from_env({"INTERLOCK_LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(ConfigurationError, match="text or json"):
        Settings.from_env({"INTERLOCK_LOG_FORMAT": "xml"})
