"""Starts benchmark runs through ``engine.Interlock`` (settings from INTERLOCK_* variables).

    python bench/driver.py preload WORKFLOW N       start N runs (the workers are not running yet)
    python bench/driver.py single WORKFLOW K        K runs one after another, each awaited (workers running)
    python bench/driver.py embedded WORKFLOW N K    SQLite + memory broker: preload N runs, drive them with
                                                    this process's own worker, then K single runs
    python bench/driver.py fanout WORKFLOW N        start one run with data {"items": [0..N-1]} (a Map's parent)

Each prints one JSON line. Run ids and times are read back from the database by the caller.
"""

import json
import os
import sqlite3
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flows import payload
from engine import Interlock

ACTIVE = ("running", "waiting")


def data_for(workflow):
    return {"payload": payload("start")} if workflow == "bench_payload5" else {}


def preload(rt, workflow, n, threads=4):
    data = data_for(workflow)
    began = time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda _: rt.start(workflow, data), range(n)))
    return time.monotonic() - began


class Poller:
    """Reads run status without going through the engine (and without its SQLAlchemy engines)."""

    def __init__(self, rt):
        url = rt.settings.database_url
        if url.startswith("sqlite"):
            path = url.split(":///", 1)[1]
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._param = "?"
        else:
            import psycopg
            from sqlalchemy.engine import make_url

            u = make_url(url)
            self._conn = psycopg.connect(host=u.host, port=u.port or 5432, user=u.username, dbname=u.database,
                                         autocommit=True)
            self._param = "%s"

    def status(self, run_id):
        return self._conn.execute(f"SELECT status FROM runs WHERE id = {self._param}", (run_id,)).fetchone()[0]

    def active(self):
        return self._conn.execute("SELECT count(*) FROM runs WHERE status IN ('running', 'waiting')").fetchone()[0]

    def close(self):
        self._conn.close()


def single(rt, poller, workflow, k, timeout=30.0, poll=0.002):
    """K runs one after another, each started only when the previous one ended."""
    data, ids = data_for(workflow), []
    for _ in range(k):
        run = rt.start(workflow, data)
        ids.append(run.id)
        deadline = time.monotonic() + timeout
        while poller.status(run.id) in ACTIVE:
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run.id} did not end within {timeout}s")
            time.sleep(poll)
    return ids


class SqlCounter:
    """Statements SQLite ran (its trace callback: the engine's hot path runs on the driver's
    cursor, which SQLAlchemy's events do not see) and commits (SQLAlchemy events)."""

    def __init__(self):
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        self.statements = self.commits = 0
        self.counting = False
        self._lock = threading.Lock()
        event.listen(Pool, "checkout", self._trace)
        event.listen(Engine, "commit", self._commit)

    def _trace(self, dbapi_conn, record, _proxy):
        if isinstance(dbapi_conn, sqlite3.Connection) and not record.info.get("bench_traced"):
            record.info["bench_traced"] = True
            dbapi_conn.set_trace_callback(self._statement)

    def _statement(self, sql):
        if self.counting and not sql.lstrip().upper().startswith(("COMMIT", "ROLLBACK", "PRAGMA")):
            with self._lock:
                self.statements += 1

    def _commit(self, *_args):
        if self.counting:
            with self._lock:
                self.commits += 1


def process_cpu():
    times = os.times()
    return times.user + times.system


def embedded(rt, workflow, n, k, threads, timeout):
    counter = SqlCounter()
    poller = Poller(rt)
    preload_seconds = preload(rt, workflow, n, threads=1)
    worker = rt.worker(threads)
    cpu0 = process_cpu()
    counter.counting = True
    worker.start()
    deadline = time.monotonic() + timeout
    while poller.active():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{poller.active()} runs still active after {timeout}s")
        time.sleep(0.02)
    counter.counting = False
    cpu = process_cpu() - cpu0
    ids = single(rt, poller, workflow, k)
    worker.stop()
    poller.close()
    return {"preload_seconds": preload_seconds, "cpu": cpu, "statements": counter.statements,
            "commits": counter.commits, "single_ids": ids}


def main(argv):
    mode, workflow = argv[0], argv[1]
    rt = Interlock()
    try:
        if mode == "preload":
            out = {"preload_seconds": preload(rt, workflow, int(argv[2]))}
        elif mode == "single":
            poller = Poller(rt)
            out = {"single_ids": single(rt, poller, workflow, int(argv[2]))}
            poller.close()
        elif mode == "fanout":
            began = time.monotonic()
            parent = rt.start(workflow, {"items": list(range(int(argv[2])))})
            out = {"parent_id": parent.id, "start_seconds": time.monotonic() - began}
        elif mode == "embedded":
            threads = int(os.environ.get("INTERLOCK_WORKER_THREADS", "8"))
            out = embedded(rt, workflow, int(argv[2]), int(argv[3]), threads,
                           float(os.environ.get("BENCH_TIMEOUT", "600")))
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        rt.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
