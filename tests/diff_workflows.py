"""Pairs of versions that differ in one kind of declaration each, for tests/test_workflow_diff.py.

``diff_kinds``: states, events, transitions and guards, steps, activities, timers, triggers.
``diff_parent``: a child run and a map, their settings changed. ``diff_nested``: a state moved
into a new compound state. ``diff_same``: two versions declaring the same thing.
"""

from datetime import timedelta

from engine import State, Workflow, activity, after, at, child, map_, step, trigger


class Leaf(Workflow):
    """What the parents start: ends when told."""

    name, version = "diff_leaf", 1

    waiting = State(initial=True)
    done = State(final=True)

    finish = waiting.to(done)

    demo_data = {}


class KindsV1(Workflow):
    """A request: drafted, reviewed by a step, answered by an outside worker, approved or lost."""

    name, version = "diff_kinds", 1

    draft = State(initial=True)
    review = State()
    waiting = State()
    approved = State(final=True)
    lost = State(final=True)

    submit = draft.to(review)
    approve = review.to(approved, cond="small")
    escalate = review.to(waiting)
    answer = waiting.to(review)
    drop = draft.to(lost) | waiting.to(lost)

    final_status = {"lost": "failed"}
    reminder = after(timedelta(hours=1), waiting, send="drop")
    deadline = at("due", review, send="escalate")
    big_order = trigger("total", send="escalate", states=[review])
    answering = activity(waiting, name="diff.answer", retries=3, visibility_timeout=timedelta(seconds=30))

    @step(review, retries=3, backoff=timedelta(seconds=1), on_error="escalate")
    def check(self, run):
        return "approve"

    def small(self, data):
        return data.get("total", 0) < 100

    def signed(self, data):
        return bool(data.get("signature"))

    demo_data = {"due": "2100-01-01T00:00:00Z"}


class KindsV2(Workflow):
    """The same request, changed in every kind of declaration there is."""

    name, version = "diff_kinds", 2

    draft = State(initial=True)
    review = State()
    waiting = State()
    approved = State(final=True)
    lost = State(final=True)

    submit = draft.to(review)
    approve = review.to(approved, cond=["small", "signed"])  # a guard more
    escalate = review.to(waiting)
    reply = waiting.to(review)  # the event was `answer`
    drop = draft.to(lost) | waiting.to(lost)

    final_status = {"lost": "cancelled"}  # was failed
    reminder = after(timedelta(hours=2), waiting, send="drop")  # was 1 hour
    nudge = after(timedelta(minutes=10), waiting, send="reply")  # new; `deadline` is gone
    big_order = trigger("total", send="escalate", states=[review, waiting])  # one state more
    answering = activity(waiting, name="diff.answer", retries=1, visibility_timeout=timedelta(seconds=60))

    @step(review, retries=5, backoff=timedelta(seconds=2), on_error="drop")
    def check(self, run):
        return "approve"

    def small(self, data):
        return data.get("total", 0) < 100

    def signed(self, data):
        return bool(data.get("signature"))

    demo_data = {}


class ParentV1(Workflow):
    """Ships a parcel through a child run, then one child run per item of a list."""

    name, version = "diff_parent", 1

    start = State(initial=True)
    shipping = State()
    fanning = State()
    done = State(final=True)
    broken = State(final=True)

    go = start.to(shipping)
    shipped = shipping.to(fanning)
    all_done = fanning.to(done)
    broke = shipping.to(broken) | fanning.to(broken)

    final_status = {"broken": "failed"}
    ship = child(shipping, workflow="diff_leaf", version=1, on_done="shipped", on_error="broke")
    parcels = map_(fanning, items="parcels", workflow="diff_leaf", max_concurrency=2, on_done="all_done",
                   on_error="broke")

    demo_data = {"parcels": ["a", "b"]}


class ParentV2(Workflow):
    """As version 1, the child unpinned and left running if the parent moves on, the map wider."""

    name, version = "diff_parent", 2

    start = State(initial=True)
    shipping = State()
    fanning = State()
    done = State(final=True)
    broken = State(final=True)

    go = start.to(shipping)
    shipped = shipping.to(fanning)
    all_done = fanning.to(done)
    broke = shipping.to(broken) | fanning.to(broken)

    final_status = {"broken": "failed"}
    ship = child(shipping, workflow="diff_leaf", on_done="shipped", on_error="broke", parent_close="abandon")
    parcels = map_(fanning, items="parcels", workflow="diff_leaf", max_concurrency=4, tolerated_failures=1,
                   on_done="all_done", on_error="broke")

    demo_data = {"parcels": ["a", "b"]}


class NestedV1(Workflow):
    """Begin, check, end."""

    name, version = "diff_nested", 1

    begin = State(initial=True)
    check = State()
    end = State(final=True)

    go = begin.to(check)
    finish = check.to(end)

    demo_data = {}


class NestedV2(Workflow):
    """The check is now a compound state's first step, confirmed inside it."""

    name, version = "diff_nested", 2

    begin = State(initial=True)

    class work(State.Compound):
        check = State(initial=True)
        checked = State(final=True)

        confirm = check.to(checked)

    end = State(final=True)

    go = begin.to(work)
    done_state_work = work.to(end)

    demo_data = {}


class SameV1(Workflow):
    """Two versions, one definition."""

    name, version = "diff_same", 1

    open = State(initial=True)
    closed = State(final=True)

    close = open.to(closed)
    timeout = after(timedelta(days=1), open, send="close")

    @step(open, retries=2)
    def tidy(self, run):
        return None

    demo_data = {}


class SameV2(Workflow):
    """Two versions, one definition."""

    name, version = "diff_same", 2

    open = State(initial=True)
    closed = State(final=True)

    close = open.to(closed)
    timeout = after(timedelta(days=1), open, send="close")

    @step(open, retries=2)
    def tidy(self, run):
        return None

    demo_data = {}
