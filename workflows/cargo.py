"""Cargo tracking: a container from booking to delivery."""

from datetime import timedelta

from engine import State, Workflow, after, recheck, step

from . import simulators


class CargoShipment(Workflow):
    """A container from booking to delivery.

    External events (``depart``, ``inspect``) come from terminals and port scanners;
    the carrier's feed is checked periodically by a step that answers "not yet"
    (a durable recheck: nothing waits in a thread or a queue in between); customs
    filing is flaky and retried; 30 days in transit without news means lost.
    """

    name, version = "cargo", 1
    # Indexed: the runs page and GET /api/runs filter by them (search.destination=Rotterdam).
    search = {"container": str, "origin": str, "destination": str}

    booked = State(initial=True)
    in_transit = State()
    at_port = State()
    customs = State()
    delivered = State(final=True)
    lost = State(final=True)

    depart = booked.to(in_transit)
    arrive = in_transit.to(at_port, cond="has_manifest")
    inspect = at_port.to(customs)
    cleared = customs.to(delivered)
    held = customs.to(at_port)
    declare_lost = in_transit.to(lost)

    final_status = {"lost": "failed"}
    timeout = after(timedelta(days=30), in_transit, send="declare_lost")

    def has_manifest(self, run):
        return bool(run.data.get("manifest"))

    def on_depart(self, run, vessel=None):
        # An event's data reaches its callbacks by name; the run keeps what it decides to keep.
        if vessel is not None:
            run.data["vessel"] = vessel

    def on_enter_delivered(self, run):
        run.data["delivered"] = True

    @step(in_transit, retries=10, backoff=timedelta(seconds=5), time_limit=timedelta(seconds=30))
    def track(self, run):
        run.data["checks"] = run.data.get("checks", 0) + 1
        if simulators.carrier_position(run.data) == "arrived":
            return "arrive", {"port": run.data.get("destination", "unknown")}
        return recheck(after=timedelta(seconds=run.data.get("check_every_seconds", 600)))

    @step(customs, retries=5, backoff=timedelta(seconds=0.2), time_limit=timedelta(minutes=2),
          on_error="held")
    def file_customs(self, run):
        if simulators.file_customs(run.data, run.attempt):
            return "cleared", {"customs_ref": simulators.reference("CUS", run.id, run.data["container"])}
        run.data["holds_so_far"] = run.data.get("holds_so_far", 0) + 1
        return "held"

    # `interlock run cargo`: delays scaled down so the whole trip takes a few seconds.
    demo_data = {
        "container": "MSCU1234565", "origin": "Shanghai", "destination": "Rotterdam",
        "manifest": ["electronics", "textiles"], "check_every_seconds": 0.3,
        "arrives_after_checks": 3, "customs_outages": 2, "customs_holds": 0,
    }
    demo_events = {"booked": "depart", "at_port": "inspect"}
