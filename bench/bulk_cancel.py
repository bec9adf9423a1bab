"""Bulk cancel (issue 12): N waiting runs cancelled by one batch while a throughput load runs.

    .venv/bin/python bench/bulk_cancel.py --quick        # 2,000 runs
    .venv/bin/python bench/bulk_cancel.py --runs 20000
    .venv/bin/python bench/bulk_cancel.py                # 100,000 runs (target: within 2 minutes)

PostgreSQL + Redis, 2 `interlock worker` processes. Phases: seed N waiting runs (not timed);
the load alone for --alone seconds; then the batch (`batches.create(cancel,
workflow=bench_waiting)`) while the same load goes on until the batch is done. The load is
bench_noop5 runs (five steps each) started from this process, --inflight of them kept
unfinished at all times: its rate is the runs that ended within a window (by their
``finished_at``) over the window's length, alone and over the batch's whole duration (target:
>= 0.7x its rate alone). Checks at the end: every waiting run cancelled once, counters = items.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure as m  # noqa: E402

WORKFLOWS = "bench.flows,bench.bulk_flows"


def settings_env(url, queue, chunk):
    return m.env_with(INTERLOCK_DATABASE_URL=url, INTERLOCK_BROKER_URL=m.REDIS_URL, INTERLOCK_WORKFLOWS=WORKFLOWS,
                      INTERLOCK_QUEUE=queue, INTERLOCK_BATCH_CHUNK=chunk)


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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 runs")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=100, help="load runs kept unfinished")
    parser.add_argument("--alone", type=float, default=None, help="seconds of the load alone (default: by size)")
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--db", default=None, help="the database's name (default: batch_bench_<pid>)")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.runs
    alone_s = args.alone or (10.0 if args.quick else 30.0)
    os.environ.update({"INTERLOCK_WORKFLOWS": WORKFLOWS})
    from engine import batches
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    dbname = args.db or f"batch_bench_{os.getpid()}"
    queue = f"batch_bench_{uuid.uuid4().hex[:8]}"
    m.drop_stale_databases("batch_bench_")
    m.create_database(dbname)
    url = m.pg_url(dbname, "postgresql+psycopg")
    Database(url).upgrade()
    tmp = Path(f"/tmp/batch_bench_{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    rt = Interlock(Settings(database_url=url, broker_url=m.REDIS_URL, workflows=WORKFLOWS, queue=queue))
    worker = None
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda _: rt.start("bench_waiting"), range(n), chunksize=200))
        seeded = time.monotonic() - t0
        worker = m.Child([sys.executable, "-m", "engine.cli", "worker", "--processes", "2", "--threads",
                          str(args.threads)], env=settings_env(url, queue, args.chunk), log_path=tmp / "worker.log")
        worker.wait_for("worker ready", count=2, timeout=120)
        load = Load(rt, args.inflight)
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        time.sleep(5.0)  # warm up
        a0 = rt.clock.now()
        time.sleep(alone_s)
        a1 = rt.clock.now()
        t0, b0 = time.monotonic(), rt.clock.now()
        batch = batches.create(rt, "cancel", {"workflow": "bench_waiting"}, reason="bench")
        while batches.get(rt, batch["id"])["status"] != "done":
            time.sleep(0.05)
        took, b1 = time.monotonic() - t0, rt.clock.now()
        load.stop.set()
        thread.join()
        alone = ended_between(dbname, a0, a1) / (a1 - a0)
        during = ended_between(dbname, b0, b1) / (b1 - b0)
        done = batches.get(rt, batch["id"])
        checks = m.pg("SELECT count(*), count(DISTINCT run_id) FROM history WHERE kind = 'cancelled'", dbname=dbname)[0]
        items = m.pg("SELECT outcome, count(*) FROM batch_items GROUP BY outcome", dbname=dbname)
        out = {"runs": n, "chunk": args.chunk, "seed_seconds": round(seeded, 1),
               "cancel_seconds": round(took, 2), "cancelled_per_second": round(n / took),
               "load_inflight": args.inflight, "load_alone_seconds": round(a1 - a0, 1),
               "load_alone_runs_per_s": round(alone, 1), "load_during_runs_per_s": round(during, 1),
               "ratio": round(during / alone, 2), "load_runs_started": load.started,
               "chunks": m.pg("SELECT count(*), count(DISTINCT owner) FROM batch_chunks", dbname=dbname)[0],
               "batch": {k: done[k] for k in ("status", "done", "refused", "skipped")},
               "cancelled_history_rows": checks[0], "cancelled_runs": checks[1], "items": dict(items)}
        print(json.dumps(out))
        assert done["done"] == n == checks[0] == checks[1] == dict(items).get("applied"), out
    finally:
        if worker is not None:
            worker.stop()
        rt.close()
        m.wait_no_backends(dbname)
        m.drop_database(dbname)
        m.delete_redis_queue(queue)


if __name__ == "__main__":
    main()
