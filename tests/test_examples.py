"""Every shipped example workflow runs to its end on every backend."""

import pytest

from engine.runner import follow
from engine.testing import Harness, fast_forward
from workflows.cargo import CargoShipment
from workflows.orders import REVIEW_LIMIT, OrderPipeline

from .conftest import wait_until


def transitions(rt, run_id):
    return [(h.event, h.source, h.target, h.cause) for h in rt.history(run_id) if h.kind == "transition"]


def drive(rt, workflow, data, events, timeout=20):
    run = rt.start(workflow, data)
    return follow(rt, run.id, events=events, timeout=timeout, fallback_poll=0.05, event_delay=0)


def test_cargo_demo_is_delivered(interlock):
    with interlock.worker(4):
        final = drive(interlock, "cargo", CargoShipment.demo_data, CargoShipment.demo_events)
    assert (final.status, final.state) == ("succeeded", "delivered")
    assert [t[0] for t in transitions(interlock, final.id)] == ["depart", "arrive", "inspect", "cleared"]
    history = interlock.history(final.id)
    rechecks = [h for h in history if h.kind == "step_rechecked"]
    assert len(rechecks) == CargoShipment.demo_data["arrives_after_checks"] - 1
    customs = [h for h in history if h.kind.startswith("step_") and h.detail["step"] == "file_customs"
               and h.kind != "step_started"]
    assert [h.kind for h in customs] == ["step_failed"] * CargoShipment.demo_data["customs_outages"] + ["step_succeeded"]
    assert final.data["delivered"] is True and final.data["customs_ref"].startswith("CUS-")


def test_cargo_held_by_customs_goes_back_to_port_then_clears(interlock):
    data = {**CargoShipment.demo_data, "customs_outages": 0, "customs_holds": 1, "arrives_after_checks": 1}
    with interlock.worker(4):
        final = drive(interlock, "cargo", data, CargoShipment.demo_events)
    assert final.status == "succeeded"
    assert [t[0] for t in transitions(interlock, final.id)] == [
        "depart", "arrive", "inspect", "held", "inspect", "cleared"]


def test_cargo_without_news_for_30_days_is_lost(interlock):
    data = {**CargoShipment.demo_data, "arrives_after_checks": 10**6, "check_every_seconds": 3600}
    with interlock.worker(4):
        run = interlock.start("cargo", data, business_key=data["container"])
        interlock.send(run.id, "depart")
        wait_until(lambda: interlock.get(run.id).status == "waiting", message="the first carrier check")
        assert fast_forward(interlock, run.id, "timeout") == 1
        final = follow(interlock, run.id, timeout=10, fallback_poll=0.05)
    assert (final.status, final.state) == ("failed", "lost")
    assert transitions(interlock, run.id)[-1] == ("declare_lost", "in_transit", "lost", "timer")


def test_orders_demo_completes(interlock):
    with interlock.worker(4):
        final = drive(interlock, "orders", OrderPipeline.demo_data, OrderPipeline.demo_events)
    assert (final.status, final.state) == ("succeeded", "completed")
    assert [t[0] for t in transitions(interlock, final.id)] == ["reserved", "charged", "shipped"]
    assert final.data["total"] <= REVIEW_LIMIT and final.data["tracking"].startswith("TRK-")


def test_large_order_is_held_for_review_by_the_total_trigger(interlock):
    data = {"items": [{"sku": "TV", "qty": 2, "price": REVIEW_LIMIT}], "card": "4242"}
    with interlock.worker(4):
        final = drive(interlock, "orders", data, {"review": "approve"})
    assert final.status == "succeeded"
    assert transitions(interlock, final.id) == [
        ("reserved", "placed", "payment", "step"),
        ("hold_for_review", "payment", "review", "trigger"),
        ("approve", "review", "payment", "simulator"),
        ("charged", "payment", "shipping", "step"),
        ("shipped", "shipping", "completed", "step"),
    ]
    assert final.data["review_reason"] == f"total {2 * REVIEW_LIMIT} is over {REVIEW_LIMIT}"


@pytest.mark.parametrize("data, events", [
    ({"card": "declined"}, {}),
    ({"card": "4242", "gateway_timeouts": 99}, {}),
    ({"card": "4242", "items": [{"sku": "TV", "qty": 1, "price": 5000}]}, {"review": "reject"}),
])
def test_failed_payment_releases_the_reservation_and_cancels(interlock, data, events):
    data = {**OrderPipeline.demo_data, "gateway_timeouts": 0, **data}
    with interlock.worker(4):
        final = drive(interlock, "orders", data, events)
    assert (final.status, final.state) == ("cancelled", "cancelled")
    events_seen = [t[0] for t in transitions(interlock, final.id)]
    assert events_seen[-1] == "released" and "charged" not in events_seen
    assert final.data["reservation"] is None and final.data["released"].startswith("RES-")


def test_the_harness_drives_a_workflow_in_a_unit_test():
    with Harness(OrderPipeline) as h:
        final = h.run("orders", OrderPipeline.demo_data)
        assert final.status == "succeeded"
        waiting = h.rt.start("orders", {**OrderPipeline.demo_data,
                                        "items": [{"sku": "TV", "qty": 1, "price": 5000}]})
        assert h.wait(waiting.id, state="review").status == "waiting"
        h.rt.send(waiting.id, "reject")
        assert h.wait(waiting.id).status == "cancelled"


def test_order_demo_invoices_then_ships_every_parcel_as_a_cargo_run(interlock):
    from workflows.order import Order

    with interlock.worker(8):
        run = interlock.start("order", Order.demo_data)
        final = follow(interlock, run.id, timeout=40, fallback_poll=0.05, event_delay=0, children=True)
    assert (final.status, final.state) == ("succeeded", "done")
    assert [t[0] for t in transitions(interlock, final.id)] == ["packed", "all_delivered"]
    assert final.data["invoice"]["invoice_no"].startswith("INV-")
    containers = [p["container"] for p in Order.demo_data["parcels"]]
    assert [d["container"] for d in final.data["deliveries"]] == containers
    assert all(d["delivered"] is True for d in final.data["deliveries"])
    tree = interlock.children(final.id, limit=50).runs
    assert sorted((r.workflow, r.status) for r in tree) == [("cargo", "succeeded")] * 3 + [("invoicing", "succeeded")]
