"""How fast the runs page answers with many runs in the database.

Inserts N runs (default 100,000) in bulk through the engine's tables into a throwaway SQLite
database (or an empty database at --database-url, migrated first), serves the app on
127.0.0.1 with werkzeug's threaded server, and times GET requests one after another:
the runs page in its common views, against GET /api/runs (same page size) as the baseline
measured in the same run.

    .venv/bin/python bench/runs_page.py [--runs 100000] [--requests 60]
"""

import argparse
import os
import random
import statistics
import tempfile
import threading
import time

import requests
from sqlalchemy import create_engine

WORKFLOWS = {
    "cargo": ["booked", "in_transit", "at_port", "customs", "delivered", "lost"],
    "orders": ["placed", "payment", "review", "shipping", "releasing", "completed", "cancelled"],
}
FINAL = {"delivered": "succeeded", "lost": "failed", "completed": "succeeded", "cancelled": "cancelled"}


def fake_runs(n, start):
    """Runs spread over the last 30 days, ids time-ordered like engine.ids.new_id."""
    rnd = random.Random(7)
    for i in range(n):
        workflow = "cargo" if i % 3 else "orders"
        state = rnd.choice(WORKFLOWS[workflow])
        status = FINAL.get(state) or rnd.choice(["waiting", "waiting", "running"])
        if status == "waiting" and rnd.random() < 0.02:
            status = "failed"
        created = start + i * (30 * 86400 / n)
        updated = created + rnd.uniform(0, 3600)
        yield {
            "id": f"{int(created * 1000):012x}{rnd.getrandbits(80):020x}", "workflow": workflow,
            "version": 1, "status": status, "state": state, "configuration": [state], "entries": {state: 2},
            "data": {"container": f"MSCU{i:07d}", "manifest": ["toys"]},
            "business_key": f"KEY-{i:07d}", "idempotency_key": None, "last_seq": 2,
            "open_tasks": 1 if status == "running" else 0, "created_at": created, "updated_at": updated,
            "finished_at": updated if status in ("succeeded", "failed", "cancelled") else None,
        }


def populate(url, n):
    from engine.models import runs

    engine = create_engine(url)
    batch, started = [], time.perf_counter()
    with engine.begin() as conn:
        for row in fake_runs(n, time.time() - 30 * 86400):
            batch.append(row)
            if len(batch) == 5000:
                conn.execute(runs.insert(), batch)
                batch = []
        if batch:
            conn.execute(runs.insert(), batch)
    engine.dispose()
    return time.perf_counter() - started


def timed(session, url, count):
    session.get(url).raise_for_status()  # warm: templates compiled, caches filled
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        response = session.get(url)
        samples.append((time.perf_counter() - t0) * 1000)
        response.raise_for_status()
    samples.sort()
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.95) - 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--database-url", default=None, help="an empty database (default: SQLite in a temp dir)")
    args = parser.parse_args()

    from werkzeug.serving import WSGIRequestHandler, make_server

    from api import create_app
    from engine.config import Settings
    from engine.db import Database
    from engine.runtime import Interlock

    url = args.database_url or f"sqlite:///{tempfile.mkdtemp(prefix='interlock-bench-')}/runs.db"
    Database(url).upgrade()
    took = populate(url, args.runs)
    print(f"inserted {args.runs:,} runs in {took:.1f} s into {url.split(':', 1)[0]}")

    rt = Interlock(Settings(database_url=url, workflows="workflows"))
    app = create_app({"SECRET_KEY": "bench"}, interlock=rt)
    WSGIRequestHandler.log_request = lambda *a, **k: None  # no access log in the timings
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}"
    middle = f"KEY-{args.runs // 2:07d}"
    views = [
        ("GET /api/runs?limit=50 (baseline)", "/api/runs?limit=50"),
        ("runs page, newest first", "/"),
        ("runs page, status=failed", "/?status=failed"),
        ("runs page, workflow=orders&state=payment", "/?workflow=orders&state=payment"),
        ("runs page, search by business key", f"/?q={middle}"),
        ("runs page, from/to one day", "/?from={d}&to={d}".format(d=time.strftime("%Y-%m-%d", time.gmtime(time.time() - 15 * 86400)))),
    ]
    results = []
    try:
        with requests.Session() as session:
            first = session.get(base + "/").text
            cursor = first.split('rel="next"')[0].rsplit("cursor=", 1)[1].split('"')[0]
            views.append(("runs page, second page (keyset)", f"/?cursor={cursor}"))
            for label, path in views:
                p50, p95 = timed(session, base + path, args.requests)
                results.append((label, p50, p95))
    finally:
        server.shutdown()
        rt.close()

    baseline = results[0][1]
    print(f"\n{args.runs:,} runs, {args.requests} sequential requests per view, {os.cpu_count()} CPUs\n")
    print(f"| view | p50 ms | p95 ms | p50 / baseline |\n| --- | ---: | ---: | ---: |")
    for label, p50, p95 in results:
        print(f"| {label} | {p50:.1f} | {p95:.1f} | {p50 / baseline:.2f} |")
    worst = max(p50 for label, p50, _ in results[1:])
    print(f"\nslowest runs-page median: {worst:.1f} ms ({'under' if worst < 200 else 'OVER'} the 200 ms target)")


if __name__ == "__main__":
    main()
