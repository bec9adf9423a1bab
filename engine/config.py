"""Settings, read in one place from ``INTERLOCK_*`` environment variables."""

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from .errors import ConfigurationError
from .timeparse import parse_duration

PREFIX = "INTERLOCK_"


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///interlock.db"
    broker_url: str = "memory://"
    workflows: str = "workflows"
    # The safety interval: a task sent to the broker but not claimed within this many seconds
    # is sent again even though nothing says its message was lost (a dead sender, a failed
    # send or a restarted broker re-send it at once). Longer than any backlog should last.
    resend_after: float = 300.0
    # A claimed task whose worker stops renewing its lease is retried after this.
    lease_seconds: float = 15.0
    # How often timers, the outbox and leases are looked at when nothing wakes the loop.
    poll_interval: float = 0.25
    worker_threads: int = 8
    # Threads per worker process that run a step as soon as this process commits the change
    # that entered it, skipping the broker round trip; 0: every step goes through the broker.
    eager_threads: int = 8
    queue: str = "interlock"
    # Levels of RabbitMQ message priority (its queues are declared with x-max-priority): a run's
    # priority orders its step messages there (engine/broker.py). 0: plain queues. Other brokers
    # have none; limits order their waiters by priority on every broker.
    broker_priorities: int = 10
    # "token" (read-write) or "token:ro" / "token:rw", comma-separated; empty: the API is open.
    api_tokens: str = ""
    max_body_bytes: int = 1_048_576
    # Where `interlock dev` and `interlock serve` listen (their --port); 0: any free port.
    port: int = 8000
    # A process whose clock differs from the database server's by more than this many seconds
    # says so in its log (durable times are corrected by the offset either way).
    clock_skew_warn: float = 1.0
    # Finished runs older than this many seconds (since they finished) are deleted by the
    # reconciler, with their history, tasks, timers and signals, unless their workflow sets its
    # own ``retention``; None: kept forever. The variable takes seconds or "30d", "12h", "1h30m".
    retention: float | None = None
    # When set, deleted runs are first written here (JSON Lines, a file per day): engine/archive.py.
    archive_dir: str = ""
    # Runs a bulk action (engine/batches.py) handles per chunk: the cursor moves once per chunk,
    # and a reconciler pass works one chunk, so its other duties wait no longer than that.
    batch_chunk: int = 500
    # The share of each worker process's time that bulk actions may take (0 < share <= 1): after
    # a pass that worked chunks for t seconds, the next waits t * (1 / share - 1), so that a large
    # batch leaves the running workflows most of the machine.
    batch_share: float = 0.25
    # The log lines of `interlock worker`, `serve` and `dev`: "text", or "json" (one object per
    # line, with the run, workflow, event, task and trace ids when known: engine/logs.py).
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "Settings":
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_config(cls, config: Mapping, environ=None) -> "Settings":
        """The ``INTERLOCK_*`` keys of ``config`` over the environment, converted as variables are:
        config files and Flask config deliver strings, so a value is read as its ``str``."""
        names = {PREFIX + f.name.upper() for f in fields(cls)}
        given = {k: v for k, v in config.items() if k.startswith(PREFIX) and v is not None}
        unknown = sorted(given.keys() - names)
        if unknown:
            raise ConfigurationError(f"{', '.join(unknown)}: no such setting (known: {', '.join(sorted(names))})")
        environ = os.environ if environ is None else environ
        return cls.from_env({**environ, **{k: str(v) for k, v in given.items()}})

    def replace(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def workflow_modules(self) -> list[str]:
        return [m.strip() for m in self.workflows.split(",") if m.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _convert(f, raw: str):
    if f.name == "log_format":
        value = raw.strip().lower()
        if value not in ("text", "json"):
            raise ConfigurationError(f"{PREFIX}LOG_FORMAT={raw!r}: give text or json")
        return value
    if f.name == "batch_share":
        try:
            share = float(raw)
        except ValueError:
            share = math.nan
        if not 0 < share <= 1:
            raise ConfigurationError(f"{PREFIX}BATCH_SHARE={raw!r}: give a share of the time, more than 0 and at most 1")
        return share
    if f.name == "retention":
        if raw.strip().lower() in ("none", "forever"):
            return None
        seconds = parse_duration(raw)
        if seconds is None:
            raise ConfigurationError(f"{PREFIX}RETENTION={raw!r} is not a duration: give seconds or amounts "
                                     "with units, like 30d, 12h or 1h30m (none: keep runs forever)")
        return seconds
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int}.get(f.type, str)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigurationError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from None
    # Every number here is a size, a count or a duration: nan or inf would never compare as meant.
    if kind is not str and not (math.isfinite(value) and value >= 0):
        raise ConfigurationError(f"{PREFIX}{f.name.upper()}={raw!r} must be a finite number, 0 or more")
    if f.name == "broker_priorities" and value > 255:
        raise ConfigurationError(f"{PREFIX}BROKER_PRIORITIES={raw!r}: RabbitMQ takes at most 255 levels (0: none)")
    return value
