"""Parcel delivery, in two versions: what moving runs from one version to the next looks like.

Version 2 renames ``shipped`` to ``in_transit``, drops the separate label printing (the packer
prints the label), waits five days for news instead of three, and retries packing more often.
``interlock diff delivery 1 2`` shows it; ``interlock migrate plan delivery --from 1 --to 2
--map shipped=in_transit`` says what it means for the runs in flight.
"""

from datetime import timedelta

from engine import State, Workflow, after, recheck, step

from . import simulators


class DeliveryV1(Workflow):
    """A parcel from order to doorstep: paid, packed, labelled, shipped, delivered."""

    name, version = "delivery", 1
    search = {"parcel": str}

    ordered = State(initial=True)
    packing = State()
    labelling = State()
    shipped = State()
    delivered = State(final=True)
    returned = State(final=True)

    pay = ordered.to(packing)
    packed = packing.to(labelling)
    labelled = labelling.to(shipped)
    deliver = shipped.to(delivered)
    give_up = shipped.to(returned)

    final_status = {"returned": "failed"}
    patience = after(timedelta(days=3), shipped, send="give_up")

    @step(packing, retries=3, backoff=timedelta(seconds=0.2))
    def pack(self, run):
        return "packed", {"box": simulators.reference("BOX", run.id)}

    @step(labelling, retries=3, backoff=timedelta(seconds=0.2))
    def print_label(self, run):
        # The label printer is shared: not ready yet means look again a little later.
        run.data["label_checks"] = run.data.get("label_checks", 0) + 1
        if run.data["label_checks"] < run.data.get("printer_busy_checks", 0) + 1:
            return recheck(after=timedelta(seconds=run.data.get("printer_wait_seconds", 60)))
        return "labelled", {"label": simulators.reference("LBL", run.id)}

    demo_data = {"parcel": "P-1001", "printer_busy_checks": 1, "printer_wait_seconds": 0.2}
    demo_events = {"ordered": "pay", "shipped": "deliver"}


class DeliveryV2(Workflow):
    """A parcel from order to doorstep: paid, packed and labelled in one go, in transit, delivered."""

    name, version = "delivery", 2
    search = {"parcel": str}

    ordered = State(initial=True)
    packing = State()
    in_transit = State()
    delivered = State(final=True)
    returned = State(final=True)

    pay = ordered.to(packing)
    packed = packing.to(in_transit)
    deliver = in_transit.to(delivered)
    give_up = in_transit.to(returned)

    final_status = {"returned": "failed"}
    patience = after(timedelta(days=5), in_transit, send="give_up")

    @step(packing, retries=5, backoff=timedelta(seconds=0.2))
    def pack(self, run):
        return "packed", {"box": simulators.reference("BOX", run.id),
                          "label": simulators.reference("LBL", run.id)}

    demo_data = {"parcel": "P-1001"}
    demo_events = {"ordered": "pay", "in_transit": "deliver"}
