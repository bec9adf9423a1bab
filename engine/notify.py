"""Tells whoever watches in this process that a run changed (after the commit)."""

import threading


class Notifier:
    def __init__(self):
        self._lock = threading.Lock()
        self._listeners: list = []

    def subscribe(self, listener) -> None:
        """``listener(run_id, last_seq, status)`` is called after each committed change."""
        with self._lock:
            self._listeners = [*self._listeners, listener]

    def unsubscribe(self, listener) -> None:
        with self._lock:
            self._listeners = [item for item in self._listeners if item is not listener]

    def publish(self, run_id: str, last_seq: int, status: str) -> None:
        for listener in self._listeners:
            listener(run_id, last_seq, status)
