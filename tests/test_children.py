"""Child runs: the parent waits in a state while a run of another workflow runs; the child's end
is applied to the parent exactly once, by the parent's own transition."""

import pytest
from sqlalchemy import select

from engine import children
from engine.models import signals
from engine.runtime import Interlock
from engine.transitions import apply
from tests.conftest import TEST_WORKFLOWS, wait_until

WORKFLOWS = f"{TEST_WORKFLOWS},tests.child_workflows"


@pytest.fixture
def rt(settings):
    runtime = Interlock(settings.replace(workflows=WORKFLOWS))
    yield runtime
    runtime.close()


def ended(rt, run_id, timeout=15):
    return wait_until(lambda: (r := rt.get(run_id)).status not in ("running", "waiting") and r,
                      timeout=timeout, message=f"run {run_id} to end")


def kinds(rt, run_id):
    return [e.kind for e in rt.history(run_id)]


def only_child(rt, parent_id):
    [started] = [e for e in rt.history(parent_id) if e.kind == "child_started"]
    return rt.get(started.detail["child"])


def signal_rows(rt, run_id):
    with rt.db.read() as conn:
        return conn.execute(select(signals.c.kind, signals.c.status).where(signals.c.run_id == run_id)
                            .order_by(signals.c.created_at)).all()


def test_a_parent_waits_for_its_child_and_goes_on_with_its_result(rt):
    with rt.worker(4):
        parent = rt.start("test_ordering", {"order": "A-1"})
        assert (parent.status, parent.state) == ("waiting", "invoicing")
        kid = only_child(rt, parent.id)
        assert (kid.workflow, kid.parent_id, kid.parent_state, kid.business_key) == \
            ("test_invoice", parent.id, "invoicing", "A-1")
        wait_until(lambda: rt.get(parent.id).state == "shipping", message="the invoice to reach the parent")
    moved = rt.get(parent.id)
    assert moved.data["invoice"] == {"order": "A-1", "fail": False, "invoice_no": "INV-A-1"}
    assert moved.data["billed_as"] == "INV-A-1"
    assert rt.get(kid.id).status == "succeeded"
    assert kinds(rt, parent.id) == ["started", "child_started", "child_ended", "transition"]
    assert signal_rows(rt, parent.id) == [("child_ended", "applied")]


def test_a_failed_child_sends_the_parent_its_on_error_event(rt):
    with rt.worker(4):
        parent = rt.start("test_ordering", {"order": "B-2", "fail": True})
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("failed", "unbilled")
    kid = only_child(rt, parent.id)
    assert rt.get(kid.id).status == "failed"
    [entry] = [e for e in rt.history(parent.id) if e.kind == "child_ended"]
    assert entry.detail == {"child": kid.id, "status": "failed", "state": "issuing"}


def test_cancelling_a_parent_cancels_its_children(rt):
    parent = rt.start("test_impatient")
    kid = only_child(rt, parent.id)
    rt.cancel(parent.id, "customer withdrew")
    child_now = ended(rt, kid.id)
    assert child_now.status == "cancelled"
    [cancelled] = [e for e in rt.history(kid.id) if e.kind == "cancelled"]
    assert cancelled.detail["reason"] == f"parent run {parent.id} was cancelled"
    # The child's end reached the parent too, which had ended: recorded and ignored.
    assert [e.detail["reason"] for e in rt.history(parent.id) if e.kind == "ignored"] == ["run is cancelled"]


def test_a_parent_leaving_the_state_cancels_the_child_and_ignores_its_late_end(rt):
    parent = rt.start("test_impatient")
    kid = only_child(rt, parent.id)
    rt.send(parent.id, "give_up")  # as its timer would
    assert ended(rt, kid.id).status == "cancelled"
    assert rt.get(parent.id).state == "gave_up"
    reasons = [e.detail["reason"] for e in rt.history(parent.id) if e.kind == "ignored"]
    assert reasons == ["run is succeeded"]


def test_an_abandoned_child_goes_on_alone(rt):
    parent = rt.start("test_detached")
    kid = only_child(rt, parent.id)
    rt.send(parent.id, "give_up")
    assert rt.get(kid.id).status == "waiting"  # not cancelled
    assert rt.send(kid.id, "sign").status == "succeeded"
    assert rt.get(parent.id).state == "gave_up"
    assert signal_rows(rt, parent.id) == [("child_ended", "stale")]


def test_a_childs_end_applied_twice_changes_the_parent_once(rt):
    parent = rt.start("test_impatient")
    kid = only_child(rt, parent.id)
    # The child ends, but the commit's delivery is lost (the process died right after it).
    committed = []
    apply(rt, kid.id, __import__("engine.operations", fromlist=["SendEvent"]).SendEvent("sign", {}),
          after_commit=committed.append)
    [(signal_id, receiver)] = committed[0].signals
    assert receiver == parent.id and rt.get(parent.id).state == "waiting"
    # Two deliverers race (the reconciler of two workers): one applies it, the other finds it done.
    children.deliver(rt, [(signal_id, parent.id)])
    children.deliver(rt, [(signal_id, parent.id)])
    assert rt.get(parent.id).state == "signed"
    assert kinds(rt, parent.id).count("child_ended") == 1
    assert kinds(rt, parent.id).count("transition") == 1


def test_the_reconciler_delivers_what_a_crash_left_pending(rt):
    parent = rt.start("test_impatient")
    kid = only_child(rt, parent.id)
    from engine.operations import SendEvent
    apply(rt, kid.id, SendEvent("sign", {}), after_commit=lambda outcome: None)  # delivery lost
    assert signal_rows(rt, parent.id) == [("child_ended", "pending")]
    with rt.worker(2):
        assert ended(rt, parent.id).state == "signed"
    assert signal_rows(rt, parent.id) == [("child_ended", "applied")]


def test_a_child_on_a_state_with_a_step_is_refused_at_import():
    from engine import State, Workflow, child, step
    from engine.errors import DefinitionError

    with pytest.raises(DefinitionError, match="has both a child"):
        class Both(Workflow):
            name, version = "test_both", 1
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)
            kid = child(a, workflow="test_paperwork", on_done="go")

            @step(a)
            def work(self, run):
                return "go"


def test_a_failed_child_retried_by_hand_sends_its_late_result_to_the_waiting_parent(rt, tmp_path):
    flag = tmp_path / "lost"
    flag.write_text("lost")
    with rt.worker(4):
        parent = rt.start("test_patient", {"parcel": {"id": "P", "flag": str(flag), "seconds": 0}})
        kid = only_child(rt, parent.id)
        assert ended(rt, kid.id).status == "failed"
        wait_until(lambda: "child_ended" in kinds(rt, parent.id), message="the failure to reach the parent")
        assert rt.get(parent.id).status == "waiting"  # no on_error: it waits for a retry
        flag.unlink()
        rt.retry(kid.id)
        done = ended(rt, parent.id)
    assert (done.status, done.state) == ("succeeded", "arrived")
    assert [e.detail["status"] for e in rt.history(parent.id) if e.kind == "child_ended"] == ["failed", "succeeded"]
