"""Version 1 of a workflow for the upgrade tests (tests/test_upgrade.py).

It uses only what the engine offered at its first schema revision (0001), so that engine
can start runs of it too: those runs are then upgraded to the current schema and finished
by the current engine.
"""

import os
from datetime import timedelta

from engine import State, Workflow, after, recheck, step


class ShipmentV1(Workflow):
    """Picked up (an outside event), packed (a step that rechecks), labelled (a step that fails
    while ``data["flag"]`` names a file that exists; no retries: the run fails until retried), in
    transit for half a second (a timer), delivered."""

    name, version = "upgrade_shipment", 1

    waiting_pickup = State(initial=True)
    packing = State()
    labelling = State()
    in_transit = State()
    delivered = State(final=True)

    pick_up = waiting_pickup.to(packing)
    packed = packing.to(labelling)
    labelled = labelling.to(in_transit)
    skip_label = labelling.to(in_transit)
    arrive = in_transit.to(delivered)

    label_deadline = after(timedelta(hours=1), labelling, send="skip_label")
    transit_time = after(timedelta(seconds=0.5), in_transit, send="arrive")

    @step(packing, retries=2, backoff=timedelta(seconds=0.05))
    def pack(self, run):
        run.data["checks"] = run.data.get("checks", 0) + 1
        if run.data["checks"] < run.data.get("checks_needed", 1):
            return recheck(after=timedelta(seconds=0.2))
        return "packed", {"packed_by": "v1"}

    @step(labelling, retries=0)
    def label(self, run):
        if os.path.exists(run.data.get("flag", "")):
            raise RuntimeError("label printer jammed")
        return "labelled"
