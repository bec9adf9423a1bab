"""A workflow with a parallel state, whose runs store comma-joined leaves (``in_review,packing``).

Its leaf names hold ``_``, a LIKE wildcard: filters by state must match them literally.
"""

from engine import State, Workflow


class Shipment(Workflow):
    """Paperwork and goods go on side by side; the run succeeds when both are through."""

    name, version = "test_parallel", 1

    class shipping(State.Parallel, initial=True):
        class paperwork(State.Compound):
            in_review = State(initial=True)
            in_order = State(final=True)
            approve = in_review.to(in_order)

        class goods(State.Compound):
            packing = State(initial=True)
            packed = State(final=True)
            pack = packing.to(packed)
