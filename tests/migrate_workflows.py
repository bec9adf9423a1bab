"""Two versions of a shipment, for moving runs between versions (tests/test_moving.py).

Version 2 renames ``in_transit`` to ``sailing`` (same step, more retries; its timer waits 45
days instead of 30), drops the ``unload`` activity of ``at_port`` for a step, renames the
customs step, and adds a reminder timer to ``booked``.
"""

from datetime import timedelta

from engine import State, Workflow, activity, after, map_, recheck, step


class ShipmentV1(Workflow):
    name, version = "mig_shipment", 1

    booked = State(initial=True)
    in_transit = State()
    at_port = State()
    customs = State()
    delivered = State(final=True)
    lost = State(final=True)

    depart = booked.to(in_transit)
    arrive = in_transit.to(at_port)
    unloaded = at_port.to(customs)
    cleared = customs.to(delivered)
    declare_lost = in_transit.to(lost)
    final_status = {"lost": "failed"}

    lost_after = after(timedelta(days=30), in_transit, send="declare_lost")
    unload = activity(at_port, name="mig_unload", default="unloaded")

    @step(in_transit, retries=0)
    def track(self, run):
        if run.data.get("track_fails"):
            raise RuntimeError("the carrier's feed changed its format")
        if run.data.get("arrives"):
            return "arrive", {"tracked_by": 1}
        return recheck(after=timedelta(hours=1))

    @step(customs, retries=1)
    def file(self, run):
        return "cleared"

    demo_data = {"arrives": True}
    demo_events = {"booked": "depart"}


class ShipmentV2(Workflow):
    name, version = "mig_shipment", 2

    booked = State(initial=True)
    sailing = State()
    at_port = State()
    customs = State()
    delivered = State(final=True)
    lost = State(final=True)

    depart = booked.to(sailing)
    arrive = sailing.to(at_port)
    unloaded = at_port.to(customs)
    cleared = customs.to(delivered)
    declare_lost = sailing.to(lost)
    final_status = {"lost": "failed"}

    lost_after = after(timedelta(days=45), sailing, send="declare_lost")
    nudge = after(timedelta(days=2), booked, send="depart")

    @step(sailing, retries=5)
    def track(self, run):
        if run.data.get("arrives"):
            return "arrive", {"tracked_by": 2}
        return recheck(after=timedelta(hours=1))

    @step(at_port, retries=1)
    def unload_crane(self, run):
        return "unloaded", {"crane": True}

    @step(customs, retries=1)
    def file_v2(self, run):
        return "cleared", {"filed_by": 2}

    demo_data = {"arrives": True}
    demo_events = {"booked": "depart"}


class ShipmentV3(Workflow):
    """Version 1 with ``in_transit`` renamed ``voyage`` and a longer visibility timeout for unloading."""

    name, version = "mig_shipment", 3

    booked = State(initial=True)
    voyage = State()
    at_port = State()
    customs = State()
    delivered = State(final=True)
    lost = State(final=True)

    depart = booked.to(voyage)
    arrive = voyage.to(at_port)
    unloaded = at_port.to(customs)
    cleared = customs.to(delivered)
    declare_lost = voyage.to(lost)
    final_status = {"lost": "failed"}

    lost_after = after(timedelta(days=30), voyage, send="declare_lost")
    unload = activity(at_port, name="mig_unload", default="unloaded", visibility_timeout=timedelta(minutes=5))

    @step(voyage, retries=2)
    def track(self, run):
        return "arrive", {"tracked_by": 3}

    @step(customs, retries=1)
    def file(self, run):
        return "cleared", {"filed_by": 3}

    demo_data = {}
    demo_events = {"booked": "depart"}


class ClaimV1(Workflow):
    """A claim reviewed in one step."""

    name, version = "mig_claim", 1

    review = State(initial=True)
    paid = State(final=True)
    rejected = State(final=True)

    approve = review.to(paid)
    reject = review.to(rejected)
    final_status = {"rejected": "cancelled"}
    demo_data = {}
    demo_events = {"review": "approve"}


class ClaimV2(Workflow):
    """The review split in two: a check, then an approval."""

    name, version = "mig_claim", 2

    class review(State.Compound):
        checking = State(initial=True)
        approving = State()

        checked = checking.to(approving)

    paid = State(final=True)
    rejected = State(final=True)

    approve = review.to(paid)
    reject = review.to(rejected)
    final_status = {"rejected": "cancelled"}
    demo_data = {}
    demo_events = {"checking": "checked", "approving": "approve"}


class ConsignmentV1(Workflow):
    """A consignment that ships each of its parcels as a shipment run."""

    name, version = "mig_consignment", 1

    shipping = State(initial=True)
    done = State(final=True)

    shipped = shipping.to(done)
    parcels = map_(shipping, items="parcels", workflow="mig_shipment", version=1, on_done="shipped")
    demo_data = {"parcels": []}
    demo_events = {}


class ConsignmentV2(Workflow):
    """The parcels shipped by one carrier call instead of a run each."""

    name, version = "mig_consignment", 2

    shipping = State(initial=True)
    done = State(final=True)

    shipped = shipping.to(done)

    @step(shipping)
    def ship_all(self, run):
        return "shipped"

    demo_data = {"parcels": []}
    demo_events = {}
