"""Time-ordered ids: sorting by id sorts by creation, so keyset pagination needs no extra index."""

import os
import time


def new_id() -> str:
    """32 hex chars: 48-bit millisecond timestamp, then 80 random bits (like UUIDv7)."""
    return f"{int(time.time() * 1000):012x}{os.urandom(10).hex()}"
