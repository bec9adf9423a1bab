"""Group commit for step results: the worker threads of one process hand their results to
one applier thread, which applies whatever has piled up in one transaction.

At low load every batch holds one result, so nothing waits longer than it would alone;
under load a batch forms while the previous one commits, and a commit (and each kind of
statement) serves many transitions. A batch that fails for any reason is applied again
item by item, so one bad result never holds up the others.
"""

import logging
import threading
from collections import deque

from .transitions import apply, apply_many

log = logging.getLogger(__name__)


class _Item:
    __slots__ = ("run_id", "op", "done", "outcome", "error")

    def __init__(self, run_id, op):
        self.run_id, self.op = run_id, op
        self.done = threading.Event()
        self.outcome = self.error = None


class Batcher:
    def __init__(self, rt, max_batch: int = 64):
        self.rt, self.max_batch = rt, max_batch
        self._pending: deque[_Item] = deque()
        self._wake = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="interlock-applier", daemon=True)

    def start(self) -> "Batcher":
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        self._thread.join(10)

    def apply(self, run_id, op):
        """Apply ``op`` (a step result with ``task_id``) and return its outcome, or raise its error."""
        item = _Item(run_id, op)
        with self._wake:
            if self._stopped:
                return apply(self.rt, run_id, op)
            self._pending.append(item)
            self._wake.notify()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.outcome

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending and not self._stopped:
                    self._wake.wait()
                if not self._pending:
                    return
                batch = self._take()
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
                outcomes = apply_many(self.rt, [(item.run_id, item.op) for item in batch])
            except Exception:
                log.debug("batch of %d failed; applying its items one by one", len(batch), exc_info=True)
            else:
                for item, outcome in zip(batch, outcomes):
                    item.outcome = outcome
                    item.done.set()
                return
        for item in batch:
            try:
                item.outcome = apply(self.rt, item.run_id, item.op)
            except BaseException as exc:  # handed to the waiting thread, which decides
                item.error = exc
            item.done.set()
