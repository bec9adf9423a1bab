"""The process's log lines: the default text format, or one JSON object per line.

``INTERLOCK_LOG_FORMAT=json`` (``interlock worker``, ``serve``, ``dev``) writes each record as
one JSON object: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``, and when known
``run_id``, ``workflow``, ``event``, ``task_id``, ``state``, ``attempt``, ``trace_id`` and
``span_id``; an exception's traceback under ``exception``. The ids come from the record's own
``extra=`` first, then from the log context the transition function and the step executor set
around a change and a step attempt (``context``), then (``trace_id``, ``span_id``) from the
current OpenTelemetry span. A step's own ``logging`` calls carry its run's ids too.

The log context is kept only while something reads it (JSON lines, or tracing): with the text
format and OpenTelemetry absent, nothing is set on the hot path.
"""

import contextvars
import json
import logging
import time

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# The keys a record's ``extra=`` or the log context may give, in the order they are written.
FIELDS = ("run_id", "workflow", "version", "event", "task_id", "state", "attempt")

# {field: value} of the change or step attempt running in this thread (None: nothing known).
_context: contextvars.ContextVar = contextvars.ContextVar("interlock_log_context", default=None)
# Set by ``configure`` when the JSON format is chosen: the transition function then keeps the context.
json_lines = False


def context() -> dict | None:
    return _context.get()


def bind(**fields):
    """Set the log context (over the enclosing one's fields); a token for ``reset``."""
    outer = _context.get()
    return _context.set({**outer, **fields} if outer else fields)


def reset(token) -> None:
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, trace_ids=None):
        super().__init__()
        # () -> (trace_id, span_id) as hex of the current span, or None (engine/tracing.py).
        self.trace_ids = trace_ids

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": _iso(record.created), "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        known = _context.get() or {}
        for name in FIELDS:
            value = record.__dict__.get(name, known.get(name))
            if value is not None:
                out[name] = value
        ids = self.trace_ids() if self.trace_ids is not None else None
        if ids is None and known.get("trace_id"):
            ids = known["trace_id"], known.get("span_id")
        if ids is not None:
            out["trace_id"], out["span_id"] = ids
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1e6):06d}Z"


def configure(level=logging.INFO, fmt: str = "text") -> None:
    """The root logger's format: ``text`` (the default) or ``json``."""
    global json_lines
    if fmt == "json":
        from . import tracing

        handler = logging.StreamHandler()
        handler.setFormatter(JsonFormatter(tracing.current_ids if tracing.ENABLED else None))
        logging.basicConfig(level=level, handlers=[handler], force=True)
        json_lines = True
        tracing.log_context_wanted()
    else:
        logging.basicConfig(level=level, format=TEXT_FORMAT)
