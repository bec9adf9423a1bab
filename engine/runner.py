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
           fallback_poll: float = 0.5, event_delay: float = 0.05):
    """Block until the run leaves running/waiting; return the final ``Run``.

    ``events`` maps a state to the event (or ``(event, data)``) the outside world sends
    when the run waits there, as ``Workflow.demo_events`` does.
    """
    changed = threading.Event()

    def wake(changed_run_id, _seq, _status):
        if changed_run_id == run_id:
            changed.set()

    rt.notifier.subscribe(wake)
    deadline = None if timeout is None else time.monotonic() + timeout
    seen, answered = 0, set()
    try:
        while True:
            for entry in rt.history(run_id, after=seen):
                seen = entry.seq
                if on_entry is not None:
                    on_entry(entry)
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


def _answer(rt, run, events, answered, delay):
    """Send the scripted event for the state the run waits in, once per state entry."""
    key = (run.state, run.last_seq)
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
