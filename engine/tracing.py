"""OpenTelemetry spans of API requests, changes to runs and step attempts (optional).

Without the ``opentelemetry-api`` package (or with ``OTEL_SDK_DISABLED=true``) ``ENABLED`` is
False, decided once at import, and every hook is skipped by its caller's test of ``ON``.
With the API but no tracer provider set, the hooks cost a check each and record nothing.

What is traced (docs/architecture.md, "Tracing and logs"):

- ``SERVER`` span per API request (``api/__init__.py``), child of an incoming ``traceparent``;
- ``INTERNAL`` span per change a transaction makes to a run (``transitions.apply``, and each run
  of a group commit ``apply_many``, a timer batch or a bulk action: one span per run changed);
- ``CONSUMER`` span per step attempt, from the call of the step's function to its return.

How the context travels: a run's start span is stored with the run (``runs.trace_context``,
W3C ``traceparent``) and each task stores the span of the change that created it
(``tasks.trace_context``). A step attempt is a child of its task's span, wherever and whenever
it runs; the change applying its result is a child of the attempt. Any other change is a child
of the current span when that is in the run's trace, else of the run's start span (linked to
the current span: an API request sending an event to a run started by another request), so
every span of a run is in one trace. A run started inside another run's change (a child run)
joins that change's trace.

``setup()`` builds the SDK's tracer provider from the standard ``OTEL_*`` variables for
``interlock worker``, ``serve`` and ``dev``, unless the application already set one.
"""

import logging
import os
import time

from . import logs

log = logging.getLogger(__name__)


def _disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


try:
    if _disabled():
        raise ImportError("OTEL_SDK_DISABLED")
    from opentelemetry import context as _otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:
    trace = None

ENABLED = trace is not None
# A hook's caller tests this: spans may be recorded, or the log context is read (JSON lines).
ON = ENABLED

if ENABLED:
    _tracer = trace.get_tracer("interlock")
    _propagator = TraceContextTextMapPropagator()
    _NO_PROVIDER = getattr(trace, "ProxyTracerProvider", ())  # what get_tracer_provider() is until one is set
    _SERVER, _CONSUMER, _INTERNAL = trace.SpanKind.SERVER, trace.SpanKind.CONSUMER, trace.SpanKind.INTERNAL
_live = False
_next_look = 0.0


def log_context_wanted() -> None:
    """JSON log lines are written: keep the log context even without OpenTelemetry."""
    global ON
    ON = True


def recording() -> bool:
    """A tracer provider is set (by ``setup`` or the application): spans are recorded."""
    global _live
    if not _live and ENABLED and not isinstance(trace.get_tracer_provider(), _NO_PROVIDER):
        _live = True
    return _live


def _soon() -> bool:
    """``recording()`` for the hot path: while no provider is set, looked up once a second."""
    global _next_look
    if _live:
        return True
    now = time.monotonic()
    if now < _next_look:
        return False
    _next_look = now + 1.0
    return recording()


# -- context <-> traceparent ---------------------------------------------------------------

def traceparent() -> str | None:
    """The current span's context as a W3C ``traceparent``, or None (no valid span)."""
    if not _soon():
        return None
    carrier: dict = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def _span_of(stored: str | None):
    """The span context stored as ``traceparent``, or None."""
    if not stored:
        return None
    found = trace.get_current_span(_propagator.extract({"traceparent": stored})).get_span_context()
    return found if found.is_valid else None


def _context_of(span_context):
    return trace.set_span_in_context(trace.NonRecordingSpan(span_context))


def detach(token) -> None:
    if token is not None:
        _otel_context.detach(token)


def current_ids() -> tuple[str, str] | None:
    """(trace id, span id) in hex of the current span, for log lines; None outside any."""
    found = trace.get_current_span().get_span_context()
    if not found.is_valid:
        return None
    return trace.format_trace_id(found.trace_id), trace.format_span_id(found.span_id)


def _parent(stored: str | None, given=None):
    """(parent context, links) of a change: ``given`` (a step attempt's span context), else the
    current span if it is in the run's trace, else the run's stored span linked to the current."""
    if given is not None and given.is_valid:
        return _context_of(given), None
    current = trace.get_current_span().get_span_context()
    run = _span_of(stored)
    if run is None or (current.is_valid and current.trace_id == run.trace_id):
        return None, None  # the current context (or a new trace)
    return _context_of(run), [trace.Link(current)] if current.is_valid else None


# -- changes --------------------------------------------------------------------------------

def _operation(op) -> str:
    """StepDone -> step_done: the operation's kind, as span name and attribute (a bulk action's
    item: its action's)."""
    inner = getattr(op, "op", None)
    name = type(inner if inner is not None and hasattr(inner, "perform") else op).__name__.lstrip("_")
    return "".join("_" + c.lower() if c.isupper() and i else c.lower() for i, c in enumerate(name))


def spans(batch: bool = False) -> "Spans | None":
    """The spans of a transaction about to change runs, or None when nothing would read them."""
    if _soon() or logs.json_lines:
        return Spans(batch)
    return None


class Spans:
    """The spans of one transaction's changes, one per run, ended once it committed (or failed).

    A transaction the database retries performs its changes again: a run's span is reused."""

    __slots__ = ("started", "open", "batch", "live", "logged")

    def __init__(self, batch: bool = False):
        self.started = time.time_ns()
        self.open: dict = {}  # run id (None: a start) -> span
        self.batch = batch
        self.live = _live
        self.logged = logs.json_lines

    def starting(self, op):
        """Before a start creates its run: the start's span becomes current, so the new run (and
        its tasks) store it. Returns the token to detach."""
        span = self.open.get(None)
        if span is None and self.live:
            cls = getattr(op, "cls", None) or getattr(getattr(op, "start", None), "cls", None)  # a bound row's
            workflow = getattr(cls, "workflow_name", None)
            span = self.open[None] = _tracer.start_span(
                f"start {workflow}" if workflow else "start", kind=_INTERNAL, start_time=self.started)
        return _otel_context.attach(trace.set_span_in_context(span)) if span is not None else None

    def perform(self, change, op, token=None):
        """Perform ``op`` on ``change`` and finish it under the run's span; its outcome."""
        row = change.row
        key = None if change.new else row["id"]
        span = self.open.get(key)
        operation = "start" if change.new else _operation(op)
        if span is None and self.live:
            parent, links = _parent(row.get("trace_context"), getattr(op, "trace", None))
            span = self.open[key] = _tracer.start_span(
                f"{operation} {row['workflow']}", context=parent, kind=_INTERNAL, links=links,
                start_time=self.started)
        if span is not None and token is None:
            token = _otel_context.attach(trace.set_span_in_context(span))
        before = change.leaves() if span is not None and not change.new else None
        log_token = logs.bind(run_id=row["id"], workflow=row["workflow"], version=row["version"], event=_event(op),
                              task_id=getattr(op, "task_id", None)) if self.logged else None
        try:
            op.perform(change)
            outcome = change.finish()
        finally:
            if log_token is not None:
                logs.reset(log_token)
            if token is not None:
                _otel_context.detach(token)
        if span is not None and span.is_recording():
            _describe(span, operation, op, change, outcome, before, self.batch)
        return outcome

    def end(self, error: BaseException | None = None) -> None:
        for span in self.open.values():
            if error is not None:  # rolled back (a group commit's items are then applied one by one)
                span.set_attribute("interlock.rolled_back", True)
                span.record_exception(error)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
            span.end()
        self.open.clear()


def _event(op) -> str | None:
    """The event an operation sends: an event's, or the one a step's result names."""
    event = getattr(op, "event", None)
    if event is None:
        event = getattr(getattr(op, "result", None), "event", None)
    return event if isinstance(event, str) else None


def _describe(span, operation, op, change, outcome, before, batch) -> None:
    run = outcome.run
    events = [h["event"] for h in outcome.history if h["kind"] == "transition" and h["event"]]
    attributes = {
        "interlock.operation": operation, "interlock.run_id": run["id"], "interlock.workflow": run["workflow"],
        "interlock.version": run["version"], "interlock.state": run["state"], "interlock.status": run["status"],
        "interlock.history": [h["kind"] for h in outcome.history],
    }
    if before is not None:
        attributes["interlock.state.before"] = before
    event = _event(op) or (events[0] if events else None)
    if event:
        attributes["interlock.event"] = event
    if len(events) > 1:
        attributes["interlock.events"] = events
    causes = [h["cause"] for h in outcome.history if h["cause"]]
    if causes:
        attributes["interlock.cause"] = causes[0]
    for name in ("task_id", "attempt"):
        value = getattr(op, name, None)
        if value is not None:
            attributes[f"interlock.{name}"] = value
    if outcome.history:
        attributes["interlock.seq"] = outcome.history[-1]["seq"]
    if batch:
        attributes["interlock.batched"] = True
    span.set_attributes(attributes)


# -- step attempts ----------------------------------------------------------------------------

def attempt(row: dict, via: str) -> "Attempt | None":
    """The span and log context of a step attempt about to call its function, or None."""
    if _soon() or logs.json_lines:
        return Attempt(row, via)
    return None


class Attempt:
    """A step attempt's span (current while the function runs) and its log context."""

    __slots__ = ("span", "token", "log_token")

    def __init__(self, row: dict, via: str):
        self.span = self.token = self.log_token = None
        if _live:
            stored = _span_of(row.get("task_trace_context")) or _span_of(row.get("trace_context"))
            self.span = _tracer.start_span(
                f"step {row['workflow']}.{row['name']}", kind=_CONSUMER,
                context=_context_of(stored) if stored is not None else None,
                attributes={"interlock.run_id": row["run_id"], "interlock.workflow": row["workflow"],
                            "interlock.version": row["version"], "interlock.state": row["state"],
                            "interlock.step": row["name"], "interlock.task_id": row["id"],
                            "interlock.attempt": row["attempt"], "interlock.via": via})
            self.token = _otel_context.attach(trace.set_span_in_context(self.span))
        if logs.json_lines:
            self.log_token = logs.bind(run_id=row["run_id"], workflow=row["workflow"], version=row["version"],
                                       task_id=row["id"], state=row["state"], attempt=row["attempt"])

    def done(self, outcome: str, error: BaseException | None = None):
        """The function returned (``succeeded``, ``recheck``) or raised (``failed``): the span
        ends; its context, for the change applying the result."""
        if self.log_token is not None:
            logs.reset(self.log_token)
        if self.span is None:
            return None
        _otel_context.detach(self.token)
        self.span.set_attribute("interlock.outcome", outcome)
        if error is not None:
            self.span.record_exception(error)
            self.span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.span.end()
        return self.span.get_span_context()


# -- API requests --------------------------------------------------------------------------------

def instrument(app) -> None:
    """A SERVER span per request of the Flask ``app``, child of the request's ``traceparent``."""
    if not ENABLED:
        return
    from flask import g, request

    def begin():
        if not recording():
            return
        route = request.url_rule.rule if request.url_rule is not None else None
        span = _tracer.start_span(
            f"{request.method} {route}" if route else request.method, kind=_SERVER,
            context=_propagator.extract(request.headers),
            attributes={"http.request.method": request.method, "url.path": request.path,
                        **({"http.route": route} if route else {})})
        g._interlock_span = span, _otel_context.attach(trace.set_span_in_context(span))

    def status(response):
        found = g.get("_interlock_span")
        if found is not None:
            found[0].set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                found[0].set_status(trace.Status(trace.StatusCode.ERROR))
        return response

    def end(error):
        found = g.pop("_interlock_span", None)
        if found is None:
            return
        span, token = found
        if error is not None:
            span.record_exception(error)
            span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        _otel_context.detach(token)
        span.end()

    app.before_request_funcs.setdefault(None, []).insert(0, begin)
    app.after_request(status)
    app.teardown_request(end)


# -- the SDK, from OTEL_* ---------------------------------------------------------------------------

def setup(environ=None) -> bool:
    """Set the SDK's tracer provider with the exporters ``OTEL_TRACES_EXPORTER`` names (found by
    their ``opentelemetry_traces_exporter`` entry points: ``console``, ``otlp``, ...), a batch
    span processor each, and the resource of ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES``.
    Unset, ``otlp`` when ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`` is set, else nothing. A provider
    the application set is kept. True when spans are recorded."""
    environ = os.environ if environ is None else environ
    if not ENABLED:
        if environ.get("OTEL_TRACES_EXPORTER", "none").strip() not in ("", "none") and not _disabled():
            log.warning("OTEL_TRACES_EXPORTER is set but opentelemetry-api is not installed: no traces "
                        "(pip install 'interlock[tracing]')")
        return False
    if recording():
        return True
    names = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names and (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        names = "otlp"
    names = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    if not names:
        return False
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_TRACES_EXPORTER=%s but opentelemetry-sdk is not installed: no traces "
                    "(pip install 'interlock[tracing]')", ",".join(names))
        return False
    from importlib.metadata import entry_points

    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "interlock"}))
    exporters = []
    for name in names:
        found = list(entry_points(group="opentelemetry_traces_exporter", name=name))
        if not found:
            log.warning("no span exporter named %r is installed (OTEL_TRACES_EXPORTER); for OTLP: "
                        "pip install opentelemetry-exporter-otlp", name)
            continue
        exporters.append(found[0].load()())
    if not exporters:
        return False
    provider = TracerProvider(resource=resource)
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return recording()
