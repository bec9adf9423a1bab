"""Fan-out: a Map of N items over a no-op child workflow, against plain runs of that workflow (issue 11).

    .venv/bin/python bench/fanout.py                    # 10,000 items, max_concurrency 100 and 1,000, PostgreSQL + RabbitMQ
    .venv/bin/python bench/fanout.py --quick            # 300 items, max_concurrency 20 and 100 (CI-sized)
    .venv/bin/python bench/fanout.py --items 2000 --concurrency 50 --backends pg-redis,pg-rabbitmq --profile

Per backend, each measurement in a database of its own, with `interlock worker --processes 2
--threads 8` (bench/fanout_flows.py):

- plain: N runs of ``bench_noop1`` (one no-op step) preloaded while no worker runs, then drained
  (as bench/throughput.py does): runs/s = N / (first step started -> last run finished);
- per max_concurrency C: one ``bench_fanout_C`` parent started with N items while the workers
  run: children/s = N / (first child created -> last child finished), and the fan-in lag =
  the parent's transition out of the map's state - the last child's finished_at (both the
  committing process's clock). The ratio is children/s over the plain rate of the same invocation.

``--profile`` samples one worker process with py-spy (bench/fanout_profile.py) and PostgreSQL's
pg_stat_activity during each map's drain. Only 127.0.0.1 is contacted; everything started is
stopped and its databases and queues removed.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fanout_profile
from bench import measure as m
from bench import report
from bench.throughput import port_open

BACKENDS = {"pg-rabbitmq": ("PostgreSQL + RabbitMQ", m.AMQP_URL, "RabbitMQ", 5672),
            "pg-redis": ("PostgreSQL + Redis", m.REDIS_URL, "Redis", 6379)}
TARGET_RATIO, TARGET_LAG = 0.7, 1.0


class Fanout:
    def __init__(self, args):
        self.args = args
        self.pid = os.getpid()
        self.tmp = Path(tempfile.mkdtemp(prefix="interlock-fanout-"))
        self.databases, self.children, self.rows = [], [], []
        self.timeout = max(300.0, args.items / 20)
        self.crashed = False

    # -- resources -----------------------------------------------------------------------

    def env(self, dbname, broker_url, queue):
        return m.env_with(INTERLOCK_DATABASE_URL=m.pg_url(dbname), INTERLOCK_BROKER_URL=broker_url,
                          INTERLOCK_WORKFLOWS="bench.fanout_flows", INTERLOCK_QUEUE=queue,
                          INTERLOCK_WORKER_THREADS=self.args.threads, INTERLOCK_RESEND_AFTER=60,
                          BENCH_FANOUT_CONCURRENCY=",".join(map(str, self.args.concurrency)))

    def database(self, what, env):
        name = f"interlock_fanout_{self.pid}_{what}"
        m.create_database(name)
        self.databases.append(name)
        done = subprocess.run([sys.executable, "-m", "engine.cli", "db", "upgrade"], env=env, cwd=m.ROOT,
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise RuntimeError("interlock db upgrade failed: " + done.stderr[-400:])
        return name

    def workers(self, env, name):
        child = m.Child([sys.executable, "-m", "engine.cli", "worker", "--processes", str(self.args.workers),
                         "--threads", str(self.args.threads)], env=env, log_path=self.tmp / f"{name}.log")
        self.children.append(child)
        child.wait_for("worker ready", count=self.args.workers, timeout=120)
        return child

    def driver(self, env, *argv):
        return m.run_json([sys.executable, str(m.ROOT / "bench" / "driver.py"), *map(str, argv)], env=env,
                          timeout=self.timeout)

    def cleanup(self):
        for child in self.children:
            child.stop()
        for name in self.databases:
            try:
                m.drop_database(name)
            except Exception as exc:  # noqa: BLE001 - reported; the rest is cleaned up
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        if not self.args.keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def delete_queue(self, backend, queue):
        try:
            (m.delete_redis_queue if backend == "pg-redis" else m.delete_rabbitmq_queue)(queue)
        except Exception as exc:  # noqa: BLE001
            print(f"warning: could not delete queue {queue}: {exc}", file=sys.stderr)

    # -- measurements ----------------------------------------------------------------------

    def measure(self, backend, what, concurrency=None):
        label, broker_url = BACKENDS[backend][:2]
        key = f"{backend.replace('-', '_')}_{what}"
        queue = f"bench_{self.pid}_{key}"
        env = self.env(f"interlock_fanout_{self.pid}_{key}", broker_url, queue)
        dbname = self.database(key, env)
        url = m.pg_url(dbname, "postgresql+psycopg")
        print(f"... {label}: {what} ({self.args.items:,} runs of bench_noop1)", file=sys.stderr, flush=True)
        began = time.monotonic()
        try:
            boot_cpu = 0.0
            if concurrency is None:
                # The runs wait for workers that start after them: their boot CPU, measured on an
                # empty database first, is not the runs'.
                idle = self.workers(env, f"{key}-boot")
                boot_cpu = m.CpuMeter(lambda: m.process_tree([idle.pid])).stop()
                idle.stop()
                self.driver(env, "preload", "bench_noop1", self.args.items)
                m.wait_no_backends(dbname)
            commits = m.db_counters(dbname)["commits"]
            workers = self.workers(env, key)
            cpu = m.CpuMeter(lambda: m.process_tree([workers.pid]))
            if concurrency is not None:
                cpu.start()
            profile = None
            if concurrency is not None:
                spy = fanout_profile.Sampler(workers.pid, dbname, self.tmp / f"{key}", self.args.profile_seconds) \
                    if self.args.profile else None
                self.driver(env, "fanout", f"bench_fanout_{concurrency}", self.args.items)
                report.wait_until_ended(url, self.timeout)
                profile = spy.finish() if spy else None
            else:
                report.wait_until_ended(url, self.timeout)
            worker_cpu = cpu.stop() - boot_cpu
            workers.stop()
            m.wait_no_backends(dbname)
            commits = m.db_counters(dbname)["commits"] - commits
            row = fanout_profile.figures(url, concurrency)
            row.update(backend=backend, label=label, what=what, concurrency=concurrency,
                       worker_cpu_ms_per_run=1000 * worker_cpu / self.args.items,
                       commits_per_run=commits / self.args.items, profile=profile,
                       elapsed=time.monotonic() - began)
        finally:
            for child in self.children:
                child.stop()
            self.children = []
            self.delete_queue(backend, queue)
            m.drop_database(dbname)
            self.databases.remove(dbname)
        print(f"    {summary(row)} ({row['elapsed']:.0f}s)", file=sys.stderr, flush=True)
        return row

    def run(self):
        for backend in self.args.backends:
            label, _, broker, port = BACKENDS[backend]
            for name, p in (("PostgreSQL", 5432), (broker, port)):
                if not port_open(p):
                    raise SystemExit(f"no {name} server on 127.0.0.1:{p}")
            m.drop_stale_databases("interlock_fanout_")
            plain = self.measure(backend, "plain")
            self.rows.append(plain)
            for concurrency in self.args.concurrency:
                row = self.measure(backend, f"map{concurrency}", concurrency)
                row["ratio"] = row["rate"] / plain["rate"] if row["rate"] and plain["rate"] else None
                self.rows.append(row)


def summary(row) -> str:
    text = f"{row['runs']:,} runs, {row['rate']:.1f}/s" if row.get("rate") else f"{row.get('runs')} runs, no rate"
    if row.get("lag") is not None:
        text += f", fan-in lag {row['lag'] * 1000:.0f} ms, peak {row['peak']} at once"
        if row.get("parent_transactions"):
            text += (f"; parent: {row['parent_transactions']} transactions, {row['ends_per_transaction']:.1f} ends each;"
                     f" median child life {row['child_life_ms']:.0f} ms, end waits {row['end_wait_ms']:.0f} ms")
    if row.get("warning"):
        text += f" ({row['warning']})"
    return text


def render(bench, elapsed) -> str:
    a = bench.args
    out = [f"bench/fanout.py {'--quick ' if a.quick else ''}--items {a.items} "
           + " ".join(f"--concurrency {c}" for c in a.concurrency) + f" --backends {','.join(a.backends)}",
           f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {a.workers} worker processes x {a.threads} threads, "
           f"load average {bench.load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {elapsed:.0f}s", "",
           "| backend | what | runs | runs/s | ÷ plain | fan-in lag ms | peak at once | worker CPU ms/run "
           "| DB commits/run | target |",
           "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in bench.rows:
        what = "plain runs" if row["concurrency"] is None else f"Map, max_concurrency {row['concurrency']:,}"
        ratio, lag = row.get("ratio"), row.get("lag")
        target = ""
        if row["concurrency"] is not None:
            ok = ratio is not None and ratio >= TARGET_RATIO and lag is not None and lag < TARGET_LAG
            target = "met" if ok else ("MISSED: " + ", ".join(
                [f"ratio {ratio:.2f} < {TARGET_RATIO}"] * (ratio is None or ratio < TARGET_RATIO)
                + [f"lag {lag:.2f} s >= {TARGET_LAG:.0f} s"] * (lag is None or lag >= TARGET_LAG)))
        out.append(f"| {row['label']} | {what} | {row['runs']:,} | {_f(row['rate'])} | "
                   f"{'' if ratio is None else f'{ratio:.2f}'} | {'' if lag is None else f'{lag * 1000:.0f}'} | "
                   f"{row.get('peak') or ''} | {row['worker_cpu_ms_per_run']:.2f} | {row['commits_per_run']:.2f} "
                   f"| {target} |")
    for row in bench.rows:
        if row.get("profile"):
            out += ["", f"Profile, {row['label']}, max_concurrency {row['concurrency']}:",
                    fanout_profile.render(row["profile"])]
    return "\n".join(out)


def _f(value):
    return "" if value is None else f"{value:,.1f}"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--items", type=int, default=None, help="items per map, and plain runs (default 10,000; --quick 300)")
    p.add_argument("--concurrency", type=int, action="append", default=None,
                   help="a map's max_concurrency (repeatable; default 100 and 1,000; --quick 20 and 100)")
    p.add_argument("--backends", default="pg-rabbitmq", help=f"comma-separated, of {', '.join(BACKENDS)}")
    p.add_argument("--quick", action="store_true", help="a small CI-sized run")
    p.add_argument("--workers", type=int, default=2, help="interlock worker processes (default 2)")
    p.add_argument("--threads", type=int, default=8, help="threads per worker process (default 8)")
    p.add_argument("--profile", action="store_true", help="py-spy one worker and sample pg_stat_activity per map")
    p.add_argument("--profile-seconds", type=float, default=20.0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    p.add_argument("--keep-logs", action="store_true")
    args = p.parse_args(argv)
    args.items = args.items or (300 if args.quick else 10_000)
    args.concurrency = args.concurrency or ([20, 100] if args.quick else [100, 1000])
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in args.backends if b not in BACKENDS]
    if unknown:
        p.error(f"unknown backend {', '.join(unknown)}: choose from {', '.join(BACKENDS)}")
    return args


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bench = Fanout(args)
    bench.load_before = os.getloadavg()
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    try:
        bench.run()
    except KeyboardInterrupt:
        bench.crashed = True
        print("interrupted", file=sys.stderr)
    except Exception as exc:  # noqa: BLE001 - what was measured is still printed
        bench.crashed = True
        print(f"crashed: {type(exc).__name__}: {exc}", file=sys.stderr)
    finally:
        bench.cleanup()
    print(render(bench, time.monotonic() - began))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": bench.rows},
                                        indent=2, default=str))
    return 1 if bench.crashed else 0


if __name__ == "__main__":
    sys.exit(main())
