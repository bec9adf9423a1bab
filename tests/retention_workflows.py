"""Workflows whose finished runs retention deletes (tests/test_retention.py)."""

from datetime import timedelta

from engine import State, Workflow, activity, after, child, map_


class Note(Workflow):
    """Kept an hour once closed."""

    name, version = "ret_note", 1
    retention = timedelta(hours=1)
    search = {"n": int}  # its run_search rows go with it

    open = State(initial=True)
    closed = State(final=True)
    edit = open.to.itself(internal=True)
    close = open.to(closed)

    reminder = after(timedelta(days=1), open, send="close")


class Plain(Workflow):
    """Kept as long as INTERLOCK_RETENTION says."""

    name, version = "ret_plain", 1

    open = State(initial=True)
    closed = State(final=True)
    close = open.to(closed)


class Forever(Workflow):
    """Kept forever, whatever INTERLOCK_RETENTION says."""

    name, version = "ret_forever", 1
    retention = timedelta.max

    open = State(initial=True)
    closed = State(final=True)
    close = open.to(closed)


class Papers(Workflow):
    """A child that ends when told."""

    name, version = "ret_papers", 1
    retention = timedelta(hours=1)

    pending = State(initial=True)
    signed = State(final=True)
    sign = pending.to(signed)


class Filing(Workflow):
    """A parent waiting for its papers; ``drop`` ends it and leaves them to go on alone."""

    name, version = "ret_filing", 1
    retention = timedelta(hours=1)

    waiting = State(initial=True)
    filed = State()
    archived = State(final=True)
    dropped = State(final=True)

    signed = waiting.to(filed)
    drop = waiting.to(dropped)
    store = filed.to(archived)

    papers = child(waiting, workflow="ret_papers", on_done="signed", parent_close="abandon")


class Office(Workflow):
    """A grandparent: its child is a Filing, abandoned when the office closes."""

    name, version = "ret_office", 1
    retention = timedelta(hours=1)

    busy = State(initial=True)
    shut = State(final=True)
    close = busy.to(shut)

    filing = child(busy, workflow="ret_filing", parent_close="abandon")


class Chore(Workflow):
    """An activity task no one receives: the run is cancelled with it queued."""

    name, version = "ret_chore", 1
    retention = timedelta(hours=1)

    open = State(initial=True)
    done = State(final=True)
    finish = open.to(done)

    chore = activity(open, name="ret_chore")


class Batch(Workflow):
    """A map of papers, two at a time."""

    name, version = "ret_batch", 1
    retention = timedelta(hours=1)

    signing = State(initial=True)
    done = State(final=True)
    all_signed = signing.to(done)

    papers = map_(signing, items="items", workflow="ret_papers", max_concurrency=2, on_done="all_signed",
                  results="signed")

    demo_data = {"items": [{"n": 0}, {"n": 1}]}  # tests/test_shortcuts.py starts every workflow
