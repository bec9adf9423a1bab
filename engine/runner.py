"""Following a run until it ends: report each history entry, play scripted outside events.

Used by ``interlock run`` and ``engine.testing``. Changes made in this process wake the
follower at once; changes made elsewhere are seen within ``fallback_poll`` seconds.
"""

import threading
import time

from .errors import InterlockError
from .transitions import ACTIVE


class RunTimeout(InterlockError):
    code = "run-timeout"

    def __init__(self, run_id, timeout, run):
        self.run = run
        super().__init__(f"run {run_id} did not end within {timeout}s (status {run.status}, state {run.state})")


def follow(rt, run_id: str, *, on_entry=None, events=None, timeout: float | None = None,
           fallback_poll: float = 0.5, event_delay: float = 0.05, children=False):
    """Block until the run leaves running/waiting; return the final ``Run``.

    ``events`` maps a state to the event (or ``(event, data)``) the outside world sends
    when the run waits there, as ``Workflow.demo_events`` does. With ``children``, the runs
    it starts (and theirs) get their own workflow's ``demo_events`` too, and ``on_entry``
    is called as ``on_entry(entry, run)`` for every run of the tree.
    """
    changed = threading.Event()
    tree = {run_id: 0}  # run id -> history seq seen

    def wake(changed_run_id, _seq, _status):
        if changed_run_id in tree or children:
            changed.set()

    rt.notifier.subscribe(wake)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen, answered = 0, set()
    try:
        while True:
            for entry in rt.history(run_id, after=seen):
                seen = entry.seq
                if on_entry is not None:
                    on_entry(entry, None) if children else on_entry(entry)
            if children:
                _follow_children(rt, run_id, tree, on_entry, answered, event_delay)
            run = rt.get(run_id)
            if run.status not in ACTIVE and run.last_seq <= seen:
                return run
            if run.status == "waiting" and events:
                _answer(rt, run, events, answered, event_delay)
            if deadline is not None and time.monotonic() > deadline:
                raise RunTimeout(run_id, timeout, run)
            wait = fallback_poll if deadline is None else max(0.0, min(fallback_poll, deadline - time.monotonic()))
            changed.wait(wait)
            changed.clear()
    finally:
        rt.notifier.unsubscribe(wake)


def _follow_children(rt, run_id, tree, on_entry, answered, delay):
    """Report the descendants' new history entries; answer those waiting with their demo events."""
    parents = [run_id]
    while parents:
        found = [child for parent in parents for child in _all_children(rt, parent)]
        for child in found:
            seen = tree.get(child.id, 0)
            for entry in rt.history(child.id, after=seen):
                seen = entry.seq
                if on_entry is not None:
                    on_entry(entry, child)
            tree[child.id] = seen
            if child.status == "waiting":
                try:
                    scripted = rt.registry.get(child.workflow, child.version).demo_events
                except InterlockError:
                    continue
                if scripted:
                    _answer(rt, child, scripted, answered, delay)
        parents = [child.id for child in found]


def _all_children(rt, run_id):
    cursor = None
    while True:
        page = rt.children(run_id, limit=500, cursor=cursor)
        yield from page.runs
        if page.next is None:
            return
        cursor = page.next


def _answer(rt, run, events, answered, delay):
    """Send the scripted event for the state the run waits in, once per state entry."""
    key = (run.id, run.state, run.last_seq)
    script = events.get(run.state)
    if script is None or key in answered:
        return
    answered.add(key)
    event, data = (script, {}) if isinstance(script, str) else script
    time.sleep(delay)  # let a person watching see the wait
    try:
        rt.send(run.id, event, data, cause="simulator")
    except InterlockError:
        pass  # the run moved on meanwhile; the loop looks again
