"""The database server's clock, as each process reads it without a round trip.

Every durable time (due times, leases, re-send and availability times, history and run
times) is written by one process and compared by another, possibly on another host. So
they are all taken from one clock, the database server's: each process measures its offset
to it (a few round trips, at start-up and every ``REMEASURE_EVERY`` seconds) and adds it to
its own clock. SQLite is one host: its offset is 0 and nothing is measured.

Bounds: a measured offset is wrong by at most half the round trip of its best sample
(``error``); a clock drifts little in ``REMEASURE_EVERY`` seconds.
"""

import logging
import socket
import time

from prometheus_client import Gauge
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

SAMPLES = 5
REMEASURE_EVERY = 30.0
# The server's current time (not the transaction's start), in epoch seconds.
SERVER_NOW = {
    "postgresql": "SELECT extract(epoch from clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
    "mariadb": "SELECT UNIX_TIMESTAMP(NOW(6))",
}

clock_offset = Gauge("interlock_clock_offset_seconds",
                     "The database server's clock minus this process's clock (durable times are corrected by it)")


def _local_time() -> float:
    return time.time()  # looked up at each call: a test may shift time.time in its process


class Clock:
    """``now()``: this process's clock corrected by its measured offset to the database's."""

    def __init__(self, *, warn_over: float = 1.0, local=_local_time):
        self.warn_over = warn_over
        self._local = local
        self.offset = 0.0
        self.error: float | None = None  # half the best sample's round trip; None: never measured
        self._tried_at: float | None = None  # time.monotonic() of the last measurement, even a failed one
        self._warned = False

    def now(self) -> float:
        return self._local() + self.offset

    def is_stale(self) -> bool:
        return self._tried_at is None or time.monotonic() - self._tried_at >= REMEASURE_EVERY

    def measure(self, bind) -> float:
        """Measure the offset on ``bind`` (an Engine or a Connection); returns it."""
        if isinstance(bind, Engine):
            with bind.connect() as conn:
                return self.measure(conn)
        self._tried_at = time.monotonic()
        query = SERVER_NOW.get(bind.dialect.name)
        if query is None:  # SQLite: the database is on this host, its clock is ours
            self.offset, self.error = 0.0, 0.0
        else:
            best = None
            for _ in range(SAMPLES):
                sent = self._local()
                server = float(bind.exec_driver_sql(query).scalar())
                received = self._local()
                if best is None or received - sent < best[0]:
                    best = (received - sent, server - (sent + received) / 2)
            self.error, self.offset = best[0] / 2, best[1]
        clock_offset.set(self.offset)
        self._warn_if_skewed(bind)
        return self.offset

    def _warn_if_skewed(self, bind) -> None:
        if self._warned or abs(self.offset) <= self.warn_over:
            return
        self._warned = True
        server = bind.engine.url.host or "the database server"
        log.warning("CLOCK SKEW: the clock of host %s is %.3f s %s the database server's (%s), more than "
                    "INTERLOCK_CLOCK_SKEW_WARN=%g s; durable times use the database's clock, corrected by "
                    "this offset (measured within %.3f s), but fix the host's time synchronization (NTP)",
                    socket.gethostname(), abs(self.offset), "behind" if self.offset > 0 else "ahead of",
                    server, self.warn_over, self.error)
