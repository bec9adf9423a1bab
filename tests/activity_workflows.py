"""Workflows with activities: work done by external workers that receive tasks from the API.

They live here, not in ``workflows/``, because a run waits in an activity state until a
worker answers: ``interlock run`` alone would never reach the end.
"""

from datetime import timedelta

from engine import State, Workflow, activity, step


class Clearance(Workflow):
    """A container at the port: a customs officer reviews it in an outside tool, then it is released.

    The review is an activity: officers' tools long-poll for ``customs_review`` tasks and
    answer ``approve`` (the default) or ``refuse``. If no officer answers after three
    attempts the container is escalated.
    """

    name, version = "clearance", 1

    review = State(initial=True)
    releasing = State()
    released = State(final=True)
    refused = State(final=True)
    escalated = State(final=True)

    approve = review.to(releasing)
    refuse = review.to(refused)
    escalate = review.to(escalated)
    done = releasing.to(released)

    final_status = {"refused": "failed", "escalated": "failed"}
    customs_review = activity(review, retries=2, visibility_timeout=timedelta(seconds=30),
                              on_error="escalate", default="approve")

    @step(releasing, backoff=timedelta(seconds=0.1))
    def release_container(self, run):
        return {"gate_pass": f"GP-{run.data['container']}"}


class WarehousePick(Workflow):
    """An order picked by a warehouse scanner app (an activity with no catch: the run fails)."""

    name, version = "warehouse_pick", 1

    picking = State(initial=True)
    packed = State(final=True)

    picked = picking.to(packed)

    pick = activity(picking, name="warehouse.pick", retries=1, visibility_timeout=timedelta(seconds=10))
