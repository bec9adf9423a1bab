"""Tells whoever watches in this process that a run changed (after the commit).

One notifier per process. Commits made here are published directly; commits made by
other processes arrive through one shared source per process: on PostgreSQL a LISTEN
connection (a trigger on ``runs`` announces every committed change), elsewhere one
poller thread that runs only while someone watches. However many clients wait, the
database sees one connection or one query every ``poll_interval``, not one per client.
"""

import logging
import threading
import time
from collections import OrderedDict

from sqlalchemy import select
from sqlalchemy.engine import make_url

from .models import runs

log = logging.getLogger(__name__)

CHANNEL = "interlock_runs"
# Re-read this far behind a cursor: updated_at is taken before the commit, and clocks differ.
OVERLAP = 2.0
POLL_INTERVAL = 0.5
SQLITE_PROBE = 0.1
READY_TIMEOUT = 5.0
# Last (seq, status) per run, so a change announced twice (locally and by the database) wakes once.
REMEMBER = 50_000
# An all-runs watch collects at most this many run ids between reads, then asks for a full re-read.
MAX_PENDING = 10_000


class Watch:
    """Woken when its run changes (``run_id`` None: when any run changes). Close it when done."""

    def __init__(self, notifier, run_id):
        self.run_id = run_id
        self._notifier = notifier
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._changed: set | None = set()

    def _notify(self, run_id) -> None:
        if self.run_id is None:
            with self._lock:
                if self._changed is not None:
                    self._changed.add(run_id)
                    if len(self._changed) > MAX_PENDING:
                        self._changed = None
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        """True if something changed since the last wait; re-read after it returns."""
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired

    def take(self) -> set | None:
        """Run ids changed since the last take (all-runs watches); None: too many, re-read all."""
        with self._lock:
            changed, self._changed = self._changed, set()
        return changed

    def close(self) -> None:
        self._notifier._remove(self)

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Notifier:
    def __init__(self, db=None, *, poll_interval: float = POLL_INTERVAL, now=time.time):
        # Cursors are compared with runs.updated_at: the runtime's clock (the database's).
        self.now = now
        self._lock = threading.Lock()
        self._listeners: tuple = ()
        self._runs: dict[str, set[Watch]] = {}
        self._all: set[Watch] = set()
        self._latest: OrderedDict = OrderedDict()
        self.source = None
        if db is not None:
            self.source = (PgListener(db, self) if db.dialect == "postgresql"
                            else Poller(db, self, poll_interval))

    # -- watching ------------------------------------------------------------------

    def watch(self, run_id: str | None = None) -> Watch:
        """A Watch on one run, or on every run. Open it before reading, so no change slips between."""
        watch = Watch(self, run_id)
        with self._lock:
            if run_id is None:
                self._all.add(watch)
            else:
                self._runs.setdefault(run_id, set()).add(watch)
        self._acquire()
        return watch

    def subscribe(self, listener) -> None:
        """``listener(run_id, last_seq, status)`` is called after each committed change."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
        self._acquire()

    def unsubscribe(self, listener) -> None:
        with self._lock:
            kept = tuple(item for item in self._listeners if item is not listener)
            removed = len(kept) != len(self._listeners)
            self._listeners = kept
        if removed:
            self._release()

    def watching(self, run_id: str | None = None) -> int:
        """How many watches wait on ``run_id`` (None: on every run)."""
        with self._lock:
            return len(self._all if run_id is None else self._runs.get(run_id, ()))

    def _remove(self, watch: Watch) -> None:
        with self._lock:
            if watch.run_id is None:
                found = watch in self._all
                self._all.discard(watch)
            else:
                waiters = self._runs.get(watch.run_id, set())
                found = watch in waiters
                waiters.discard(watch)
                if not waiters:
                    self._runs.pop(watch.run_id, None)
        if found:
            self._release()

    # -- publishing ------------------------------------------------------------------

    def publish(self, run_id: str, last_seq: int, status: str) -> None:
        with self._lock:
            known = self._latest.get(run_id)
            if known is not None and (known[0] > last_seq or known == (last_seq, status)):
                return  # already announced (or older than what was)
            self._latest[run_id] = (last_seq, status)
            self._latest.move_to_end(run_id)
            if len(self._latest) > REMEMBER:
                self._latest.popitem(last=False)
            woken = [*self._runs.get(run_id, ()), *self._all]
            listeners = self._listeners
        for watch in woken:
            watch._notify(run_id)
        for listener in listeners:
            try:
                listener(run_id, last_seq, status)
            except Exception:
                log.exception("run change listener failed")

    # -- the cross-process source ------------------------------------------------------

    def start(self) -> None:
        """Connect the cross-process source now rather than at the first watch (servers)."""
        if self.source is not None:
            self.source.start()

    def _acquire(self) -> None:
        if self.source is not None:
            self.source.acquire()

    def _release(self) -> None:
        if self.source is not None:
            self.source.release()

    def close(self) -> None:
        if self.source is not None:
            self.source.close()


def catch_up(db, notifier: Notifier, since: float) -> None:
    """Publish every run changed at or after ``since`` (repeats are dropped by the notifier)."""
    query = (select(runs.c.id, runs.c.last_seq, runs.c.status).where(runs.c.updated_at >= since)
             .order_by(runs.c.updated_at))
    with db.read() as conn:
        changed = conn.execute(query).all()
    for run_id, last_seq, status in changed:
        notifier.publish(run_id, last_seq, status)


class PgListener:
    """A thread holding one connection that LISTENs; it reconnects, then catches up on what it missed."""

    def __init__(self, db, notifier: Notifier):
        self.db, self.notifier = db, notifier
        self.conninfo = make_url(db.url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backend_pid: int | None = None  # of the LISTEN connection, while connected

    def start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="interlock-listen", daemon=True)
                self._thread.start()

    def acquire(self) -> None:
        self.start()
        # The first watcher waits for LISTEN, or a change right after its read could be missed.
        self._ready.wait(READY_TIMEOUT)

    def release(self) -> None:
        pass  # one idle connection costs less than reconnecting for every watcher

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        import psycopg

        delay, healthy_at = 0.1, None
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True, application_name="interlock-listen",
                                     connect_timeout=5, keepalives=1, keepalives_idle=10,
                                     keepalives_interval=5, keepalives_count=3) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.backend_pid = conn.info.backend_pid
                    if healthy_at is not None:
                        catch_up(self.db, self.notifier, healthy_at - OVERLAP)
                    self._ready.set()
                    delay = 0.1
                    while not self._stop.is_set():
                        for item in conn.notifies(timeout=1.0):
                            self._deliver(item.payload)
                        healthy_at = self.notifier.now()
            except Exception as exc:
                self.backend_pid = None
                if self._stop.is_set():
                    return
                log.warning("LISTEN %s failed (%s); reconnecting in %.1fs", CHANNEL, exc, delay)
                healthy_at = healthy_at or self.notifier.now()
                # Watchers stop waiting for us: the catch-up after reconnecting covers them.
                self._ready.set()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _deliver(self, payload: str) -> None:
        try:
            run_id, seq, status = payload.split(":")
            self.notifier.publish(run_id, int(seq), status)
        except ValueError:
            log.warning("ignoring malformed notification %r", payload)


class Poller:
    """One thread that reads recently changed runs every ``interval`` while anyone watches.

    On SQLite it reads only after ``PRAGMA data_version`` says another connection committed:
    that probe costs no table scan, so it can run every ``SQLITE_PROBE`` seconds.
    """

    def __init__(self, db, notifier: Notifier, interval: float):
        self.db, self.notifier, self.interval = db, notifier, interval
        self._lock = threading.Lock()
        self._users = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        pass  # polls only while someone watches

    def acquire(self) -> None:
        with self._lock:
            self._users += 1
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="interlock-poll", daemon=True)
                self._thread.start()

    def release(self) -> None:
        with self._lock:
            self._users -= 1

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(5)

    def _run(self) -> None:
        probe = _DataVersion(self.db) if self.db.dialect == "sqlite" else None
        interval = SQLITE_PROBE if probe is not None else self.interval
        since = self.notifier.now() - OVERLAP
        try:
            while not self._stop.is_set():
                with self._lock:
                    if self._users <= 0:
                        self._thread = None
                        return
                started = self.notifier.now()
                try:
                    if probe is None or probe.changed():
                        catch_up(self.db, self.notifier, since)
                        since = started - OVERLAP
                except Exception as exc:
                    if probe is not None:
                        probe.reset()  # read again next time
                    log.warning("polling for changed runs failed (%s); trying again", exc)
                self._stop.wait(interval)
        finally:
            if probe is not None:
                probe.close()


class _DataVersion:
    """SQLite's counter of commits by other connections, read on a connection of its own."""

    def __init__(self, db):
        self.db = db
        self._conn = None
        self._last = None

    def changed(self) -> bool:
        if self._conn is None:
            self._conn = self.db.engine.raw_connection()
        cursor = self._conn.cursor()
        try:
            cursor.execute("PRAGMA data_version")
            version = cursor.fetchone()[0]
        finally:
            cursor.close()
        changed, self._last = version != self._last, version
        return changed

    def reset(self) -> None:
        self._last = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
