"""Moving N waiting runs to a new version of their workflow (issue 14) beside a throughput load.

    .venv/bin/python bench/migrate.py --quick        # 2,000 runs
    .venv/bin/python bench/migrate.py                # 100,000 runs

Each run of bench_parcel v1 waits in ``shipped`` with a timer armed; v2 renames the state
``in_transit`` and waits 5 days instead of 3, so every run moves with a mapping and its timer is
re-armed. Timed apart: the plan (`migration_plans.create`, judging every run, not beside the
load), then applying it (the migrate batch the 2 worker processes work) beside the load of
bench/beside_load.py. Checks at the end: every run on v2 in ``in_transit`` with one `migrated`
entry and its timer due 5 days after it entered.
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import beside_load as b  # noqa: E402
from bench import measure as m  # noqa: E402

WORKFLOWS = "bench.flows,bench.migrate_flows"
DAY = 86400.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 runs")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--inflight", type=int, default=100, help="load runs kept unfinished")
    parser.add_argument("--alone", type=float, default=None, help="seconds of the load alone (default: by size)")
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--db", default=None, help="the database's name (default: migrate_bench_<pid>)")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.runs
    from engine import batches, migration_plans

    with b.database("migrate_bench_", WORKFLOWS, args.db) as bench:
        rt, dbname = bench.rt, bench.dbname
        seeded = b.seed(rt, n, lambda: rt.start("bench_parcel", version=1))
        t0 = time.monotonic()
        plan = migration_plans.create(rt, "bench_parcel", 1, 2, mapping={"shipped": "in_transit"})
        planned = time.monotonic() - t0
        made = {}

        def apply():
            made.update(migration_plans.apply(rt, plan["id"]))
            while batches.get(rt, made["id"])["status"] != "done":
                time.sleep(0.05)

        figures = b.beside_load(bench, apply, workflows=WORKFLOWS, inflight=args.inflight,
                                alone_seconds=args.alone or (10.0 if args.quick else 30.0), threads=args.threads,
                                chunk=args.chunk)
        done = batches.get(rt, made["id"])
        moved = m.pg("SELECT count(*), count(DISTINCT run_id) FROM history WHERE kind = 'migrated'", dbname=dbname)[0]
        on_v2 = m.pg("SELECT count(*) FROM runs WHERE workflow = 'bench_parcel' AND version = 2 "
                     "AND state = 'in_transit'", dbname=dbname)[0][0]
        rearmed = m.pg("SELECT count(*) FROM timers t JOIN history h ON h.run_id = t.run_id AND h.seq = t.entry_seq "
                       "WHERE t.status = 'armed' AND t.state = 'in_transit' AND abs(t.due_at - h.at - %s) < 0.01",
                       (5 * DAY,), dbname=dbname)[0][0]
        took = figures.pop("seconds")
        out = {"runs": n, "chunk": args.chunk, "seed_seconds": round(seeded, 1), "plan_seconds": round(planned, 2),
               "planned_per_second": round(n / planned), "counts": plan["counts"], "apply_seconds": took,
               "moved_per_second": round(n / took), **figures,
               "batch": {k: done[k] for k in ("status", "done", "refused", "skipped")},
               "migrated_history_rows": moved[0], "migrated_runs": moved[1], "on_v2": on_v2, "rearmed": rearmed}
        print(json.dumps(out))
        assert done["done"] == n == moved[0] == moved[1] == on_v2 == rearmed, out


if __name__ == "__main__":
    main()
