"""Group commit for step results: the worker threads of one process hand their results to
one applier thread, which applies whatever has piled up in one transaction.

A worker thread does not wait for its result to commit: it hands it over and takes its
next message, so a batch can hold many more results than there are threads. That is safe
because the task stays queued (with its message marked sent) until the result commits: a
result lost with the process is recovered like a lost message, by the reconciler sending
the task again. The worker's ``done`` callback runs once the result is applied or refused.

After each commit, the sends and notifications of the batch's outcomes go to a second
thread, so the next batch is locked and written while the broker confirms the last one's
messages. A batch that fails for any reason is applied again item by item, so one bad
result never holds up the others.
"""

import logging
import threading
from collections import deque

from . import children
from .transitions import apply, apply_many

log = logging.getLogger(__name__)


class _Item:
    __slots__ = ("run_id", "op", "done")

    def __init__(self, run_id, op, done):
        self.run_id, self.op, self.done = run_id, op, done


class Batcher:
    def __init__(self, rt, max_batch: int = 128, max_pending: int = 512):
        self.rt, self.max_batch, self.max_pending = rt, max_batch, max_pending
        self._pending: deque[_Item] = deque()
        self._wake = threading.Condition()
        self._room = threading.Condition(self._wake)
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="interlock-applier", daemon=True)
        self._after = _AfterCommit(rt)

    def start(self) -> "Batcher":
        self._after.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Apply what is pending, then stop."""
        with self._wake:
            self._stopped = True
            self._wake.notify_all()
            self._room.notify_all()
        self._thread.join(30)
        self._after.stop()

    def submit(self, run_id, op, done) -> None:
        """Apply ``op`` (a step result with ``task_id``) soon; ``done(outcome, error)`` follows.

        Blocks while ``max_pending`` results wait, so a slow database slows the consumers.
        """
        with self._wake:
            if threading.current_thread() is not self._thread:
                while len(self._pending) >= self.max_pending and not self._stopped:
                    self._room.wait()
            if not self._stopped:
                self._pending.append(_Item(run_id, op, done))
                self._wake.notify()
                return
        _finish(done, *_apply_alone(self.rt, run_id, op))

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if not self._pending:
                    return
                batch = self._take()
                self._room.notify_all()
            self._apply(batch)

    def _take(self) -> list[_Item]:
        """Up to max_batch items, one per run (a run's second result waits for the next batch)."""
        batch, runs, later = [], set(), []
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            (later if item.run_id in runs else batch).append(item)
            runs.add(item.run_id)
        self._pending.extendleft(reversed(later))
        return batch

    def _apply(self, batch: list[_Item]) -> None:
        if len(batch) > 1:
            try:
                outcomes = apply_many(self.rt, [(item.run_id, item.op) for item in batch],
                                      after_commit=self._committed)
            except Exception:
                log.debug("batch of %d failed; applying its items one by one", len(batch), exc_info=True)
            else:
                for item, outcome in zip(batch, outcomes):
                    _finish(item.done, outcome, None)
                return
        for item in batch:
            _finish(item.done, *_apply_alone(self.rt, item.run_id, item.op, self._committed))

    def _committed(self, outcome) -> None:
        """Steps due now run here if an eager thread is free; the rest go to the broker."""
        eager = self.rt.eager
        if eager is not None and outcome.dispatch:
            outcome.dispatch = [d for d in outcome.dispatch
                                if d.delay or d.task is None or not eager.offer(d, outcome.run)]
        self._after.put(outcome)


def _apply_alone(rt, run_id, op, after_commit=None):
    try:
        return apply(rt, run_id, op, after_commit=after_commit), None
    except Exception as exc:  # handed to the submitter, which decides
        return None, exc


def _finish(done, outcome, error) -> None:
    try:
        done(outcome, error)
    except Exception:
        log.exception("a step result's completion callback failed")


class _AfterCommit:
    """Sends and notifications of committed outcomes, in commit order, off the applier thread."""

    def __init__(self, rt):
        self.rt = rt
        self._queue: deque = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="interlock-dispatch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(30)

    def put(self, outcome) -> None:
        with self._wake:
            self._queue.append(outcome)
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._stopped:
                    self._wake.wait()
                if not self._queue:
                    return
                outcomes = list(self._queue)
                self._queue.clear()
            signals: list = []  # delivered together: a parent whose children ended together locks once
            for outcome in outcomes:
                try:
                    self.rt.after_commit(outcome, signals)
                except Exception:  # committed: the reconciler re-sends what was not sent
                    log.exception("after-commit work failed for run %s", outcome.run.get("id"))
            if signals:
                try:
                    children.deliver(self.rt, signals)
                except Exception:  # committed: the reconciler delivers what is left
                    log.exception("delivering %d signal(s) failed", len(signals))
