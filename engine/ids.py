"""Time-ordered ids: sorting by id sorts by creation, so keyset pagination needs no extra index."""

import os
import threading
import time

# A run's id is made from its created_at (the database's clock, see engine/clock.py): a range of
# creation times is also a range of ids (which the primary key serves), widened by this many
# seconds for ids made by their host's own clock (before that, or by ``new_id()`` without a time).
ID_SLACK = 300.0
_MAX_MS = 16**12 - 1


_last = [0, 0]  # this process's last id: its millisecond and its 80 low bits
_lock = threading.Lock()


def new_id(at: float | None = None) -> str:
    """32 hex chars: 48-bit millisecond timestamp (``at``, default now), then 80 random bits (like
    UUIDv7). Within one millisecond a process's ids go up (the low bits of the one before, plus
    a random step), so that ids made one after another sort in that order."""
    ms = int((time.time() if at is None else at) * 1000)
    low = int.from_bytes(os.urandom(10), "big")
    with _lock:
        if ms == _last[0] and low <= _last[1]:
            low = _last[1] + 1 + (low >> 60)  # after the last one, by a random step
            if low >= 1 << 80:  # the millisecond is full: borrow the next
                ms, low = ms + 1, low & ((1 << 79) - 1)
        if ms >= _last[0]:
            _last[0], _last[1] = ms, low
    return f"{ms:012x}{low:020x}"


def id_at(epoch: float, fill: str) -> str:
    """The first (``fill="0"``) or last (``"f"``) id ``new_id`` could make at ``epoch`` seconds."""
    return f"{int(min(max(epoch * 1000, 0), _MAX_MS)):012x}" + fill * 20
