"""Version 2 of ``upgrade_shipment``, deployed beside version 1 (tests/test_upgrade.py): a new
``weighing`` state between packing and labelling, and its own packing step."""

from datetime import timedelta

from engine import State, Workflow, after, step


class ShipmentV2(Workflow):
    name, version = "upgrade_shipment", 2

    waiting_pickup = State(initial=True)
    packing = State()
    weighing = State()
    labelling = State()
    in_transit = State()
    delivered = State(final=True)

    pick_up = waiting_pickup.to(packing)
    packed = packing.to(weighing)
    weighed = weighing.to(labelling)
    labelled = labelling.to(in_transit)
    arrive = in_transit.to(delivered)

    transit_time = after(timedelta(seconds=0.2), in_transit, send="arrive")

    @step(packing, backoff=timedelta(seconds=0.05))
    def pack(self, run):
        return "packed", {"packed_by": "v2"}

    @step(weighing, backoff=timedelta(seconds=0.05))
    def weigh(self, run):
        return {"kg": 12}

    @step(labelling, backoff=timedelta(seconds=0.05))
    def label(self, run):
        return "labelled"
