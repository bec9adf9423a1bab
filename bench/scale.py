"""The cost curve (issue 5, scope 3): does Interlock stay as fast with 10^6 runs stored as with 10^3?

    .venv/bin/python bench/scale.py            # 10^3 .. 10^6 stored runs, 10^5 due timers (15-30 minutes)
    .venv/bin/python bench/scale.py --quick    # 10^3, 10^4 stored runs, 10^4 due timers (1-5 minutes, with the machine's load)

On PostgreSQL + Redis (127.0.0.1 only), in databases of its own (``interlock_scale`` and the
reference ``interlock_scale_ref``, created with `interlock db upgrade`, dropped at the end
unless --keep-db keeps the first):

1. Transitions/s and hop latency of the 5-step no-op workflow (bench/flows.py) with 10^3, 10^4,
   10^5 and 10^6 runs already stored. The database grows in place from one level to the next.
   The background is bulk-loaded with INSERT … SELECT over generate_series (the rows are made
   by the server, shaped like the engine's own): per 20 runs, 13 succeeded bench_noop5 runs with
   their 16 history rows and 5 tasks, 1 failed one (history, tasks up to the failed step) and 6
   bench_wait runs (bench/scale_flows.py) waiting on an armed timer due 1-30 days ahead. Runs
   are spread backwards from now at 1,000 a day, so 10^6 runs cover ~2.7 years.
   After each load: VACUUM ANALYZE and CHECKPOINT (what autovacuum would do, before the
   timings rather than in the middle of them). Then, per level: runs started one after another
   with the workers idle ("alone": hop and single-run latency), and --repeats drains of --runs
   runs queued first, then driven by `interlock worker` processes (transitions/s, loaded hop).
   Hop = a step's `transition` history row -> the next `step_started` row of the run.
   Each drain alternates with one on the reference database, which holds --reference runs
   (10^3) throughout: the machine is shared, its load changes from minute to minute, and the
   ratio of the two medians taken side by side is what says whether the stored runs cost
   anything (at the 10^3 level both hold the same, so that ratio is the method's own noise).
2. `GET /api/runs` against `interlock serve`, at the largest level: newest page, each filter,
   created ranges, 200 pages of `next`, a cursor near the oldest run; p50/p95 of sequential
   requests after one warm-up, and the EXPLAIN ANALYZE of each view over the 50 ms target.
3. Timers: --timers bench_wait runs (topped up with more waiting runs if the background has too
   few) brought due together a few seconds ahead while `interlock worker` processes wait;
   firing lag (timers.fired_at - due_at; fired_at is the firing transaction's start, so its
   commit comes a batch later) p50/p99, timers fired per second, transactions per fired timer,
   CPU per fired timer, and a py-spy profile of one worker process while it fires.

Timings on a shared machine are noisy: compare medians of repeated runs.
"""

import argparse
import http.client
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure as m

DBNAME = "interlock_scale"
WORKFLOWS = "bench.flows,bench.scale_flows"
RUNS_PER_DAY = 1000
ACTIVE = ("running", "waiting")
PY_SPY = Path(sys.executable).parent / "py-spy"
# In a worker's log: its broker went away (another process restarted Redis).
BROKER_TROUBLE = ("Consumer encountered a connection error", "could not send task")


class _Counter(logging.Handler):
    """Counts the warnings of this process's engine.broker logger (a run's first step not sent)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += 1


BROKER_WARNINGS = _Counter()
logging.getLogger("engine.broker").addHandler(BROKER_WARNINGS)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ms(values, p):
    v = m.percentile(values, p)
    return None if v is None else v * 1000.0


def over(value, target):
    """How a figure compares with a ceiling: "met", or "N× over"."""
    if value <= target:
        return "met"
    ratio = value / target
    return f"{ratio:.1f}× over" if ratio < 10 else f"{ratio:.0f}× over"


def fmt(v, digits=1):
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- the background: rows made by the server ---------------------------------------------------

# bg: the new runs. i counts back from the anchor (the newest background run is i = 0); kind 0 is a
# succeeded bench_noop5 run, 1 a bench_noop5 run failed at step f, 2 a bench_wait run on an armed timer.
_BG = """
CREATE TEMP TABLE bg ON COMMIT DROP AS
SELECT i, c AS created, k AS kind, f,
       lpad(to_hex((c * 1000)::bigint), 12, '0') || substr(md5(i::text || 'run'), 1, 20) AS rid,
       CASE k WHEN 0 THEN 16 WHEN 1 THEN 3 * f + 1 ELSE 1 END AS last_seq,
       CASE k WHEN 0 THEN 'done' WHEN 1 THEN 's' || f ELSE 'waiting' END AS state,
       CASE k WHEN 0 THEN 16 WHEN 1 THEN 3 * (f - 1) + 1 ELSE 1 END AS entry
FROM (SELECT i, %(anchor)s - (i + 1) * %(spacing)s + random() * %(spacing)s * 0.9 AS c,
             CASE WHEN %(all_waiting)s THEN 2 WHEN i %% 20 < 13 THEN 0 WHEN i %% 20 = 13 THEN 1 ELSE 2 END AS k,
             1 + (i / 20) %% 5 AS f
      FROM generate_series(%(first)s, %(first)s + %(count)s - 1) AS i) s
"""

_RUNS = """
INSERT INTO runs (id, workflow, version, status, state, configuration, entries, data, business_key,
                  idempotency_key, last_seq, open_tasks, open_timers, created_at, updated_at, finished_at)
SELECT rid, CASE kind WHEN 2 THEN 'bench_wait' ELSE 'bench_noop5' END, 1,
       CASE kind WHEN 0 THEN 'succeeded' WHEN 1 THEN 'failed' ELSE 'waiting' END,
       state, json_build_array(state), json_build_object(state, entry), '{}'::json,
       'KEY-' || lpad(i::text, 8, '0'), NULL, last_seq, 0, CASE kind WHEN 2 THEN 1 ELSE 0 END,
       created, created + last_seq * 0.003, CASE kind WHEN 2 THEN NULL ELSE created + last_seq * 0.003 END
FROM bg ORDER BY rid
"""

# Step j of a run: seq 3j-1 step_started, 3j step_succeeded (or step_failed), 3j+1 transition (or failed).
_HISTORY = """
INSERT INTO history (run_id, seq, at, kind, event, source, target, cause, data, detail)
SELECT rid, s, created + s * 0.003,
       CASE WHEN s = 1 THEN 'started'
            WHEN r = 0 THEN 'step_started'
            WHEN r = 1 THEN CASE WHEN failing THEN 'step_failed' ELSE 'step_succeeded' END
            ELSE CASE WHEN failing THEN 'failed' ELSE 'transition' END END,
       CASE WHEN s > 1 AND r > 0 AND NOT failing THEN 'e' || j END,
       CASE WHEN s > 1 AND r = 2 THEN 's' || j END,
       CASE WHEN s = 1 THEN CASE kind WHEN 2 THEN 'waiting' ELSE 's1' END
            WHEN r = 2 AND NOT failing THEN CASE WHEN j = 5 THEN 'done' ELSE 's' || (j + 1) END END,
       CASE WHEN s = 1 THEN 'start' ELSE 'step' END,
       'null'::json,
       CASE WHEN s = 1 THEN json_build_object('workflow', CASE kind WHEN 2 THEN 'bench_wait' ELSE 'bench_noop5' END,
                                              'version', 1, 'business_key', 'KEY-' || lpad(i::text, 8, '0'))
            WHEN r = 0 THEN json_build_object('task', tid, 'step', 'step' || j, 'state', 's' || j,
                                              'attempt', CASE WHEN failing THEN 4 ELSE 1 END)
            WHEN r = 1 AND failing THEN json_build_object('task', tid, 'step', 'step' || j, 'attempt', 4,
                                                          'duration', 0.0009, 'error', 'RuntimeError: boom',
                                                          'traceback', NULL, 'lost', NULL, 'final', true)
            WHEN r = 1 THEN json_build_object('task', tid, 'step', 'step' || j, 'attempt', 1, 'duration', 0.0008)
            WHEN failing THEN json_build_object('task', tid, 'step', 'step' || j, 'error', 'RuntimeError: boom',
                                                'on_error', NULL)
            ELSE json_build_object('task', tid) END
FROM (SELECT bg.*, s, (s - 2) %% 3 AS r, (s - 2) / 3 + 1 AS j,
             kind = 1 AND (s - 2) / 3 + 1 = f AS failing,
             lpad(to_hex(((created + ((s - 2) / 3 + 1) * 0.009) * 1000)::bigint), 12, '0')
               || substr(md5(rid || ((s - 2) / 3 + 1)::text), 1, 20) AS tid
      FROM bg CROSS JOIN LATERAL generate_series(1, bg.last_seq) AS s) h
ORDER BY rid, s
"""

_TASKS = """
INSERT INTO tasks (id, run_id, state, entry_seq, name, kind, status, attempt, max_attempts, available_at,
                   sent_at, claimed_at, lease_until, token, visibility_timeout, last_error, created_at, updated_at)
SELECT lpad(to_hex(((created + j * 0.009) * 1000)::bigint), 12, '0') || substr(md5(rid || j::text), 1, 20),
       rid, 's' || j, 3 * (j - 1) + 1, 'step' || j, 'step',
       CASE WHEN kind = 1 AND j = f THEN 'failed' ELSE 'succeeded' END,
       CASE WHEN kind = 1 AND j = f THEN 4 ELSE 1 END, 4,
       created + j * 0.009, created + j * 0.009, created + j * 0.009 + 0.001, NULL, NULL, NULL,
       CASE WHEN kind = 1 AND j = f THEN 'RuntimeError: boom' END,
       created + j * 0.009, created + j * 0.009 + 0.002
FROM bg CROSS JOIN LATERAL generate_series(1, CASE kind WHEN 0 THEN 5 ELSE f END) AS j
WHERE kind < 2
ORDER BY 1
"""

_TIMERS = """
INSERT INTO timers (id, run_id, state, entry_seq, name, kind, event, due_at, status, created_at, fired_at)
SELECT lpad(to_hex(((created + 0.001) * 1000)::bigint), 12, '0') || substr(md5(rid || 'timer'), 1, 20),
       rid, 'waiting', 1, 'deadline', 'timer', 'expire', %(anchor)s + 86400 * (1 + random() * 29), 'armed',
       created, NULL
FROM bg WHERE kind = 2
ORDER BY 1
"""


class Background:
    """Background rows, counted back in time from ``anchor`` (the script's start)."""

    def __init__(self, dbname, anchor):
        self.dbname, self.anchor = dbname, anchor
        self.loaded = 0  # background runs so far: the next one is i = loaded

    def add(self, count, all_waiting=False):
        import psycopg

        params = {"anchor": self.anchor, "spacing": 86400.0 / RUNS_PER_DAY, "first": self.loaded,
                  "count": count, "all_waiting": all_waiting}
        began = time.monotonic()
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.dbname}") as conn:
            # The runs_notify trigger would queue one NOTIFY per row: nobody listens to a bulk load.
            conn.execute("SET session_replication_role = replica")
            conn.execute("SET work_mem = '256MB'")
            conn.execute("SET maintenance_work_mem = '512MB'")
            conn.execute(_BG, params)
            for sql in (_RUNS, _HISTORY, _TASKS, _TIMERS):
                conn.execute(sql, params)
            conn.commit()
        self.loaded += count
        return time.monotonic() - began

    def settle(self):
        """VACUUM ANALYZE (visibility map, planner statistics) and a CHECKPOINT, before timing."""
        import psycopg

        began = time.monotonic()
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.dbname}",
                             autocommit=True) as conn:
            for table in ("runs", "history", "tasks", "timers"):
                conn.execute(f"VACUUM (ANALYZE) {table}")
            conn.execute("CHECKPOINT")
        return time.monotonic() - began


# -- the benchmark -------------------------------------------------------------------------------

class Db:
    """One bench database: its monitoring connection, its queue, an engine to start runs, its background."""

    def __init__(self, name, args, anchor):
        self.name, self.args = name, args
        self.queue = f"bench_scale_{os.getpid()}_{name}"
        self.bg = Background(name, anchor)
        self.rt = None
        self.created = False
        self._mon = None
        self.statements = 0  # ours, on this database: subtracted from its transaction count

    def env(self, **extra):
        return m.env_with(INTERLOCK_DATABASE_URL=m.pg_url(self.name), INTERLOCK_BROKER_URL=m.REDIS_URL,
                          INTERLOCK_WORKFLOWS=WORKFLOWS, INTERLOCK_QUEUE=self.queue,
                          INTERLOCK_WORKER_THREADS=self.args.threads,
                          INTERLOCK_RESEND_AFTER=self.args.resend_after, **extra)

    def create(self, reuse=False):
        """Create the database (or keep the one there, with --reuse-db) and migrate it to head."""
        exists = m.pg("SELECT 1 FROM pg_database WHERE datname = %s", (self.name,))
        if not (reuse and exists):
            m.create_database(self.name)
        self.created = True
        done = subprocess.run([sys.executable, "-m", "engine.cli", "db", "upgrade"], env=self.env(), cwd=m.ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError("interlock db upgrade failed: " + done.stderr.strip()[-500:])
        if reuse and exists:
            # Go on counting the background where the earlier invocation stopped.
            found = self.sql("SELECT max(substr(business_key, 5)::int), min(created_at) FILTER "
                             "(WHERE business_key = 'KEY-00000000') FROM runs WHERE business_key LIKE 'KEY-%%'")[0]
            if found[0] is not None:
                self.bg.loaded = found[0] + 1
                self.bg.anchor = found[1] + 86400.0 / RUNS_PER_DAY
            return done.stdout.strip() + f", reused: {self.stored_runs():,} runs"
        return done.stdout.strip()

    def close(self, drop):
        if self.rt is not None:
            self.rt.close()
            self.rt = None
        if self._mon is not None:
            self._mon.close()
            self._mon = None
        try:
            m.delete_redis_queue(self.queue)
        except Exception as exc:  # noqa: BLE001
            log(f"warning: could not delete Redis queue {self.queue}: {exc}")
        if self.created and drop:
            try:
                m.drop_database(self.name)
            except Exception as exc:  # noqa: BLE001
                log(f"warning: could not drop database {self.name}: {exc}")

    def sql(self, query, params=None):
        """A statement on this database, on one connection kept open (autocommit)."""
        import psycopg

        if self._mon is None or self._mon.closed:
            self._mon = psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.name}",
                                        autocommit=True)
        self.statements += 1
        cur = self._mon.execute(query, params)
        return cur.fetchall() if cur.description else None

    def commits(self):
        """Committed transactions of this database so far, ours excluded (read from another database)."""
        self.sql("SELECT pg_stat_force_next_flush()")
        time.sleep(0.2)
        total = m.pg("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (self.name,))[0][0]
        return total - self.statements

    def wait_no_backends(self, timeout=15.0):
        """Until only our own connection is left: a backend flushes its statistics when it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.sql("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                            "AND backend_type = 'client backend'", (self.name,))[0][0]:
                return
            time.sleep(0.1)

    def runtime(self):
        """An engine in this process, to start runs (it sends their first step to Redis)."""
        if self.rt is None:
            from engine.config import Settings
            from engine.runtime import Interlock

            self.rt = Interlock(Settings(database_url=m.pg_url(self.name), broker_url=m.REDIS_URL,
                                         workflows=WORKFLOWS, queue=self.queue))
        return self.rt

    def stored_runs(self):
        return self.sql("SELECT count(*) FROM runs")[0][0]

    def size(self):
        return self.sql("SELECT pg_database_size(%s)", (self.name,))[0][0]

    def prune(self, lo):
        """Remove the runs measured since ``lo`` (the reference database stays at its size)."""
        for table, column in (("history", "run_id"), ("tasks", "run_id"), ("timers", "run_id"), ("runs", "id")):
            self.sql(f"DELETE FROM {table} WHERE {column} >= %s", (lo,))
        for table in ("runs", "history", "tasks", "timers"):
            self.sql(f"VACUUM (ANALYZE) {table}")


class Scale:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="interlock-scale-"))
        self.children = []
        self.anchor = time.time() - 60.0
        self.main = Db(args.database, args, self.anchor)
        self.ref = Db(args.database + "_ref", args, self.anchor) if args.reference else None
        self.levels, self.api, self.timers, self.notes = [], [], [], []
        self.revision = "?"
        self.api_runs = 0

    # -- resources ------------------------------------------------------------------

    def child(self, argv, name, env):
        child = m.Child(argv, env=env, log_path=self.tmp / f"{name}.log")
        self.children.append(child)
        return child

    def stop(self, child):
        child.stop()
        if child in self.children:
            self.children.remove(child)

    def workers(self, db, processes, name):
        child = self.child([sys.executable, "-m", "engine.cli", "worker", "--processes", str(processes),
                            "--threads", str(self.args.threads)], name, db.env())
        child.wait_for("worker ready", count=processes, timeout=120)
        return child

    def worker_pids(self, child):
        """The processes doing the work: the children of `interlock worker` (or itself, alone)."""
        tree = [p for p in m.process_tree([child.pid]) if p != child.pid]
        return tree or [child.pid]

    def cleanup(self):
        for child in list(self.children):
            self.stop(child)
        for db in (self.main, self.ref):
            if db is not None:
                db.close(drop=not self.args.keep_db or db is self.ref)

    @staticmethod
    def marker():
        """An id lower than any id made from now on (ids start with their creation millisecond)."""
        return f"{int(time.time() * 1000):012x}" + "0" * 20

    # -- 1. transitions/s and hop latency per level ------------------------------------------

    def grow_to(self, db, level):
        missing = level - db.stored_runs()
        if missing > 0:
            log(f"loading {missing:,} background runs into {db.name} ...")
            took = db.bg.add(missing)
            settle = db.bg.settle()
            log(f"  loaded in {took:.1f} s, VACUUM ANALYZE + CHECKPOINT in {settle:.1f} s")
            return took, settle
        return 0.0, 0.0

    @staticmethod
    def hops_and_window(db, lo, hi="g"):
        """History of the runs with lo <= id < hi: hops, transitions, first step start, last transition."""
        rows = db.sql("SELECT run_id, kind, at FROM history WHERE run_id >= %s AND run_id < %s "
                      "AND kind IN ('transition', 'step_started') ORDER BY run_id, seq", (lo, hi))
        hops, transitions, first, last = [], 0, None, None
        current = previous = None
        for run_id, kind, at in rows:
            if run_id != current:
                current, previous = run_id, None
            if kind == "transition":
                transitions += 1
                previous = at
                last = at if last is None else max(last, at)
            else:
                first = at if first is None else min(first, at)
                if previous is not None:
                    hops.append(at - previous)
                    previous = None
        statuses = dict(db.sql("SELECT status, count(*) FROM runs WHERE id >= %s AND id < %s GROUP BY status",
                               (lo, hi)))
        return hops, transitions, first, last, statuses

    @staticmethod
    def wait_ended(db, lo, timeout, stall=90.0):
        deadline, last, moved = time.monotonic() + timeout, None, time.monotonic()
        while True:
            active = db.sql("SELECT count(*) FROM runs WHERE id >= %s AND status IN ('running', 'waiting')",
                            (lo,))[0][0]
            if active == 0:
                return
            now = time.monotonic()
            if active != last:
                last, moved = active, now
            if now > deadline or now - moved > stall:
                raise TimeoutError(f"{active} runs still active")
            time.sleep(0.1)

    def alone(self, dbs, count):
        """Runs one after another with the workers idle: hop and end-to-end latency without a queue.

        With two databases (grown, reference), both sets of workers run and the runs alternate
        between them, so each sample of one has a sample of the other taken at the same moment.
        """
        import psycopg

        workers = [self.workers(db, self.args.workers, f"alone-{db.name}-{db.stored_runs()}") for db in dbs]
        lo = self.marker()
        ends = {db.name: [] for db in dbs}
        conns = {db.name: psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={db.name}",
                                          autocommit=True) for db in dbs}
        try:
            for _ in range(count):
                for db in dbs:
                    run = db.runtime().start("bench_noop5", {})
                    deadline = time.monotonic() + 30
                    while True:
                        row = conns[db.name].execute("SELECT status, finished_at - created_at FROM runs WHERE id = %s",
                                                     (run.id,)).fetchone()
                        if row[0] not in ACTIVE:
                            ends[db.name].append(row[1])
                            break
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"run {run.id} did not end within 30 s")
                        time.sleep(0.002)
        finally:
            for conn in conns.values():
                conn.close()
            for child in workers:
                self.stop(child)
        out = []
        for db in dbs:
            hops, *_ = self.hops_and_window(db, lo)
            if db is self.ref:
                db.prune(lo)
            out.append((hops, ends[db.name]))
        return out

    def drain(self, db, n, tag):
        """n runs queued, then driven by the workers: transitions/s from the history."""
        rt = db.runtime()
        lo = self.marker()
        from concurrent.futures import ThreadPoolExecutor

        failed_sends = BROKER_WARNINGS.count
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: rt.start("bench_noop5", {}), range(n)))
        failed_sends = BROKER_WARNINGS.count - failed_sends
        rt.db.dispose()  # its idle connections would count as backends below
        db.wait_no_backends()
        commits0 = db.commits()
        workers = self.workers(db, self.args.workers, f"drain-{tag}")
        cpu_workers = m.CpuMeter(lambda: m.process_tree([workers.pid])).start()
        cpu_db = m.CpuMeter(lambda: m.backend_pids(db.name)).start()
        try:
            self.wait_ended(db, lo, timeout=max(300.0, n * 5 / 50))
            worker_cpu, db_cpu = cpu_workers.stop(), cpu_db.stop()
        finally:
            self.stop(workers)
        load = os.getloadavg()[0]
        # Another process restarting the broker (bench/chaos.py does) loses messages: the runs
        # wait for the reconciler to send them again (INTERLOCK_RESEND_AFTER), which is not
        # what this drain measures. Such a drain is shown, and left out of the medians.
        broker_lost = failed_sends > 0 or any(text in workers.log_path.read_text(errors="replace")
                                                 for text in BROKER_TROUBLE)
        if broker_lost:
            self.notes.append(f"drain {tag}: the broker was unreachable for a while (restarted by another "
                              "process?): marked †, left out of the medians")
        db.wait_no_backends()
        commits = db.commits() - commits0
        hops, transitions, first, last, statuses = self.hops_and_window(db, lo)
        if db is self.ref:
            db.prune(lo)
        window = last - first
        if statuses.get("succeeded") != n:
            self.notes.append(f"{tag}: statuses {statuses}")
        return {"tps": transitions / window, "transitions": transitions, "window": window, "hops": hops,
                "load": load, "worker_cpu_ms": 1000 * worker_cpu / transitions,
                "db_cpu_ms": 1000 * db_cpu / transitions, "commits": commits / transitions,
                "broker_lost": broker_lost}

    @staticmethod
    def summary(all_drains, single_hops, ends):
        med = statistics.median
        drains = [d for d in all_drains if not d["broker_lost"]] or all_drains
        return {"tps": med(d["tps"] for d in drains),
                "tps_all": [f"{d['tps']:.0f}" + ("†" if d["broker_lost"] else "") for d in all_drains],
                "best": max(d["tps"] for d in drains), "loads": [d["load"] for d in drains],
                "hops": [h for d in drains for h in d["hops"]], "single_hops": single_hops, "single_ends": ends,
                "worker_cpu_ms": med(d["worker_cpu_ms"] for d in drains),
                "db_cpu_ms": med(d["db_cpu_ms"] for d in drains), "commits": med(d["commits"] for d in drains)}

    def level(self, level):
        log(f"== level {level:,} stored runs")
        load, settle = self.grow_to(self.main, level)
        stored, size = self.main.stored_runs(), self.main.size()
        log(f"  {stored:,} runs stored, database {size / 2**30:.2f} GiB; {self.args.single} runs alone ...")
        if self.ref is not None:
            (single_hops, ends), (ref_hops, ref_ends) = self.alone([self.main, self.ref], self.args.single)
        else:
            ((single_hops, ends),) = self.alone([self.main], self.args.single)
        drains, ref_drains = [], []
        for r in range(self.args.repeats):
            # Alternating with the reference database: both see the same machine load, on average.
            order = [(self.main, drains), (self.ref, ref_drains)] if self.ref is not None else [(self.main, drains)]
            if r % 2:
                order.reverse()
            for db, into in order:
                which = "reference" if db is self.ref else "grown"
                log(f"  drain {r + 1}/{self.args.repeats}, {which} database: {self.args.runs} runs ...")
                d = self.drain(db, self.args.runs, f"{db.name}-{level}-{r}")
                log(f"    {d['tps']:.0f} transitions/s (load average {d['load']:.1f}), loaded hop p50 "
                    f"{ms(d['hops'], 50):.0f} ms, CPU per transition: workers {d['worker_cpu_ms']:.2f} ms + "
                    f"PostgreSQL {d['db_cpu_ms']:.2f} ms")
                into.append(d)
        row = {"level": level, "stored": stored, "size": size, "load_s": load, "settle_s": settle,
               **self.summary(drains, single_hops, ends)}
        if self.ref is not None:
            row["ref"] = self.summary(ref_drains, ref_hops, ref_ends)
            row["paired"] = row["tps"] / row["ref"]["tps"]
        log(f"  median {row['tps']:.0f} transitions/s"
            + (f" vs {row['ref']['tps']:.0f} on the reference ({row['paired']:.2f}×)" if self.ref else "")
            + f"; hop alone p50 {ms(single_hops, 50):.2f} ms")
        self.levels.append(row)

    # -- 2. GET /api/runs at the largest level ---------------------------------------------------

    def api_views(self):
        if getattr(self, "_views", None) is None:
            self._views = self._api_views()
        return self._views

    def _api_views(self):
        def iso(t):
            return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

        db = self.main
        stored = db.stored_runs()
        statuses = dict(db.sql("SELECT status, count(*) FROM runs GROUP BY status"))

        def share(n):
            return f"{100 * n / stored:.2g} % of runs" if n else "no run"

        def in_state(state):
            return share(db.sql("SELECT count(*) FROM runs WHERE state = %s", (state,))[0][0])

        oldest = db.sql("SELECT id FROM runs ORDER BY id LIMIT 1 OFFSET 60")[0][0]
        total = db.bg.loaded
        middle_key = f"KEY-{total // 2:08d}"
        middle_t = db.bg.anchor - (total // 2) * 86400.0 / RUNS_PER_DAY
        day0 = middle_t - 43200
        q = urllib.parse.urlencode
        day = {"created_after": iso(day0), "created_before": iso(day0 + 86400)}
        return [
            ("newest page", "/api/runs?limit=50"),
            ("workflow=bench_noop5", "/api/runs?" + q({"workflow": "bench_noop5"})),
            ("workflow=bench_wait", "/api/runs?" + q({"workflow": "bench_wait"})),
            (f"status=waiting ({share(statuses.get('waiting', 0))})", "/api/runs?" + q({"status": "waiting"})),
            (f"status=failed ({share(statuses.get('failed', 0))})", "/api/runs?" + q({"status": "failed"})),
            (f"state=done ({in_state('done')})", "/api/runs?" + q({"state": "done"})),
            (f"state=s3 ({in_state('s3')})", "/api/runs?" + q({"state": "s3"})),
            (f"state=expired ({in_state('expired')})", "/api/runs?" + q({"state": "expired"})),
            ("business_key (a run in the middle)", "/api/runs?" + q({"business_key": middle_key})),
            ("created_after an hour ago", "/api/runs?" + q({"created_after": iso(time.time() - 3600)})),
            ("created_after + created_before: one day in the middle", "/api/runs?" + q(day)),
            ("created_before the middle (open range)", "/api/runs?" + q({"created_before": iso(middle_t)})),
            ("status=waiting + one day in the middle", "/api/runs?" + q({"status": "waiting", **day})),
            ("cursor near the oldest run", "/api/runs?" + q({"cursor": oldest})),
            ("status=succeeded + cursor near the oldest", "/api/runs?" + q({"status": "succeeded", "cursor": oldest})),
            ("state=s3 + cursor near the oldest", "/api/runs?" + q({"state": "s3", "cursor": oldest})),
        ]

    def measure_api(self):
        self.api_runs = self.main.stored_runs()
        port = free_port()
        server = self.child([sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--threads", "16"],
                            "serve", self.main.env())
        deadline = time.monotonic() + 60
        while not port_open(port):
            if server.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"interlock serve did not start: {server.tail()}")
            time.sleep(0.1)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

        def get(path):
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            took = time.perf_counter() - t0
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {body[:300]!r}")
            return took, json.loads(body)

        n = self.args.requests
        try:
            for label, path in self.api_views():
                get(path)  # warm-up
                samples, count = [], None
                for _ in range(n):
                    took, page = get(path)
                    samples.append(took)
                    count = len(page["runs"])
                self.api.append({"view": label, "path": path, "samples": samples, "rows": count})
                log(f"  {label}: p50 {ms(samples, 50):.1f} ms, p95 {ms(samples, 95):.1f} ms ({count} runs)")
            # Deep keyset pagination: follow `next`, each page timed once.
            for label, extra in (("follow next, newest first", {}), ("follow next, status=succeeded",
                                                                      {"status": "succeeded"})):
                samples, cursor = [], None
                for _ in range(self.args.pages):
                    params = {**extra, **({"cursor": cursor} if cursor else {})}
                    took, page = get("/api/runs?" + urllib.parse.urlencode(params))
                    samples.append(took)
                    cursor = page["next"]
                    if not cursor:
                        break
                self.api.append({"view": f"{label}: {len(samples)} pages", "path": "(next)", "samples": samples,
                                 "rows": 50})
                log(f"  {label}, {len(samples)} pages: p50 {ms(samples, 50):.1f} ms, p95 {ms(samples, 95):.1f} ms")
        finally:
            conn.close()
            self.stop(server)
        self.explain_slow()

    def explain_slow(self):
        """EXPLAIN ANALYZE of each view over the target: the statement the engine builds, captured."""
        from sqlalchemy import event

        from engine.db import Database
        from engine.queries import list_runs

        db = Database(m.pg_url(self.main.name))
        captured = []

        def capture(conn, cursor, statement, parameters, context, executemany):
            captured.append((statement, parameters))

        event.listen(db.engine, "before_cursor_execute", capture)
        views = dict(self.api_views())
        try:
            for row in self.api:
                if row["path"] not in views.values() or ms(row["samples"], 95) < self.args.api_target:
                    continue
                params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(row["path"]).query))
                filters = {k: params[k] for k in ("workflow", "status", "state", "business_key", "cursor")
                           if k in params}
                for k in ("created_after", "created_before"):
                    if k in params:
                        filters[k] = datetime.strptime(params[k], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
                captured.clear()
                with db.read() as conn:
                    list_runs(conn, limit=50, **filters)
                    statement, parameters = captured[-1]
                    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + statement, parameters).all()
                row["plan"] = [line for (line,) in plan]
        finally:
            db.dispose()

    # -- 3. timers coming due together ----------------------------------------------------------

    def fire_timers(self, count, processes):
        db = self.main
        armed = db.sql("SELECT count(*) FROM timers WHERE status = 'armed'")[0][0]
        if armed < count:
            log(f"  topping up with {count - armed:,} waiting runs ...")
            db.bg.add(count - armed, all_waiting=True)
            db.bg.settle()
        db.sql("CREATE TABLE IF NOT EXISTS scale_due (id varchar(32) PRIMARY KEY)")
        db.sql("TRUNCATE scale_due")
        db.sql("INSERT INTO scale_due SELECT id FROM timers WHERE status = 'armed' ORDER BY md5(id) LIMIT %s",
                 (count,))
        db.sql("ANALYZE scale_due")
        workers = self.workers(db, processes, f"timers-{processes}")
        pids = self.worker_pids(workers)
        try:
            time.sleep(1.0)
            due_at = time.time() + self.args.timer_lead
            t0 = time.monotonic()
            db.sql("UPDATE timers SET due_at = %s WHERE id IN (SELECT id FROM scale_due)", (due_at,))
            committed = time.time()
            log(f"  {count:,} timers due at +{self.args.timer_lead:.0f} s (UPDATE committed "
                f"{due_at - committed:.1f} s before they are due, took {time.monotonic() - t0:.1f} s)")
            commits0 = db.commits()
            cpu_workers = m.CpuMeter(lambda: pids).start()
            cpu_db = m.CpuMeter(lambda: m.backend_pids(db.name)).start()
            spy = None
            deadline = due_at + self.args.timer_timeout
            while time.time() < due_at:
                time.sleep(0.05)
            began = time.time()
            fired, progress = 0, []
            while time.time() < deadline:
                fired = db.sql("SELECT count(*) FROM timers JOIN scale_due USING (id) "
                                 "WHERE status <> 'armed'")[0][0]
                progress.append((time.time() - due_at, fired))
                if fired >= count:
                    break
                if spy is None and self.args.profile and time.time() - began > 3 and fired < count * 0.7:
                    spy = self.py_spy(pids[0], self.args.profile_seconds)
                time.sleep(0.5)
            ended = time.time()
            worker_cpu, db_cpu = cpu_workers.stop(), cpu_db.stop()
            profile = self.py_spy_result(spy) if spy is not None else None
        finally:
            self.stop(workers)
        db.wait_no_backends()
        commits = db.commits() - commits0
        rows = db.sql("SELECT t.fired_at - t.due_at FROM timers t JOIN scale_due USING (id) "
                        "WHERE t.fired_at IS NOT NULL")
        lags = [lag for (lag,) in rows]
        span = db.sql("SELECT min(t.fired_at), max(t.fired_at) FROM timers t JOIN scale_due USING (id)")[0]
        unfired = count - len(lags)
        if unfired:
            # Not fired within the timeout: their lag is at least the time waited.
            lags += [ended - due_at] * unfired
        result = {"count": count, "processes": processes, "fired": count - unfired, "lags": lags,
                  "rate": (count - unfired) / (span[1] - span[0]) if span[1] and span[1] > span[0] else None,
                  "first_fire": (span[0] - due_at) if span[0] else None, "elapsed": ended - due_at,
                  "worker_cpu": worker_cpu, "db_cpu": db_cpu, "commits_per_timer": commits / max(1, count - unfired),
                  "progress": progress, "profile": profile, "timed_out": unfired > 0}
        log(f"  {processes} process(es): {result['fired']:,}/{count:,} fired in {result['elapsed']:.0f} s, "
            f"lag p50 {m.percentile(lags, 50):.1f} s, p99 {m.percentile(lags, 99):.1f} s, "
            f"{fmt(result['rate'])} timers/s")
        self.timers.append(result)

    def py_spy(self, pid, seconds):
        """Start sampling one worker process with py-spy: every thread, idle time included (wall clock)."""
        out = self.tmp / f"py-spy-{pid}.txt"
        log(f"  py-spy on worker {pid} for {seconds} s ...")
        proc = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                                 "--format", "raw", "--idle", "--threads", "--nonblocking", "--output", str(out)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        return proc, out, seconds

    def py_spy_result(self, spy):
        proc, out, seconds = spy
        try:
            text, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            text, _ = proc.communicate()
        if proc.returncode != 0 or not out.exists():
            self.notes.append(f"py-spy failed: {(text or b'').decode(errors='replace').strip()[-300:]}")
            return None
        return summarize_profile(out.read_text())

    # -- the whole run ---------------------------------------------------------------------------

    def run(self):
        for name, port in (("PostgreSQL", 5432), ("Redis", 6379)):
            if not port_open(port):
                raise SystemExit(f"no {name} server on 127.0.0.1:{port}")
        began = time.monotonic()
        self.revision = engine_revision()
        log(f"database {self.main.name}: {self.main.create(reuse=self.args.reuse_db)}")
        if self.ref is not None and self.args.levels:
            log(f"reference database {self.ref.name}: {self.ref.create()}")
            self.grow_to(self.ref, self.args.reference)
        for level in self.args.levels:
            self.level(level)
        if not self.args.skip_api:
            log(f"== GET /api/runs at {self.main.stored_runs():,} runs")
            self.measure_api()
        for processes in self.args.timer_processes:
            log(f"== {self.args.timers:,} timers due together, {processes} worker process(es)")
            self.fire_timers(self.args.timers, processes)
        self.elapsed = time.monotonic() - began


# -- the profile ----------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
RECONCILER_THREAD = "interlock-reconciler"

# What a leaf frame is doing, by file: the first rule that matches wins.
_LEAF = [
    ("waiting for PostgreSQL (a statement's round trip or the commit's fsync)", ("psycopg/",)),
    ("SQLAlchemy (compiling, binding, result rows)", ("sqlalchemy/",)),
    ("python-statemachine (rebuilding the machine, sending the event)", ("statemachine/",)),
    ("json", ("json/",)),
    ("engine/ code itself", ("engine/",)),
]
# Frames every sample of the thread has: not worth a line.
_EVERYWHERE = ("Thread._bootstrap", "Thread._bootstrap_inner", "Thread.run", "Reconciler._loop", "Reconciler.tick")


def _frames(stack):
    """(thread name, [(function, file)]) of one py-spy raw line's stack."""
    parts = stack.split(";")
    head = parts[0]
    thread = head.split(": ", 1)[1] if head.startswith("thread (") and ": " in head else head
    frames = []
    for part in parts[1:]:
        match = _FRAME.match(part.strip())
        frames.append((match["func"], match["file"] or "") if match else (part.strip(), ""))
    return thread, frames


def summarize_profile(raw):
    """Where the reconciler thread's wall-clock time went (py-spy raw lines, --idle: waits included)."""
    leaf_kinds, inclusive, top_leaf, total = Counter(), Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        thread, frames = _frames(stack)
        if thread != RECONCILER_THREAD or not any(func == "Reconciler.tick" for func, _ in frames):
            continue  # another thread, or the reconciler waiting for its next pass
        count = int(count)
        total += count
        for key in {f"{func} ({_short(path)})" for func, path in frames if func not in _EVERYWHERE}:
            inclusive[key] += count
        func, path = frames[-1] if frames else ("?", "")
        kind = next((label for label, files in _LEAF if any(p in path for p in files)), "other Python")
        leaf_kinds[kind] += count
        top_leaf[f"{func} ({_short(path)})"] += count
    if not total:
        return {"samples": 0}
    engine_first = [(k, v) for k, v in inclusive.most_common() if "engine/" in k][:14]
    return {"samples": total, "inclusive": [(k, v / total) for k, v in engine_first],
            "library": [(k, v / total) for k, v in inclusive.most_common() if "engine/" not in k][:6],
            "leaf": [(k, v / total) for k, v in leaf_kinds.most_common()],
            "top": [(k, v / total) for k, v in top_leaf.most_common(8)]}


def _short(path):
    for marker in ("site-packages/", "/work/main/", str(m.ROOT) + "/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


# -- the report ---------------------------------------------------------------------------------

def render(bench):
    a = bench.args
    out = []
    facts = machine_facts()
    out.append(f"bench/scale.py {'--quick ' if a.quick else ''}on {facts['cpu']}, {facts['memory']}, "
               f"PostgreSQL {facts['postgresql']}, Redis {facts['redis']}, Python {facts['python']}; "
               f"{datetime.now(UTC).strftime('%Y-%m-%d')}; {a.workers} worker processes × {a.threads} threads; "
               f"{a.runs} runs per drain × {a.repeats}, {a.single} runs alone per level; "
               f"engine at {bench.revision}; "
               f"load average at the end {os.getloadavg()[0]:.1f} (shared machine: timings are noisy)")
    out.append("")
    if bench.levels:
        first = bench.levels[0]
        paired = "ref" in first
        also = " (reference, alternating)" if paired else ""
        out.append("| stored runs | DB size | transitions/s: median (each drain) "
                   + (f"| reference DB ({a.reference:,} runs), drains alternating: median (each) "
                      "| grown / reference " if paired else "")
                   + "| median vs first level | load average per drain | loaded hop p50 / p99 ms "
                   f"| hop alone p50 / p99 ms{also} | single run p50 ms{also} "
                   "| CPU ms per transition: workers + PostgreSQL | DB transactions per transition (reads included) |")
        out.append("| ---: | ---: | --- " + ("| --- | ---: " if paired else "")
                   + "| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for row in bench.levels:
            each = ", ".join(row["tps_all"])
            loads = ", ".join(f"{x:.1f}" for x in row["loads"] + (row["ref"]["loads"] if paired else []))
            ref, ref_hop = "", ""
            if paired:
                r = row["ref"]
                ref = (f"| {r['tps']:,.0f} ({', '.join(r['tps_all'])}) "
                       f"| **{row['paired']:.2f}** ")
                ref_hop = f" (ref. {fmt(ms(r['single_hops'], 50), 2)} / {fmt(ms(r['single_hops'], 99), 2)})"
            out.append(f"| {row['stored']:,} | {row['size'] / 2**30:.2f} GiB | {row['tps']:,.0f} ({each}) {ref}"
                       f"| {row['tps'] / first['tps']:.2f} | {loads} "
                       f"| {fmt(ms(row['hops'], 50))} / {fmt(ms(row['hops'], 99))} "
                       f"| {fmt(ms(row['single_hops'], 50), 2)} / {fmt(ms(row['single_hops'], 99), 2)}{ref_hop} "
                       f"| {fmt(ms(row['single_ends'], 50))}"
                       + (f" (ref. {fmt(ms(row['ref']['single_ends'], 50))})" if paired else "")
                       + f" | {row['worker_cpu_ms']:.2f} + {row['db_cpu_ms']:.2f} "
                       f"| {row['commits']:.2f} |")
        last = bench.levels[-1]
        cpu = (last["worker_cpu_ms"] + last["db_cpu_ms"]) / (first["worker_cpu_ms"] + first["db_cpu_ms"])
        out.append("")
        verdict = []
        if paired:
            verdict.append(f"drains alternating with the {a.reference:,}-run reference database, the grown database's rate is "
                           f"{last['paired']:.2f}× the reference's at {last['stored']:,} stored runs "
                           f"({first['paired']:.2f}× at {first['stored']:,}, where both hold the same: the method's "
                           f"own noise)")
        verdict.append(f"the median rate at {last['stored']:,} is {last['tps'] / first['tps']:.2f}× the one at "
                       f"{first['stored']:,} measured at another time")
        verdict.append(f"CPU per transition (workers + PostgreSQL) {cpu:.2f}×")
        out.append("Flat cost (target: within 10 %): " + "; ".join(verdict) + ". Bulk loads: "
                   + ", ".join(f"{r['level']:,}: {r['load_s']:.0f} s + {r['settle_s']:.0f} s VACUUM ANALYZE "
                               "+ CHECKPOINT" for r in bench.levels if r["load_s"]) + ".")
        out.append("")
    if bench.api:
        out.append(f"GET /api/runs at {bench.api_runs:,} runs "
                   f"(`interlock serve`, 1 process; {a.requests} sequential requests per view after a warm-up):")
        out.append("")
        out.append("| view | runs | p50 ms | p95 ms | p95 < 50 ms |")
        out.append("| --- | ---: | ---: | ---: | --- |")
        for row in bench.api:
            p95 = ms(row["samples"], 95)
            out.append(f"| {row['view']} | {row['rows']} | {fmt(ms(row['samples'], 50))} | {fmt(p95)} "
                       f"| {'yes' if p95 < a.api_target else 'NO'} |")
        for row in bench.api:
            if row.get("plan"):
                out.append("")
                out.append(f"EXPLAIN ANALYZE, {row['view']}:")
                plan = row["plan"] if len(row["plan"]) <= 16 else row["plan"][:13] + ["…"] + row["plan"][-2:]
                out.extend("    " + line for line in plan)
        out.append("")
    for t in bench.timers:
        lags = t["lags"]
        out.append(f"{t['count']:,} timers due together, {t['processes']} worker process(es) × {a.threads} threads: "
                   f"{t['fired']:,} fired{' (TIMED OUT: the rest count as their wait so far)' if t['timed_out'] else ''}; "
                   f"lag p50 {m.percentile(lags, 50):.1f} s, p99 {m.percentile(lags, 99):.1f} s, max "
                   f"{max(lags):.1f} s (target p99 < 2 s: {over(m.percentile(lags, 99), 2.0)}); "
                   f"{fmt(t['rate'])} timers/s; first fired {fmt(t['first_fire'], 2)} s after due; "
                   f"{t['commits_per_timer']:.2f} commits per fired timer; CPU while firing: workers "
                   f"{t['worker_cpu']:.0f} s, PostgreSQL {t['db_cpu']:.0f} s over {t['elapsed']:.0f} s "
                   f"({1000 * (t['worker_cpu'] + t['db_cpu']) / max(1, t['fired']):.2f} ms per timer)")
        curve = []
        for at in (1, 2, 5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1200):
            seen = [f for when, f in t["progress"] if when <= at]
            if seen and at <= t["elapsed"] + 1:
                curve.append(f"+{at} s: {seen[-1]:,}")
        out.append("fired by: " + ", ".join(curve) + (
            "" if t["timed_out"] else f", all {t['count']:,} by +{t['elapsed']:.0f} s"))
        prof = t.get("profile")
        if prof and prof["samples"]:
            out.append("")
            out.append(f"py-spy, one worker process, reconciler thread, wall clock ({prof['samples']:,} samples), "
                       "inclusive share of engine/ functions:")
            out.extend(f"    {share * 100:5.1f} %  {label}" for label, share in prof["inclusive"])
            out.append("  of library functions:")
            out.extend(f"    {share * 100:5.1f} %  {label}" for label, share in prof["library"])
            out.append("  by what the leaf frame is doing:")
            out.extend(f"    {share * 100:5.1f} %  {label}" for label, share in prof["leaf"])
            out.append("  top leaf frames:")
            out.extend(f"    {share * 100:5.1f} %  {label}" for label, share in prof["top"])
        out.append("")
    for note in bench.notes:
        out.append(f"note: {note}")
    out.append(f"elapsed {getattr(bench, 'elapsed', 0):.0f} s")
    return "\n".join(out)


def engine_revision():
    """The commit measured, and whether engine/ differed from it (other work in the same tree)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=m.ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engine", "migrations"], cwd=m.ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" + uncommitted changes in engine/ or migrations/" if dirty else "")


def machine_facts():
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    facts = {"cpu": f"{os.cpu_count()} × {cpu}", "memory": f"{mem / 2**20:.1f} GiB",
             "python": sys.version.split()[0]}
    try:
        facts["postgresql"] = (f"{m.pg_version()} (fsync={m.pg_setting('fsync')}, synchronous_commit="
                               f"{m.pg_setting('synchronous_commit')}, shared_buffers={m.pg('SHOW shared_buffers')[0][0]})")
    except Exception as exc:  # noqa: BLE001
        facts["postgresql"] = f"? ({exc})"
    try:
        import redis

        client = redis.Redis.from_url(m.REDIS_URL)
        facts["redis"] = client.info("server")["redis_version"]
        client.close()
    except Exception as exc:  # noqa: BLE001
        facts["redis"] = f"? ({exc})"
    return facts


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--quick", action="store_true", help="10^3 and 10^4 stored runs, 10^4 timers: a few minutes")
    p.add_argument("--levels", default=None, help="stored runs per level, comma-separated (default 10^3..10^6; "
                   "none: no levels)")
    p.add_argument("--runs", type=int, default=None, help="runs per drain (default 1000; --quick 300)")
    p.add_argument("--repeats", type=int, default=None, help="drains per level and database (default 5; --quick 2)")
    p.add_argument("--single", type=int, default=None, help="runs alone per level (default 50; --quick 20)")
    p.add_argument("--workers", type=int, default=2, help="interlock worker processes (default 2)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    p.add_argument("--resend-after", type=float, default=60.0,
                   help="INTERLOCK_RESEND_AFTER (default 60: nothing is re-sent while a backlog drains)")
    p.add_argument("--requests", type=int, default=None, help="requests per API view (default 100; --quick 30)")
    p.add_argument("--pages", type=int, default=None, help="pages of `next` followed (default 200; --quick 50)")
    p.add_argument("--api-target", type=float, default=50.0, help="p95 target in ms (EXPLAIN above it)")
    p.add_argument("--skip-api", action="store_true")
    p.add_argument("--timers", type=int, default=None, help="timers due together (default 10^5; --quick 10^4)")
    p.add_argument("--timer-processes", default=None, help="worker processes firing them, one test per value, "
                   "comma-separated (each test uses fresh timers; default 1,2; --quick 2)")
    p.add_argument("--timer-lead", type=float, default=5.0, help="seconds ahead the timers are made due")
    p.add_argument("--timer-timeout", type=float, default=None,
                   help="give up firing after this many seconds (default 1800; --quick 300)")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="no py-spy while timers fire")
    p.add_argument("--profile-seconds", type=int, default=20)
    p.add_argument("--reference", type=int, default=1000,
                   help="runs in the reference database whose drains alternate with each level's (default 1000; "
                   "0: none)")
    p.add_argument("--database", default=DBNAME, help=f"database to create (default {DBNAME}; dropped first)")
    p.add_argument("--keep-db", action="store_true", help="leave the database behind")
    p.add_argument("--reuse-db", action="store_true",
                   help="start from the database a --keep-db invocation left (migrated to head first)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--keep-logs", action="store_true")
    a = p.parse_args(argv)
    q = a.quick
    a.levels = ([] if a.levels == "none" else [int(float(x)) for x in a.levels.split(",")] if a.levels
                else [10**3, 10**4] if q else [10**3, 10**4, 10**5, 10**6])
    a.runs = a.runs or (300 if q else 1000)
    a.repeats = a.repeats or (2 if q else 5)
    a.single = a.single or (20 if q else 50)
    a.requests = a.requests or (30 if q else 100)
    a.pages = a.pages or (50 if q else 200)
    a.timers = a.timers if a.timers is not None else (10**4 if q else 10**5)
    a.timer_processes = a.timer_processes or ("2" if q else "1,2")
    a.timer_processes = [int(x) for x in a.timer_processes.split(",") if x.strip()] if a.timers else []
    a.timer_timeout = a.timer_timeout or (300.0 if q else 1800.0)
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", a.database):
        p.error("--database: lower-case letters, digits and _ only")
    return a


def _interrupt(*_):
    raise KeyboardInterrupt


def as_json(bench):
    def strip(row):
        out = {k: v for k, v in row.items() if k not in ("hops", "single_hops", "single_ends", "samples", "lags",
                                                         "progress", "ref")}
        if "hops" in row:
            out.update(loaded_hop_p50_ms=ms(row["hops"], 50), loaded_hop_p99_ms=ms(row["hops"], 99),
                       alone_hop_p50_ms=ms(row["single_hops"], 50), alone_hop_p99_ms=ms(row["single_hops"], 99),
                       single_run_p50_ms=ms(row["single_ends"], 50))
        if "ref" in row:
            out["reference"] = strip(row["ref"])
        return out

    return {"levels": [strip(r) for r in bench.levels],
            "api": [{"view": r["view"], "p50_ms": ms(r["samples"], 50), "p95_ms": ms(r["samples"], 95)}
                    for r in bench.api],
            "timers": [{**strip(t), "lag_p50": m.percentile(t["lags"], 50), "lag_p99": m.percentile(t["lags"], 99)}
                       for t in bench.timers]}


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Scale(args)
    signal.signal(signal.SIGTERM, _interrupt)
    code = 0
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.notes.append("interrupted")
        code = 1
    except Exception as exc:  # noqa: BLE001 - print what was measured, then fail
        bench.notes.append(f"CRASHED: {type(exc).__name__}: {exc}")
        code = 1
    finally:
        bench.cleanup()
    print(render(bench))
    if args.json:
        args.json.write_text(json.dumps(as_json(bench), indent=2, default=str))
    if args.keep_logs or code:
        print(f"logs in {bench.tmp}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
