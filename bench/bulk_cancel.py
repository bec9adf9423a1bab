"""Bulk cancel (issue 12): N waiting runs cancelled by one batch while a throughput load runs.

    .venv/bin/python bench/bulk_cancel.py --quick        # 2,000 runs
    .venv/bin/python bench/bulk_cancel.py --runs 20000
    .venv/bin/python bench/bulk_cancel.py                # 100,000 runs (target: within 2 minutes)

PostgreSQL + Redis, 2 `interlock worker` processes (bench/beside_load.py): the batch
(`batches.create(cancel, workflow=bench_waiting)`) runs beside the same load it is compared with
alone (target: >= 0.7x its rate alone). Checks at the end: every waiting run cancelled once,
counters = items.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import beside_load as b  # noqa: E402
from bench import measure as m  # noqa: E402

WORKFLOWS = "bench.flows,bench.bulk_flows"


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
    from engine import batches

    with b.database("batch_bench_", WORKFLOWS, args.db) as bench:
        rt, dbname = bench.rt, bench.dbname
        seeded = b.seed(rt, n, lambda: rt.start("bench_waiting"))
        made = {}

        def cancel():
            made.update(batches.create(rt, "cancel", {"workflow": "bench_waiting"}, reason="bench"))
            while batches.get(rt, made["id"])["status"] != "done":
                time.sleep(0.05)

        figures = b.beside_load(bench, cancel, workflows=WORKFLOWS, inflight=args.inflight,
                                alone_seconds=args.alone or (10.0 if args.quick else 30.0), threads=args.threads,
                                chunk=args.chunk)
        done = batches.get(rt, made["id"])
        checks = m.pg("SELECT count(*), count(DISTINCT run_id) FROM history WHERE kind = 'cancelled'", dbname=dbname)[0]
        items = m.pg("SELECT outcome, count(*) FROM batch_items GROUP BY outcome", dbname=dbname)
        took = figures.pop("seconds")
        out = {"runs": n, "chunk": args.chunk, "seed_seconds": round(seeded, 1),
               "cancel_seconds": took, "cancelled_per_second": round(n / took), **figures,
               "chunks": m.pg("SELECT count(*), count(DISTINCT owner) FROM batch_chunks", dbname=dbname)[0],
               "batch": {k: done[k] for k in ("status", "done", "refused", "skipped")},
               "cancelled_history_rows": checks[0], "cancelled_runs": checks[1], "items": dict(items)}
        print(json.dumps(out))
        assert done["done"] == n == checks[0] == checks[1] == dict(items).get("applied"), out


if __name__ == "__main__":
    main()
