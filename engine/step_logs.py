"""What a step logs through Python's ``logging`` during its attempt, kept in the attempt's history
entry (``detail["logs"]``) so the run page can show it under the attempt.

One handler on the root logger collects the records of the threads that are running a step
(an ``async def`` step runs its loop on the same thread). Only records that the loggers let
through are seen (the root logger's level is WARNING unless the application sets another);
the engine's own records are left out. Bounded: at most ``MAX_RECORDS`` records of at most
``MAX_MESSAGE`` characters each and ``MAX_CHARS`` in all, and the count of those left out.
"""

import logging
import threading
from contextlib import contextmanager

MAX_RECORDS = 50
MAX_MESSAGE = 1000
MAX_CHARS = 16000   # all messages of one attempt together

_active: dict[int, "Captured"] = {}
_lock = threading.Lock()
_installed = False


class Captured:
    def __init__(self):
        self.records: list[dict] = []
        self.dropped = 0
        self.chars = 0

    def add(self, record: logging.LogRecord) -> None:
        if len(self.records) >= MAX_RECORDS:
            self.dropped += 1
            return
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string in the step's own log call
            message = f"{record.msg!r} (unformattable: {exc})"
        if record.exc_info and record.exc_info[1] is not None:
            message += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        if len(message) > MAX_MESSAGE:
            message = message[:MAX_MESSAGE] + "…"
        if self.chars + len(message) > MAX_CHARS:
            self.dropped += 1
            return
        self.chars += len(message)
        self.records.append({"at": round(record.created, 6), "level": record.levelname,
                             "logger": record.name, "message": message})

    def result(self) -> list | None:
        """The records for the history entry (None when there were none)."""
        if not self.records:
            return None
        if self.dropped:
            return self.records + [{"at": self.records[-1]["at"], "level": "INFO", "logger": __name__,
                                    "message": f"{self.dropped} more records left out (at most {MAX_RECORDS} are kept)"}]
        return list(self.records)


class _Handler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        captured = _active.get(record.thread)
        if captured is None or record.name == "engine" or record.name.startswith("engine."):
            return
        captured.add(record)


def _install() -> None:
    global _installed
    with _lock:
        if not _installed:
            logging.getLogger().addHandler(_Handler(logging.NOTSET))
            _installed = True


@contextmanager
def capture():
    """Collect this thread's log records until the block ends; yields the ``Captured``."""
    _install()
    ident = threading.get_ident()
    captured = Captured()
    previous = _active.get(ident)
    _active[ident] = captured
    try:
        yield captured
    finally:
        if previous is None:
            _active.pop(ident, None)
        else:
            _active[ident] = previous
