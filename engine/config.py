"""Settings, read in one place from ``INTERLOCK_*`` environment variables."""

import os
from dataclasses import dataclass, fields, replace

from .errors import ConfigurationError

PREFIX = "INTERLOCK_"


@dataclass(frozen=True)
class Settings:
    database_url: str = "sqlite:///interlock.db"
    broker_url: str = "memory://"
    workflows: str = "workflows"
    # A task sent to the broker but not claimed within this many seconds is sent again.
    resend_after: float = 5.0
    # A claimed task whose worker stops renewing its lease is retried after this.
    lease_seconds: float = 15.0
    # How often timers, the outbox and leases are looked at when nothing wakes the loop.
    poll_interval: float = 0.25
    worker_threads: int = 8
    queue: str = "interlock"
    # "token" (read-write) or "token:ro" / "token:rw", comma-separated; empty: the API is open.
    api_tokens: str = ""
    max_body_bytes: int = 1_048_576

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

    def replace(self, **changes) -> "Settings":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def workflow_modules(self) -> list[str]:
        return [m.strip() for m in self.workflows.split(",") if m.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


def _convert(f, raw: str):
    kind = f.type if isinstance(f.type, type) else {"float": float, "int": int}.get(f.type, str)
    try:
        return kind(raw)
    except ValueError:
        raise ConfigurationError(f"{PREFIX}{f.name.upper()}={raw!r} is not a valid {kind.__name__}")
