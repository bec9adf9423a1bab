"""The durable-commit ceiling: one single-row INSERT and one UPDATE per transaction, committed.

With pgbench (PostgreSQL's own client, prepared statements) when it is installed; otherwise
``python commit_loop.py DBNAME SECONDS`` processes (psycopg), one per client.
"""

import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TABLE = "CREATE TABLE IF NOT EXISTS bench_commit (id bigserial PRIMARY KEY, n integer NOT NULL)"
SCRIPT = """BEGIN;
INSERT INTO bench_commit (n) VALUES (0) RETURNING id \\gset
UPDATE bench_commit SET n = n + 1 WHERE id = :id;
END;
"""


def pgbench_path():
    found = shutil.which("pgbench")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pgbench"))
    return str(candidates[-1]) if candidates else None


def run(dbname, clients, seconds, on_started=None):
    """Transactions committed and the seconds they took; ``on_started(pids)`` once clients run."""
    binary = pgbench_path()
    if binary:
        return _pgbench(binary, dbname, clients, seconds, on_started)
    return _python(dbname, clients, seconds, on_started)


def _pgbench(binary, dbname, clients, seconds, on_started):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(SCRIPT)
    argv = [binary, "-h", "127.0.0.1", "-p", "5432", "-U", "postgres", "-n", "-M", "prepared",
            "-f", f.name, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(seconds), dbname]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if on_started:
        on_started(proc)
    out, _ = proc.communicate(timeout=seconds + 60)
    Path(f.name).unlink()
    processed = re.search(r"number of transactions actually processed: (\d+)", out)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out)
    latency = re.search(r"latency average = ([\d.]+) ms", out)
    if proc.returncode != 0 or not processed or not tps:
        raise RuntimeError("pgbench failed: " + " | ".join(out.strip().splitlines()[-3:]))
    return {"tool": "pgbench -M prepared", "transactions": int(processed.group(1)), "tps": float(tps.group(1)),
            "latency_ms": float(latency.group(1)) if latency else None}


def _python(dbname, clients, seconds, on_started):
    procs = [subprocess.Popen([sys.executable, __file__, dbname, str(seconds)], stdout=subprocess.PIPE, text=True)
             for _ in range(clients)]
    if on_started:
        on_started(procs[0])
    counts = [int(p.communicate(timeout=seconds + 60)[0].strip().split()[-1]) for p in procs]
    total = sum(counts)
    return {"tool": "psycopg loop", "transactions": total, "tps": total / seconds,
            "latency_ms": 1000.0 * seconds * clients / total if total else None}


def _loop(dbname, seconds):
    import psycopg

    with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={dbname}") as conn:
        done, deadline = 0, time.monotonic() + seconds
        while time.monotonic() < deadline:
            (row_id,) = conn.execute("INSERT INTO bench_commit (n) VALUES (0) RETURNING id", prepare=True).fetchone()
            conn.execute("UPDATE bench_commit SET n = n + 1 WHERE id = %s", (row_id,), prepare=True)
            conn.commit()
            done += 1
    print(done)


if __name__ == "__main__":
    _loop(sys.argv[1], float(sys.argv[2]))
