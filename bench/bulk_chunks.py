"""A bulk cancel's chunks in one process, no broker, no load: how long each fifth of them takes.

    .venv/bin/python bench/bulk_chunks.py --runs 100000 [--chunk 200] [--profile out.prof]

Seeds N bench_waiting runs fast (one run started by the engine, then cloned in SQL with new
time-ordered ids and its history rows), creates a cancel batch over them and calls
``batch_work.work`` until it is done, in this process. Prints the mean chunk time of each fifth
of the chunks and the tables' dead tuples as the batch goes on: a chunk that gets slower as the
batch goes on shows here, without the shared machine's other noise of bench/bulk_cancel.py.
"""

import argparse
import cProfile
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure as m  # noqa: E402

WORKFLOWS = "bench.flows,bench.bulk_flows"


def seed(dbname, template, n):
    """n copies of run ``template`` (and its history), created 1 ms apart before it."""
    sql = lambda query: m.pg(query, dbname=dbname)  # noqa: E731
    cols = [c for (c,) in sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'runs' "
                              "ORDER BY ordinal_position")]
    sql(f"CREATE TABLE seed AS SELECT g, r.created_at - ({n} - g) * 0.001 AS at FROM runs r, "
        f"generate_series(1, {n}) g WHERE r.id = '{template}'")
    sql("ALTER TABLE seed ADD COLUMN nid text")
    sql("UPDATE seed SET nid = lpad(to_hex((at * 1000)::bigint), 12, '0') || substr(md5(g::text || random()::text), 1, 20)")
    given = {"id": "s.nid", "created_at": "s.at", "updated_at": "s.at", "idempotency_key": "NULL"}
    sql(f"INSERT INTO runs ({', '.join(cols)}) SELECT {', '.join(given.get(c, 'r.' + c) for c in cols)} "
        f"FROM runs r, seed s WHERE r.id = '{template}'")
    hcols = [c for (c,) in sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'history' "
                               "ORDER BY ordinal_position")]
    sql(f"INSERT INTO history ({', '.join(hcols)}) SELECT {', '.join('s.nid' if c == 'run_id' else 'h.' + c for c in hcols)} "
        f"FROM history h, seed s WHERE h.run_id = '{template}'")
    sql("DROP TABLE seed")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=200)
    parser.add_argument("--db", default="interlock_bulk_chunks")
    parser.add_argument("--profile", default=None, help="write a cProfile of the chunks here")
    args = parser.parse_args(argv)
    os.environ["INTERLOCK_WORKFLOWS"] = WORKFLOWS
    from engine import batch_work, batches
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    m.create_database(args.db)
    url = m.pg_url(args.db, "postgresql+psycopg")
    Database(url).upgrade()
    rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows=WORKFLOWS, queue="bulk_chunks",
                            batch_chunk=args.chunk))
    try:
        seed(args.db, rt.start("bench_waiting").id, args.runs - 1)
        batch = batches.create(rt, "cancel", {"workflow": "bench_waiting"}, reason="bench")
        profile = cProfile.Profile() if args.profile else None
        times, t0 = [], time.monotonic()
        every = max(1, args.runs // args.chunk // 5)
        while True:
            if len(times) % every == 0:
                print(f"chunk {len(times)}: live and dead tuples", m.pg(
                    "SELECT relname, n_live_tup, n_dead_tup FROM pg_stat_user_tables WHERE relname IN "
                    "('runs', 'batch_items', 'history') ORDER BY relname", dbname=args.db), flush=True)
            started = time.monotonic()
            if profile:
                profile.enable()
            read = batch_work.work(rt)
            if profile:
                profile.disable()
            times.append(time.monotonic() - started)
            if read == 0:
                break
        took = time.monotonic() - t0
        for i in range(0, len(times), every):
            part = times[i:i + every]
            print(f"chunks {i}-{i + len(part)}: mean {1000 * sum(part) / len(part):.1f} ms")
        done = batches.get(rt, batch["id"])
        print(f"{args.runs} runs in {took:.1f} s ({args.runs / took:.0f}/s): {done['status']}, {done['done']} done")
        if profile:
            profile.dump_stats(args.profile)
    finally:
        rt.close()
        m.wait_no_backends(args.db)
        m.drop_database(args.db)


if __name__ == "__main__":
    main()
