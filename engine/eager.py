"""Eager steps: a step whose task this process just committed runs here at once.

The task was committed as sent, exactly as if its message had gone to the broker, so
running it here changes nothing the database says; it saves the broker round trip and
the task read, which are most of a short step's cost. A step is taken only while one
of this process's eager threads is free; otherwise its message goes to the broker as
usual, so a busy process never hoards work. If the process dies first, the reconciler
sends the task again, as it does for a lost message.

"Free" is measured in time: a step may also wait in line here when the steps ahead of it
are known (from their recent durations) to finish within ``MAX_WAIT``; a queue of
millisecond steps drains faster than a broker round trip, a queue of slow ones does not.

Eager steps keep their time limits: Dramatiq's own time-limit monitor interrupts them.
"""

import logging
import threading
import time
from collections import deque

log = logging.getLogger(__name__)
# Seconds a step may be expected to wait here for a thread instead of going to the broker:
# below what a person notices, and far below the claim and re-send times.
MAX_WAIT = 0.05
MAX_QUEUE = 1024
_SMOOTHING = 0.2


class EagerSteps:
    def __init__(self, executor, threads: int, time_limits=None):
        self.executor, self.threads, self.time_limits = executor, threads, time_limits
        self._queue: deque = deque()
        self._idle = 0
        self._queued_seconds = 0.0  # the expected run time of the queued steps
        self._durations: dict = {}  # (workflow, step) -> smoothed seconds per run
        self._wake = threading.Condition()
        self._stopped = False
        self._workers = [threading.Thread(target=self._loop, name=f"interlock-eager-{i}", daemon=True)
                         for i in range(threads)]

    def start(self) -> "EagerSteps":
        for thread in self._workers:
            thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> list:
        """Let the steps running now finish (for up to ``timeout`` seconds in all: one still
        running after that is sent again by a reconciler, like a lost message); return the
        dispatches not started, to send to the broker instead."""
        with self._wake:
            self._stopped = True
            left = [dispatch for dispatch, _run, _expected in self._queue]
            self._queue.clear()
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._workers:
            thread.join(max(0.0, deadline - time.monotonic()))
        return left

    def busy(self) -> bool:
        """A step still running after ``stop`` gave up waiting."""
        return any(thread.is_alive() for thread in self._workers)

    def offer(self, dispatch, run: dict) -> bool:
        """Take ``dispatch`` (a step due now, of the committed ``run``) if a thread is free."""
        expected = self._durations.get((run["workflow"], dispatch.task["name"]))
        with self._wake:
            if self._stopped or len(self._queue) >= MAX_QUEUE:
                return False
            if self._idle <= len(self._queue) and (
                    expected is None or (self._queued_seconds + expected) / self.threads > MAX_WAIT):
                return False
            expected = expected or 0.0
            self._queued_seconds += expected
            self._queue.append((dispatch, run, expected))
            self._wake.notify()
            return True

    def _loop(self) -> None:
        ident = threading.get_ident()
        while True:
            with self._wake:
                self._idle += 1
                while not self._queue and not self._stopped:
                    self._wake.wait()
                self._idle -= 1
                if not self._queue:
                    return
                dispatch, run, expected = self._queue.popleft()
                self._queued_seconds = max(0.0, self._queued_seconds - expected)
            limit = None
            if self.time_limits is not None and dispatch.time_limit:
                limit = (self.time_limits, ident, dispatch.time_limit)
            began = time.monotonic()
            try:
                self.executor.execute_committed(dispatch.task, run, limit)
            except BaseException:  # the task is committed: the reconciler sends it again
                log.exception("eager step %s of run %s failed to run", dispatch.task_id, run.get("id"))
            self._observe((run["workflow"], dispatch.task["name"]), time.monotonic() - began)

    def _observe(self, key, seconds: float) -> None:
        previous = self._durations.get(key)
        self._durations[key] = seconds if previous is None else previous + _SMOOTHING * (seconds - previous)
