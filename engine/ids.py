"""Time-ordered ids: sorting by id sorts by creation, so keyset pagination needs no extra index."""

import os
import time

# A run's id is made from its created_at (the database's clock, see engine/clock.py): a range of
# creation times is also a range of ids (which the primary key serves), widened by this many
# seconds for ids made by their host's own clock (before that, or by ``new_id()`` without a time).
ID_SLACK = 300.0
_MAX_MS = 16**12 - 1


def new_id(at: float | None = None) -> str:
    """32 hex chars: 48-bit millisecond timestamp (``at``, default now), then 80 random bits (like UUIDv7)."""
    return f"{int((time.time() if at is None else at) * 1000):012x}{os.urandom(10).hex()}"


def id_at(epoch: float, fill: str) -> str:
    """The first (``fill="0"``) or last (``"f"``) id ``new_id`` could make at ``epoch`` seconds."""
    return f"{int(min(max(epoch * 1000, 0), _MAX_MS)):012x}" + fill * 20
