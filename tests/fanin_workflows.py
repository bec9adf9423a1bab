"""Maps over children a test ends by hand (tests/test_fanin_batches.py)."""

from engine import State, Workflow, map_


class Verdict(Workflow):
    """The child: waits until the test approves (it succeeds) or rejects it (it fails)."""

    name, version = "fanin_verdict", 1

    pending = State(initial=True)
    approved = State(final=True)
    rejected = State(final=True)
    approve = pending.to(approved)
    reject = pending.to(rejected)
    final_status = {"rejected": "failed"}


def fanin_parent(workflow_name, *, max_concurrency, tolerated_failures, on_error=True):
    class Parent(Workflow):
        name, version = workflow_name, 1
        judging = State(initial=True)
        done = State(final=True)
        gave_up = State(final=True)
        all_judged = judging.to(done)
        too_many_rejected = judging.to(gave_up)
        final_status = {"gave_up": "failed"}

        verdicts = map_(judging, items="items", workflow="fanin_verdict", max_concurrency=max_concurrency,
                        tolerated_failures=tolerated_failures, on_done="all_judged",
                        on_error="too_many_rejected" if on_error else None, results="results",
                        business_key=lambda run, item: str(item["i"]))

        demo_data = {"items": [{"i": 0}, {"i": 1}, {"i": 2}]}  # tests/test_shortcuts.py starts every workflow

    Parent.__name__ = Parent.__qualname__ = workflow_name.title().replace("_", "")
    return Parent


Tolerant = fanin_parent("fanin_tolerant", max_concurrency=2, tolerated_failures=1)
Fraction = fanin_parent("fanin_fraction", max_concurrency=3, tolerated_failures=0.3)
Unbounded = fanin_parent("fanin_unbounded", max_concurrency=None, tolerated_failures=2)
# No on_error: a failed map fails the run, and retry re-runs the rejected items.
Strict = fanin_parent("fanin_strict", max_concurrency=2, tolerated_failures=0, on_error=False)

PARENTS = [Tolerant.name, Fraction.name, Unbounded.name, Strict.name]
