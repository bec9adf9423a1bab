"""Bulk cancel (issue 12): N waiting runs cancelled by one batch while a throughput load runs.

    .venv/bin/python bench/bulk_cancel.py --quick        # 2,000 runs
    .venv/bin/python bench/bulk_cancel.py --runs 20000
    .venv/bin/python bench/bulk_cancel.py                # 100,000 runs (target: within 2 minutes)

PostgreSQL + Redis, 2 `interlock worker` processes. Phases: seed N waiting runs (not timed);
the load alone (L runs of bench_noop5, five steps each, started and driven to the end: runs/s);
then the batch (`batches.create(cancel, workflow=bench_waiting)`) created while the same load
runs again: the time until the batch is done, and the load's rate meanwhile (target >= 0.7x
its rate alone). Checks at the end: every waiting run cancelled once, counters = items.
"""

import argparse
import json
import os
import sys
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


def load(rt, n) -> float:
    """Start n bench_noop5 runs and wait until all ended: runs/s (start of the first to the last end)."""
    t0 = time.monotonic()
    ids = [rt.start("bench_noop5").id for _ in range(n)]
    pending = set(ids)
    while pending:
        with rt.db.read() as conn:
            from sqlalchemy import select

            from engine.models import runs
            done = set(conn.execute(select(runs.c.id).where(runs.c.id.in_(list(pending)[:5000]),
                                                            runs.c.status == "succeeded")).scalars())
        pending -= done
        if pending:
            time.sleep(0.05)
    return n / (time.monotonic() - t0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 runs")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--load", type=int, default=None, help="runs of the throughput load (default: by size)")
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.runs
    load_n = args.load or (300 if args.quick else 1500)
    os.environ.update({"INTERLOCK_WORKFLOWS": WORKFLOWS})
    from engine import batches
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    dbname = f"batch_bench_{os.getpid()}"
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
        load(rt, 50)  # warm up
        alone = load(rt, load_n)
        t0 = time.monotonic()
        batch = batches.create(rt, "cancel", {"workflow": "bench_waiting"}, reason="bench")
        from concurrent.futures import ThreadPoolExecutor as Pool

        with Pool(1) as pool:
            during_f = pool.submit(load, rt, load_n)
            while batches.get(rt, batch["id"])["status"] != "done":
                time.sleep(0.05)
            took = time.monotonic() - t0
            during = during_f.result()
            load_took = load_n / during
        done = batches.get(rt, batch["id"])
        checks = m.pg("SELECT count(*), count(DISTINCT run_id) FROM history WHERE kind = 'cancelled'", dbname=dbname)[0]
        items = m.pg("SELECT outcome, count(*) FROM batch_items GROUP BY outcome", dbname=dbname)
        out = {"runs": n, "chunk": args.chunk, "seed_seconds": round(seeded, 1),
               "cancel_seconds": round(took, 2), "cancelled_per_second": round(n / took),
               "load_runs": load_n, "load_alone_runs_per_s": round(alone, 1),
               "load_during_runs_per_s": round(during, 1), "ratio": round(during / alone, 2),
               "load_overlap": round(min(1.0, took / load_took), 2),
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
