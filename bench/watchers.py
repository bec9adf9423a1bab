"""Benchmark: 1,000 watchers on one `interlock serve` process.

Starts the server (PostgreSQL + Redis by default, --sqlite for a SQLite file), opens
N concurrent SSE streams (or long polls) from one asyncio loop, measures the database
transactions per second and the server's CPU while they sit idle, then changes the
watched runs (spaced out, then all at once) and reports how long each change took to
reach its watcher. Everything talks to 127.0.0.1 only; it stops by itself.

    .venv/bin/python bench/watchers.py [--watchers 1000] [--mode sse|longpoll] [--sqlite]
"""

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import State, Workflow  # noqa: E402

HOST = "127.0.0.1"
PG_ADMIN = f"postgresql+psycopg://postgres@{HOST}:5432/postgres"
PG_DATABASE = "interlock_bench_watchers"
REDIS = f"redis://{HOST}:6379/0"


class Ticker(Workflow):
    """Waits forever; ``tick`` appends one history entry."""

    name, version = "bench_ticker", 1

    ticking = State(initial=True)
    stopped = State(final=True)

    tick = ticking.to.itself()
    stop = ticking.to(stopped)


# -- the server ---------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def prepare_database(sqlite: bool, tmp: Path) -> str:
    from sqlalchemy import create_engine, text

    from engine.db import Database

    if sqlite:
        url = f"sqlite:///{tmp / 'bench.db'}"
    else:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{PG_DATABASE}"'))
        admin.dispose()
        url = PG_ADMIN.rsplit("/", 1)[0] + "/" + PG_DATABASE
    db = Database(url)
    db.upgrade()
    db.dispose()
    return url


def drop_database():
    from sqlalchemy import create_engine, text

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)'))
    admin.dispose()


def start_server(url, broker, port, threads, log_path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env.update(PYTHONPATH=str(ROOT), INTERLOCK_DATABASE_URL=url, INTERLOCK_BROKER_URL=broker,
               INTERLOCK_WORKFLOWS="bench.watchers", INTERLOCK_QUEUE="interlock_bench")
    log = open(log_path, "wb")
    return subprocess.Popen([sys.executable, "-m", "engine.cli", "serve", "--host", HOST, "--port", str(port),
                             "--threads", str(threads)], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_for_server(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit("the server exited; see its log")
        try:
            with socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"GET /api/workflows HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if sock.recv(12).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server did not answer")


def proc_status(pid) -> dict:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def rss_mib(pid) -> float:
    return int(proc_status(pid)["VmRSS"].split()[0]) / 1024


def cpu_seconds(pid) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


# -- the watchers ---------------------------------------------------------------------------------

async def read_head(reader) -> dict:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status, *lines = head.split("\r\n")
    if " 200 " not in status + " ":
        raise RuntimeError(f"unexpected response: {status}")
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines if line)}


async def sse_watcher(port, run_id, after, received, connected, stop):
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /api/runs/{run_id}/stream HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n"
                 f"Last-Event-ID: {after}\r\n\r\n".encode())
    headers = await read_head(reader)
    chunked = headers.get("transfer-encoding") == "chunked"
    buffer, announced = b"", False
    try:
        while not stop.is_set():
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = (await reader.readexactly(size + 2))[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            buffer += data
            now = time.time()
            while b"\n\n" in buffer:
                block, buffer = buffer.split(b"\n\n", 1)
                fields = dict(line.split(": ", 1) for line in block.decode().split("\n")
                              if ": " in line and not line.startswith(":"))
                if fields.get("event") == "history":
                    received[(run_id, int(fields["id"]))] = now
            if not announced:  # the first chunk: the server holds our watch
                announced = True
                connected.append(run_id)
    finally:
        writer.close()


async def long_poll_watcher(port, run_id, after, received, connected, stop):
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        while not stop.is_set():
            writer.write(f"GET /api/runs/{run_id}/history?after={after}&wait=30 HTTP/1.1\r\n"
                         f"Host: {HOST}\r\n\r\n".encode())
            if after is not None and run_id not in connected:
                connected.append(run_id)
            headers = await read_head(reader)
            body = json.loads(await reader.readexactly(int(headers["content-length"])))
            now = time.time()
            for entry in body["history"]:
                received[(run_id, entry["seq"])] = now
            after = body["last_seq"]
    finally:
        writer.close()


class Watchers:
    """N watchers in an asyncio loop on its own thread."""

    def __init__(self, port, run_ids, mode):
        self.port, self.run_ids, self.mode = port, run_ids, mode
        self.received: dict = {}
        self.connected: list = []
        self.loop = asyncio.new_event_loop()
        self.stop = threading.Event()
        self.errors: list = []
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self):
        watcher = sse_watcher if self.mode == "sse" else long_poll_watcher
        tasks = []
        for start in range(0, len(self.run_ids), 100):  # open in batches: no SYN storm
            for run_id in self.run_ids[start:start + 100]:
                tasks.append(asyncio.ensure_future(
                    watcher(self.port, run_id, 1, self.received, self.connected, self.stop)))
            await asyncio.sleep(0.05)
        self._tasks = tasks
        results = await asyncio.gather(*tasks, return_exceptions=True)
        self.errors = [r for r in results if isinstance(r, Exception) and not isinstance(r, asyncio.CancelledError)]

    def start(self):
        self.thread.start()
        return self

    def wait_connected(self, timeout=120):
        deadline = time.monotonic() + timeout
        while len(self.connected) < len(self.run_ids):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(self.connected)} of {len(self.run_ids)} watchers connected")
            time.sleep(0.1)

    def close(self):
        self.stop.set()

        def cancel():
            for task in self._tasks:
                task.cancel()

        self.loop.call_soon_threadsafe(cancel)
        self.thread.join(10)


# -- measuring ---------------------------------------------------------------------------------------

def db_transactions():
    """Committed + rolled-back transactions of the bench database (read from another database)."""
    import psycopg

    with psycopg.connect(f"host={HOST} user=postgres dbname=postgres", autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
                           (PG_DATABASE,)).fetchone()
    return row[0]


def send_ticks(rt, run_ids, threads=1, spacing=0.0) -> dict:
    """Change each run once; (run id, seq) -> (before the call, after its commit returned)."""
    sent = {}

    def tick(run_id):
        before = time.time()
        run = rt.send(run_id, "tick")
        sent[(run_id, run.last_seq)] = (before, time.time())

    if threads == 1:
        for run_id in run_ids:
            tick(run_id)
            if spacing:
                time.sleep(spacing)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(tick, run_ids))
    return sent


def latencies(sent, received, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not all(key in received for key in sent):
        time.sleep(0.05)
    after_commit = sorted(received[k] - sent[k][1] for k in sent if k in received)
    from_call = sorted(received[k] - sent[k][0] for k in sent if k in received)
    return after_commit, from_call, len(sent) - len(after_commit)


def pct(values, p):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def report_latency(name, sent, received):
    after_commit, from_call, lost = latencies(sent, received)
    print(f"  {name}: {len(sent)} changes, missed {lost}; wake latency after commit "
          f"p50 {pct(after_commit, 50) * 1000:.1f} ms, p99 {pct(after_commit, 99) * 1000:.1f} ms, "
          f"max {after_commit[-1] * 1000:.1f} ms (from the start of the send call: p50 "
          f"{pct(from_call, 50) * 1000:.1f} ms, p99 {pct(from_call, 99) * 1000:.1f} ms)")
    return after_commit


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--mode", choices=["sse", "longpoll"], default="sse")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file and the in-memory broker")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--settle-seconds", type=float, default=11.0,
                        help="wait after connecting before measuring the idle window")
    parser.add_argument("--spaced", type=int, default=200, help="changes sent one by one, 20 ms apart")
    parser.add_argument("--burst-threads", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None, help="server threads (default max(1100, watchers + 100))")
    args = parser.parse_args()

    from engine.config import Settings
    from engine.runtime import Interlock

    tmp = Path(tempfile.mkdtemp(prefix="interlock-bench-"))
    url = prepare_database(args.sqlite, tmp)
    broker = "memory://" if args.sqlite else REDIS
    port = free_port()
    threads = args.threads or max(1100, args.watchers + 100)
    server = start_server(url, broker, port, threads, tmp / "serve.log")
    rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows="bench.watchers"))
    watchers = None
    try:
        wait_for_server(port, server)
        worker_pid = children(server.pid)[0]
        rss_before = rss_mib(worker_pid)
        run_ids = [rt.start("bench_ticker").id for _ in range(args.watchers)]

        started = time.monotonic()
        watchers = Watchers(port, run_ids, args.mode).start()
        watchers.wait_connected()
        if args.mode == "longpoll":
            time.sleep(2)  # requests written; give the server time to park them
        connect_seconds = time.monotonic() - started
        status = proc_status(worker_pid)

        # PostgreSQL backends report their counters up to 10 s late after a busy moment.
        time.sleep(args.settle_seconds)
        cpu0 = cpu_seconds(worker_pid)
        tx0 = None if args.sqlite else db_transactions()
        time.sleep(args.idle_seconds)
        idle_tx = None if args.sqlite else (db_transactions() - tx0) / args.idle_seconds
        idle_cpu = (cpu_seconds(worker_pid) - cpu0) / args.idle_seconds
        rss_idle = rss_mib(worker_pid)

        print("$ " + " ".join([Path(sys.executable).name, "bench/watchers.py", *sys.argv[1:]]))
        print(f"interlock serve (gthread, {threads} threads), {args.watchers} {args.mode} watchers, "
              f"{'SQLite + memory broker' if args.sqlite else 'PostgreSQL + Redis'}")
        print(f"  connected in {connect_seconds:.1f} s; server threads {status['Threads']}")
        print(f"  server worker RSS: {rss_before:.1f} MiB before, {rss_idle:.1f} MiB with the watchers "
              f"({(rss_idle - rss_before) * 1024 / args.watchers:.0f} KiB per watcher)")
        queries = ("not measured on SQLite" if idle_tx is None else
                   f"{idle_tx:.2f} (pg_stat_database xact_commit + xact_rollback of the bench database)")
        print(f"  idle for {args.idle_seconds:g} s: database transactions/s {queries}; "
              f"server CPU {idle_cpu * 100:.1f} %")

        if args.spaced:
            cpu = cpu_seconds(worker_pid)
            spaced = send_ticks(rt, run_ids[: args.spaced], spacing=0.02)
            report_latency("spaced (one change every 20 ms)", spaced, watchers.received)
            print(f"    server CPU per change: {(cpu_seconds(worker_pid) - cpu) / len(spaced) * 1000:.2f} ms")
        cpu, started = cpu_seconds(worker_pid), time.monotonic()
        burst = send_ticks(rt, run_ids, threads=args.burst_threads)
        sent_in = time.monotonic() - started
        report_latency(f"burst (every watched run changed at once, {args.burst_threads} sender threads, "
                       f"all sent in {sent_in:.2f} s)", burst, watchers.received)
        print(f"    server CPU per change: {(cpu_seconds(worker_pid) - cpu) / len(burst) * 1000:.2f} ms")
        print(f"  server worker RSS after the changes: {rss_mib(worker_pid):.1f} MiB")
        if watchers.errors:
            print(f"  watcher errors: {len(watchers.errors)} (first: {watchers.errors[0]!r})")
    finally:
        if watchers is not None:
            watchers.close()
        rt.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        if not args.sqlite:
            drop_database()
    print(f"  machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
