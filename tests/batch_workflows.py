"""Workflows acted on in bulk (tests/test_batches.py)."""

from engine import State, Workflow


class Parcel(Workflow):
    """Waits; ``hold`` puts it on hold, and only a held parcel takes ``release``."""

    name, version = "batch_parcel", 1
    search = {"customer": str, "weight": float}

    waiting = State(initial=True)
    held = State()
    delivered = State(final=True)

    hold = waiting.to(held)
    release = held.to(waiting)
    deliver = waiting.to(delivered)
