"""Throughput and latency of Interlock against its ceilings and peers (issue 5, items 1 and 2).

    .venv/bin/python bench/throughput.py            # --full: the real figures (peers installed on first use)
    .venv/bin/python bench/throughput.py --quick    # small N, no-op workflow, every backend, the cheap baselines (CI)

Interlock runs a 5-step no-op workflow (bench/flows.py) and a variant carrying a 1 KB payload:
N runs are started first, then `interlock worker` processes drive them to the end (on SQLite +
memory broker, one process of ours starts the runs and runs the worker). Rates and hop latency
come from the history table (first step started -> last transition); single-run latency from
runs started one after another with nothing else running (created_at -> finished_at).

Baselines on the same servers in the same invocation: a raw Dramatiq chain (transport ceiling),
a single-row INSERT+UPDATE commit loop (durable-commit ceiling), DBOS Transact and a Celery
chain (each in its own virtualenv under .bench-venvs/). Only 127.0.0.1 is contacted, except
by pip installing a peer. Everything started is stopped, and its databases and queues removed.
"""

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import measure as m
from bench import report
from bench.peers import baselines, commit_loop, venvs

BACKENDS = {
    "sqlite": ("SQLite + memory", None),
    "pg-redis": ("PostgreSQL + Redis", m.REDIS_URL),
    "pg-rabbitmq": ("PostgreSQL + RabbitMQ", m.AMQP_URL),
}
# backlog: 3 steps of 0.5 s each, so the runs queue far longer than --resend-after (duplicates).
VARIANTS = {"noop": "bench_noop5", "payload": "bench_payload5", "backlog": "bench_slow3", "limited": "bench_limited5"}
BASELINES = ["chain-redis", "chain-rabbitmq", "commit", "dbos", "celery"]
PORTS = {"PostgreSQL": 5432, "Redis": 6379, "RabbitMQ": 5672}


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Bench:
    def __init__(self, args):
        self.args = args
        self.pid = os.getpid()
        self.prefix = f"interlock_throughput_{self.pid}"
        self.tmp = Path(tempfile.mkdtemp(prefix="interlock-throughput-"))
        self.runs = args.runs
        self.chains = max(args.runs, 500)  # a chain drains in a blink: enough of them to time
        self.single_runs = args.single
        self.commit_seconds = 3 if args.quick else 10
        self.timeout = max(120.0, args.runs * 5 / 25)
        self.databases, self.children, self.queues = [], [], []
        self.commit_db = None
        self.rows, self.crashed = [], False
        self.load_before = os.getloadavg()

    # -- resources, all removed at the end ----------------------------------------------

    def queue_name(self, what):
        return f"bench_{self.pid}_{what}"

    def log_path(self, name):
        return self.tmp / f"{name}.log"

    def child(self, argv, env, name, cwd=m.ROOT):
        child = m.Child(argv, env=env, log_path=self.log_path(name), cwd=cwd)
        self.children.append(child)
        return child

    def new_database(self, what, migrate=True, env=None):
        name = f"{self.prefix}_{what}"
        m.create_database(name)
        self.databases.append(name)
        if migrate:
            self.migrate(env)
        return name

    def migrate(self, env):
        done = subprocess.run([sys.executable, "-m", "engine.cli", "db", "upgrade"], env=env, cwd=m.ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError("interlock db upgrade failed: " + " | ".join(done.stderr.strip().splitlines()[-3:]))

    def stop_children(self):
        for child in self.children:
            child.stop()
        self.children = []

    def drop_database(self, name):
        try:
            m.drop_database(name)
            self.databases.remove(name)
        except Exception as exc:  # noqa: BLE001 - the end of the invocation tries again
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)

    def delete_queue(self, queue, broker_key):
        try:
            if broker_key == "redis":
                m.delete_redis_queue(queue)
            else:
                m.delete_rabbitmq_queue(queue)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on
            print(f"warning: could not delete queue {queue}: {exc}", file=sys.stderr)

    def cleanup(self):
        self.stop_children()
        for name in list(self.databases):
            self.drop_database(name)
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- Interlock ---------------------------------------------------------------------------

    def env(self, database_url, broker_url, queue):
        return m.env_with(INTERLOCK_DATABASE_URL=database_url, INTERLOCK_BROKER_URL=broker_url,
                          INTERLOCK_WORKFLOWS="bench.flows", INTERLOCK_QUEUE=queue,
                          INTERLOCK_WORKER_THREADS=self.args.threads, INTERLOCK_RESEND_AFTER=self.args.resend_after,
                          INTERLOCK_BROKER_PRIORITIES=self.args.broker_priorities,
                          BENCH_TIMEOUT=self.timeout)

    def driver(self, env, *args, timeout=600):
        return m.run_json([sys.executable, str(m.ROOT / "bench" / "driver.py"), *map(str, args)], env=env,
                          timeout=timeout)

    def workers(self, env, name):
        child = self.child([sys.executable, "-m", "engine.cli", "worker", "--processes", str(self.args.workers),
                            "--threads", str(self.args.threads)], env, name)
        child.wait_for("worker ready", count=self.args.workers, timeout=120)
        return child

    def interlock_sqlite(self, variant):
        workflow = VARIANTS[variant]
        url = f"sqlite:///{self.tmp / f'{variant}.db'}"
        env = self.env(url, "memory://", self.queue_name(f"sqlite_{variant}"))
        self.migrate(env)
        out = self.driver(env, "embedded", workflow, self.runs, self.single_runs, timeout=self.timeout + 300)
        row = report.analyze(url, out["single_ids"])
        row.update(worker_cpu=out["cpu"], db_cpu=None,
                   counters={"commits": out["commits"], "statements": out["statements"]},
                   counter_source="SQLite trace (a batched statement counts once per row) + SQLAlchemy commit events",
                   note=f"1 process, {self.args.threads} threads: starter, worker and SQLite together")
        return row

    def interlock_pg(self, backend, variant):
        workflow, broker_url = VARIANTS[variant], BACKENDS[backend][1]
        broker_key = "redis" if broker_url.startswith("redis") else "rabbitmq"
        queue = self.queue_name(f"{backend}_{variant}")
        dbname = f"{self.prefix}_{backend.replace('-', '_')}_{variant}"
        env = self.env(m.pg_url(dbname), broker_url, queue)
        self.new_database(f"{backend.replace('-', '_')}_{variant}", env=env)
        try:
            # 1. Single-run latency, alone: workers idle, one run at a time. The CPU the workers
            #    used to boot (up to "ready", on an empty queue) is subtracted from the drain's below.
            workers = self.workers(env, f"{backend}-{variant}-single")
            boot_cpu = m.CpuMeter(lambda: m.process_tree([workers.pid])).stop()
            single_ids = self.driver(env, "single", workflow, self.single_runs)["single_ids"]
            workers.stop()
            # 2. Throughput: N runs queued while no worker runs, then the workers drain them.
            self.driver(env, "preload", workflow, self.runs, timeout=self.timeout + 300)
            m.wait_no_backends(dbname)
            before = m.db_counters(dbname)
            workers = self.workers(env, f"{backend}-{variant}")
            report.wait_until_ended(m.pg_url(dbname, "postgresql+psycopg"), self.timeout)
            # Every process and backend alive now, counted from its start (none was there before).
            worker_cpu = m.CpuMeter(lambda: m.process_tree([workers.pid])).stop() - boot_cpu
            db_cpu = m.CpuMeter(lambda: m.backend_pids(dbname)).stop()
            workers.stop()
            m.wait_no_backends(dbname)
            counters = m.counters_delta(before, m.db_counters(dbname))
            row = report.analyze(m.pg_url(dbname, "postgresql+psycopg"), single_ids)
            row.update(worker_cpu=worker_cpu, db_cpu=db_cpu, counters=counters,
                       counter_source="pg_stat_database" + (" + pg_stat_statements" if "statements" in counters else ""),
                       note=f"{self.args.workers} worker processes x {self.args.threads} threads")
            return row
        finally:
            self.stop_children()
            self.delete_queue(queue, broker_key)
            self.drop_database(dbname)

    # -- the whole invocation ----------------------------------------------------------------

    def measure(self, name, func, *args, kind="interlock", **meta):
        label = f"{name}" + (f" [{meta['variant']}]" if meta.get("variant") else "")
        print(f"... {label}", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            row = func(*args)
        except venvs.Unavailable as exc:
            row = {"name": name, "unavailable": str(exc)}
        except report.Unavailable as exc:
            row = {"name": name, "unavailable": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the table goes on; the exit code says it
            self.crashed = True
            row = {"name": name, "crashed": f"{type(exc).__name__}: {str(exc)[:300]}"}
        row.setdefault("name", name)
        row.update(kind=kind, **meta)
        row["elapsed"] = time.monotonic() - began
        print(f"    {report.summary(row)} ({row['elapsed']:.0f}s)", file=sys.stderr, flush=True)
        self.rows.append(row)

    def run(self):
        args = self.args
        down = [name for name, port in PORTS.items() if not port_open(port)]
        if "PostgreSQL" not in down:
            m.drop_stale_databases("interlock_throughput_")

        def needs(*servers):
            missing = [s for s in servers if s in down]
            if missing:
                raise report.Unavailable(f"no {' or '.join(missing)} server on 127.0.0.1")

        for backend in args.backends:
            for variant in args.variants:
                name = f"Interlock, {BACKENDS[backend][0]}"
                if backend == "sqlite":
                    self.measure(name, self.interlock_sqlite, variant, backend=backend, variant=variant)
                else:
                    servers = ("PostgreSQL", "Redis" if backend == "pg-redis" else "RabbitMQ")
                    self.measure(name, lambda b=backend, v=variant, s=servers: (needs(*s), self.interlock_pg(b, v))[1],
                                 backend=backend, variant=variant)
        install = not args.quick
        for key in args.baselines:
            if key.startswith("chain-"):
                broker = key.split("-", 1)[1]
                servers = ("Redis",) if broker == "redis" else ("Redis", "RabbitMQ")
                self.measure(f"Dramatiq chain ({'Redis' if broker == 'redis' else 'RabbitMQ'})",
                             lambda b=broker, s=servers: (needs(*s), baselines.dramatiq_chain(self, b))[1],
                             kind="baseline", ref="pg-redis" if broker == "redis" else "pg-rabbitmq")
            elif key == "commit":
                for clients in (1, 16):
                    def commit(c=clients):
                        needs("PostgreSQL")
                        if self.commit_db is None:
                            self.commit_db = self.new_database("commit", migrate=False)
                            m.pg(commit_loop.TABLE, dbname=self.commit_db)
                        return baselines.commit_ceiling(self, c)
                    self.measure(f"PostgreSQL commit loop, {clients} client{'s' if clients > 1 else ''}", commit,
                                 kind="baseline", ref="pg-rabbitmq")
            elif key == "dbos":
                self.measure("DBOS Transact (PostgreSQL)",
                             lambda: (needs("PostgreSQL"), baselines.dbos(self, install))[1],
                             kind="peer", ref="pg-rabbitmq")
            elif key == "celery":
                self.measure("Celery chain (Redis)", lambda: (needs("Redis"), baselines.celery_chain(self, install))[1],
                             kind="peer", ref="pg-redis")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small N, no peer installs (CI)")
    mode.add_argument("--full", action="store_true", help="the real figures (the default)")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument("--variants", default=None, help="noop,payload,backlog,limited (default: noop,payload; --quick: noop)")
    p.add_argument("--baselines", default=",".join(BASELINES), help=f"comma-separated, of {', '.join(BASELINES)}; "
                   "'none' for none")
    p.add_argument("--runs", type=int, default=None, help="runs started at once (default 2000; --quick 100)")
    p.add_argument("--single", type=int, default=None, help="sequential runs for single-run latency (100; --quick 10)")
    p.add_argument("--workers", type=int, default=2, help="interlock worker processes (default 2)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    p.add_argument("--resend-after", type=float, default=60.0,
                   help="INTERLOCK_RESEND_AFTER for the workers (default 60: longer than a task waits in the "
                   "backlog, so nothing is re-sent while it drains; a lost message is still re-sent)")
    p.add_argument("--broker-priorities", type=int, default=10,
                   help="INTERLOCK_BROKER_PRIORITIES for Interlock (RabbitMQ priority levels; 0: plain queues)")
    p.add_argument("--json", type=Path, default=None, help="also write every measured figure to this file")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker logs (their directory is printed)")
    args = p.parse_args(argv)
    args.runs = args.runs or (100 if args.quick else 2000)
    args.single = args.single or (10 if args.quick else 100)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    default_variants = "noop" if args.quick else "noop,payload"
    args.variants = [v.strip() for v in (args.variants or default_variants).split(",") if v.strip()]
    args.baselines = [] if args.baselines == "none" else [b.strip() for b in args.baselines.split(",") if b.strip()]
    for values, allowed, what in ((args.backends, BACKENDS, "backend"), (args.variants, VARIANTS, "variant"),
                                  (args.baselines, BASELINES, "baseline")):
        unknown = [v for v in values if v not in allowed]
        if unknown:
            p.error(f"unknown {what} {', '.join(unknown)}: choose from {', '.join(allowed)}")
    return args


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Bench(args)
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.crashed = True
        print("interrupted", file=sys.stderr)
    finally:
        bench.cleanup()
    print(report.render(bench, time.monotonic() - began))
    if args.json:
        args.json.write_text(json.dumps(report.as_json(bench), indent=2))
    if args.keep_logs:
        print(f"logs in {bench.tmp}", file=sys.stderr)
    return 1 if bench.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
