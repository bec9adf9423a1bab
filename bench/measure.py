"""What the benchmark measures with: CPU from /proc, PostgreSQL counters, percentiles, child processes.

Only the standard library and psycopg / redis / pika (the main virtualenv has them).
Every address here is 127.0.0.1.
"""

import itertools
import json
import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379/0"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
TICK = os.sysconf("SC_CLK_TCK")


# -- numbers ------------------------------------------------------------------------------

def percentile(values, p):
    """Nearest-rank percentile (p in 0..100) of a list, None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-p * len(ordered) // 100))))
    return ordered[rank - 1]


def hops_from_timings(chains):
    """Hop latencies (s) from per-run lists of [start, end] per step: step i ended -> step i+1 started."""
    hops = []
    for steps in chains:
        for (_, end), (start, _) in itertools.pairwise(steps):
            hops.append(start - end)
    return hops


# -- CPU ----------------------------------------------------------------------------------

def _stat(pid):
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    # fields[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def cpu_seconds(pid):
    stat = _stat(pid)
    return None if stat is None else stat[1]


def process_tree(root_pids):
    """The given pids and all their descendants that are alive."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(entry)
            if stat is not None:
                parents.setdefault(stat[0], []).append(int(entry))
    found, todo = [], list(root_pids)
    while todo:
        pid = todo.pop()
        if pid in found or _stat(pid) is None:
            continue
        found.append(pid)
        todo.extend(parents.get(pid, []))
    return found


class CpuMeter:
    """CPU seconds used by a set of processes between ``start()`` and ``stop()``.

    ``pids`` is a callable returning the processes to look at: sampled at both ends, a
    process that appears in between counts from zero, one that ends in between is lost
    (so stop before the processes end).
    """

    def __init__(self, pids):
        self.pids = pids
        self.before: dict[int, float] = {}
        self.seconds = None

    def _sample(self):
        sample = {}
        for pid in self.pids():
            cpu = cpu_seconds(pid)
            if cpu is not None:
                sample[pid] = cpu
        return sample

    def start(self):
        self.before = self._sample()
        return self

    def stop(self):
        after = self._sample()
        self.seconds = sum(cpu - self.before.get(pid, 0.0) for pid, cpu in after.items())
        return self.seconds


# -- PostgreSQL -----------------------------------------------------------------------------

def pg(sql, params=None, dbname="postgres", fetch=True):
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={dbname}", autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if fetch and cur.description else None


def pg_url(dbname, driver="postgresql"):
    return f"{driver}://postgres@127.0.0.1:5432/{dbname}"


def pg_version():
    return pg("SHOW server_version")[0][0]


def pg_setting(name):
    return pg("SELECT setting FROM pg_settings WHERE name = %s", (name,))[0][0]


def create_database(name):
    drop_database(name)
    pg(f'CREATE DATABASE "{name}"')


def drop_database(name):
    pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def drop_stale_databases(prefix):
    """Bench databases left by an earlier invocation that died (their pid suffix is not alive)."""
    for (name,) in pg("SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)):
        rest = name[len(prefix):].split("_", 1)[0]
        if rest.isdigit() and not Path(f"/proc/{rest}").exists():
            drop_database(name)


def backend_pids(dbname):
    """Client backends connected to ``dbname`` (not the one asking)."""
    rows = pg("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
              "AND backend_type = 'client backend'", (dbname,))
    return [pid for (pid,) in rows]


def wait_no_backends(dbname, timeout=15.0):
    """Wait until every client has left ``dbname``: a backend flushes its statistics when it ends."""
    deadline = time.monotonic() + timeout
    while backend_pids(dbname) and time.monotonic() < deadline:
        time.sleep(0.1)


def db_counters(dbname):
    """Committed transactions (and statement calls, when pg_stat_statements is loaded) of one database."""
    row = pg("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, oid "
             "FROM pg_stat_database JOIN pg_database USING (datname) WHERE datname = %s", (dbname,))[0]
    counters = dict(zip(("commits", "rollbacks", "inserted", "updated", "deleted"), row[:5]))
    if statements_available() is True:
        calls = pg("SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE dbid = %s", (row[5],))[0][0]
        counters["statements"] = int(calls)
    return counters


_statements = None


def statements_available():
    """True, or the reason pg_stat_statements cannot be used."""
    global _statements
    if _statements is None:
        libraries = pg_setting("shared_preload_libraries")
        if "pg_stat_statements" not in libraries:
            _statements = "pg_stat_statements is not in shared_preload_libraries (needs a server restart)"
        else:
            try:
                pg("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                pg("SELECT count(*) FROM pg_stat_statements")
                _statements = True
            except Exception as exc:  # noqa: BLE001 - any failure only means "not available"
                _statements = f"pg_stat_statements unusable: {str(exc).strip()[:120]}"
    return _statements


def counters_delta(before, after):
    return {k: after[k] - before[k] for k in after if k in before}


# -- brokers ----------------------------------------------------------------------------------

def delete_redis_queue(queue, namespace="dramatiq"):
    """Remove a Dramatiq queue's keys (and a Celery/kombu queue of that name) from Redis."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    patterns = [f"{namespace}:{queue}*", f"{namespace}:__acks__.*.{queue}*", queue, f"{queue}\x06*",
                f"_kombu.binding*.{queue}*", f"bench:{queue}*"]
    try:
        for pattern in patterns:
            keys = list(client.scan_iter(match=pattern, count=1000))
            if keys:
                client.delete(*keys)
    finally:
        client.close()


def delete_rabbitmq_queue(queue):
    """Remove a Dramatiq queue and its delay and dead-letter queues from RabbitMQ."""
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = conn.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(queue=name)
    finally:
        conn.close()


# -- child processes --------------------------------------------------------------------------

def env_with(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


class Child:
    """A subprocess whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv, *, env, log_path, cwd=ROOT):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def output(self):
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text, count=1, timeout=60.0):
        """Wait until ``text`` appeared ``count`` times in the output; raise if the process ended first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count(text) >= count:
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.log_path.name} exited with {self.proc.returncode}: {self.tail()}")
            time.sleep(0.05)
        raise RuntimeError(f"{self.log_path.name}: no {text!r} within {timeout}s: {self.tail()}")

    def tail(self, lines=6):
        return " | ".join(self.output().strip().splitlines()[-lines:])

    def stop(self, timeout=20.0):
        if self.proc.poll() is None:
            try:
                self.proc.terminate()
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                # The whole session: a worker's children too.
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        if not self._log.closed:
            self._log.close()


def run_json(argv, *, env, timeout, cwd=ROOT, log_path=None):
    """Run a command that prints one JSON object as its last stdout line; return it."""
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, check=False)
    if log_path:
        Path(log_path).write_text(done.stdout + "\n--- stderr ---\n" + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise RuntimeError(f"{Path(argv[1]).name if len(argv) > 1 else argv[0]} exited with "
                           f"{done.returncode}: {tail}")
    return json.loads(lines[-1])
