"""An operation on many waiting runs measured beside a throughput load (bench/bulk_cancel.py,
bench/migrate.py): PostgreSQL + Redis, 2 `interlock worker` processes.

Phases: seed N waiting runs (not timed); the load alone for a window; then the operation while
the same load goes on until it is done. The load is bench_noop5 runs (five steps each) started
from this process, ``inflight`` of them kept unfinished at all times: its rate is the runs that
ended within a window (by their ``finished_at``) over the window's length, alone and over the
operation's whole duration.
"""

import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bench import measure as m


class Load:
    """Keeps ``inflight`` bench_noop5 runs unfinished, starting one as each ends, until stopped."""

    def __init__(self, rt, inflight):
        self.rt, self.inflight = rt, inflight
        self.stop = threading.Event()
        self.started = 0

    def run(self):
        from sqlalchemy import select

        from engine.models import runs

        pending = set()
        while not self.stop.is_set():
            while len(pending) < self.inflight:
                pending.add(self.rt.start("bench_noop5").id)
                self.started += 1
            with self.rt.db.read() as conn:
                pending -= set(conn.execute(select(runs.c.id).where(runs.c.id.in_(list(pending)),
                                                                    runs.c.status == "succeeded")).scalars())
            self.stop.wait(0.05)


def ended_between(dbname, t0, t1) -> int:
    """bench_noop5 runs that ended within [t0, t1) (the database's clock)."""
    return m.pg("SELECT count(*) FROM runs WHERE workflow = 'bench_noop5' AND status = 'succeeded' "
                "AND finished_at >= %s AND finished_at < %s", (t0, t1), dbname=dbname)[0][0]


@dataclass
class Bench:
    rt: object
    dbname: str
    url: str
    seeded_seconds: float = 0.0
    figures: dict = field(default_factory=dict)


def seed(rt, n, start) -> float:
    """``start()`` n times from 8 threads; the seconds it took."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: start(), range(n), chunksize=200))
    return time.monotonic() - t0


@contextmanager
def database(prefix, workflows, db=None):
    """A fresh PostgreSQL database at head with a runtime on it (Redis broker); dropped after."""
    os.environ.update({"INTERLOCK_WORKFLOWS": workflows})
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    dbname = db or f"{prefix}{os.getpid()}"
    queue = f"{prefix}{uuid.uuid4().hex[:8]}"
    m.drop_stale_databases(prefix)
    m.create_database(dbname)
    url = m.pg_url(dbname, "postgresql+psycopg")
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, broker_url=m.REDIS_URL, workflows=workflows, queue=queue))
    try:
        yield Bench(rt, dbname, url)
    finally:
        rt.close()
        m.wait_no_backends(dbname)
        m.drop_database(dbname)
        m.delete_redis_queue(queue)


def beside_load(bench: Bench, operate, *, workflows, inflight=100, alone_seconds=30.0, threads=4, chunk=200,
                log_dir=None) -> dict:
    """Run the load alone, then ``operate()`` (it returns once the operation is done) beside it;
    the operation's seconds and the load's rates alone and during it."""
    rt = bench.rt
    log_dir = Path(log_dir or f"/tmp/{bench.dbname}")
    log_dir.mkdir(exist_ok=True)
    env = m.env_with(INTERLOCK_DATABASE_URL=bench.url, INTERLOCK_BROKER_URL=m.REDIS_URL,
                     INTERLOCK_WORKFLOWS=workflows, INTERLOCK_QUEUE=rt.settings.queue,
                     INTERLOCK_BATCH_CHUNK=chunk)
    worker = m.Child([sys.executable, "-m", "engine.cli", "worker", "--processes", "2", "--threads", str(threads)],
                     env=env, log_path=log_dir / "worker.log")
    try:
        worker.wait_for("worker ready", count=2, timeout=120)
        load = Load(rt, inflight)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        time.sleep(5.0)  # warm up
        a0 = rt.clock.now()
        time.sleep(alone_seconds)
        a1 = rt.clock.now()
        t0, b0 = time.monotonic(), rt.clock.now()
        operate()
        took, b1 = time.monotonic() - t0, rt.clock.now()
        load.stop.set()
        thread.join()
    finally:
        worker.stop()
    alone = ended_between(bench.dbname, a0, a1) / (a1 - a0)
    during = ended_between(bench.dbname, b0, b1) / (b1 - b0)
    return {"seconds": round(took, 2), "load_inflight": inflight, "load_alone_seconds": round(a1 - a0, 1),
            "load_alone_runs_per_s": round(alone, 1), "load_during_runs_per_s": round(during, 1),
            "ratio": round(during / alone, 2), "load_runs_started": load.started}
