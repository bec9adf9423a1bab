"""The baselines: raw Dramatiq chain, PostgreSQL commit loop, DBOS Transact, Celery chain.

Each function returns a result row (a dict) in the shape ``bench/throughput.py`` prints; it
raises ``venvs.Unavailable`` when the peer cannot be installed, anything else when it crashed.
"""

import json
import subprocess
import sys
import time
from pathlib import Path

from bench import measure as m
from bench.peers import commit_loop, venvs

HERE = Path(__file__).resolve().parent
HOPS = 5


def _chain_row(name, results, single, cpu, library=None):
    """A row from the per-chain [start, end] timings the last hop pushed."""
    chains = [timings for _, timings in results]
    began = min(t[0][0] for t in chains)
    ended = max(t[-1][1] for t in chains)
    window = ended - began
    hops = m.hops_from_timings(chains)
    return {"name": name, "transitions": HOPS * len(chains), "window": window,
            "tps": HOPS * len(chains) / window, "runs_per_s": len(chains) / window,
            "hops": hops, "single": single["latencies"], "single_hops": m.hops_from_timings(single["timings"]),
            "worker_cpu": cpu, "library": library}


def _wait_for_list(client, key, n, timeout):
    deadline = time.monotonic() + timeout
    while client.llen(key) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {client.llen(key)} of {n} chains finished within {timeout:.0f}s")
        time.sleep(0.05)


def stop(children):
    for child in children:
        child.stop()


def dramatiq_chain(bench, broker_key):
    """Each actor sends the next; the same broker settings, processes and threads as Interlock's workers."""
    import redis

    url = m.REDIS_URL if broker_key == "redis" else m.AMQP_URL
    queue = bench.queue_name(f"chain_{broker_key}")
    script = [sys.executable, str(HERE / "dramatiq_chain.py")]
    env = m.env_with()
    client = redis.Redis.from_url(m.REDIS_URL)
    workers = []

    def start_workers():
        started = [bench.child(script + ["worker", url, queue, str(bench.args.threads)], env, f"chain-{broker_key}-{i}")
                   for i in range(bench.args.workers)]
        for w in started:
            w.wait_for("chain worker ready")
        return started

    try:
        # Single chains first, on their own workers: their CPU at "ready" is the cost of booting.
        workers = start_workers()
        boot_cpu = m.CpuMeter(lambda: [w.pid for w in workers]).stop()
        single = m.run_json(script + ["single", url, queue, str(bench.single_runs)], env=env, timeout=300)
        stop(workers)
        m.run_json(script + ["preload", url, queue, str(bench.chains)], env=env, timeout=300)
        workers = start_workers()
        _wait_for_list(client, f"bench:{queue}:done", bench.chains, bench.timeout)
        cpu = m.CpuMeter(lambda: [w.pid for w in workers]).stop() - boot_cpu
        results = [json.loads(x) for x in client.lrange(f"bench:{queue}:done", 0, -1)]
        return _chain_row(f"Dramatiq chain ({'Redis' if broker_key == 'redis' else 'RabbitMQ'})", results,
                          single, cpu, library=f"dramatiq {_version('dramatiq')}")
    finally:
        stop(workers)
        client.delete(f"bench:{queue}:done")
        client.close()
        bench.delete_queue(queue, broker_key)


def celery_chain(bench, install):
    """A Celery chain of five tasks on Redis, prefork pool with one process per Interlock worker process."""
    import redis

    python = venvs.python_for("celery", install)
    queue = bench.queue_name("celery")
    env = m.env_with(BENCH_QUEUE=queue, PYTHONPATH=str(HERE))
    client = redis.Redis.from_url(m.REDIS_URL)
    worker = None
    try:
        def start_worker():
            nonlocal worker
            worker = bench.child([python, "-m", "celery", "-A", "celery_chain", "worker", "-Q", queue,
                                  "-c", str(bench.args.workers), "-P", "prefork", "-n", f"{queue}@%h",
                                  "-l", "warning", "--without-gossip", "--without-mingle", "--without-heartbeat"],
                                 env, "celery", cwd=HERE)
            worker.wait_for("chain worker ready")

        # Single chains first, on their own worker: its CPU at "ready" is the cost of booting.
        start_worker()
        boot_cpu = m.CpuMeter(lambda: m.process_tree([worker.pid])).stop()
        single = m.run_json([python, str(HERE / "celery_chain.py"), "single", str(bench.single_runs)], env=env,
                            cwd=HERE, timeout=300)
        worker.stop()
        pre = m.run_json([python, str(HERE / "celery_chain.py"), "preload", str(bench.chains)], env=env,
                         cwd=HERE, timeout=300)
        start_worker()
        _wait_for_list(client, f"bench:{queue}:done", bench.chains, bench.timeout)
        cpu = m.CpuMeter(lambda: m.process_tree([worker.pid])).stop() - boot_cpu
        results = [json.loads(x) for x in client.lrange(f"bench:{queue}:done", 0, -1)]
        return _chain_row("Celery chain (Redis)", results, single, cpu, library=pre["library"])
    finally:
        if worker is not None:
            worker.stop()
        client.delete(f"bench:{queue}:done")
        client.close()
        bench.delete_queue(queue, "redis")


def dbos(bench, install):
    """DBOS Transact on the same PostgreSQL: the runs execute in the DBOS process, steps checkpointed."""
    python = venvs.python_for("dbos", install)
    db = bench.new_database("dbos", migrate=False)
    url = m.pg_url(db)
    try:
        script = [python, str(HERE / "dbos_flow.py")]
        env = m.env_with(BENCH_CONCURRENCY=bench.args.workers * bench.args.threads)
        # Sequential runs first, in their own process, so their commits are flushed before counting.
        single = m.run_json(script + ["single", url, str(bench.single_runs)], env=env, timeout=600)
        m.wait_no_backends(db)
        before = m.db_counters(db)
        log = open(bench.log_path("dbos"), "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(script + ["throughput", url, str(bench.runs)], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=log, text=True)
        try:
            for line in proc.stdout:
                if line.startswith("@@ready"):
                    break
            else:
                raise RuntimeError(f"DBOS runner exited with {proc.wait()} (see {log.name})")
            cpu_db = m.CpuMeter(lambda: m.backend_pids(db)).start()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            out = next((json.loads(line) for line in proc.stdout if line.startswith("{")), None)
            cpu_db.stop()
            if out is None:
                raise RuntimeError(f"DBOS runner exited with {proc.wait()} (see {log.name})")
            proc.stdin.write("exit\n")
            proc.stdin.flush()
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
        m.wait_no_backends(db)
        delta = m.counters_delta(before, m.db_counters(db))
        chains = out["timings"]
        transitions = HOPS * len(chains)
        window = max(t[-1][1] for t in chains) - min(t[0][0] for t in chains)
        return {"name": "DBOS Transact (PostgreSQL)", "transitions": transitions, "window": window,
                "tps": transitions / window, "runs_per_s": len(chains) / window,
                "hops": m.hops_from_timings(chains), "single": single["latencies"],
                "single_hops": m.hops_from_timings(single["timings"]), "worker_cpu": out["cpu"],
                "db_cpu": cpu_db.seconds, "counters": delta, "library": out["library"],
                "note": "runs started at once with DBOS.start_workflow; workflow and steps run in the DBOS process"}
    finally:
        bench.drop_database(db)


def commit_ceiling(bench, clients):
    """Single-row INSERT + UPDATE, committed, in a loop: `clients` connections at once."""
    db = bench.commit_db
    m.wait_no_backends(db)
    before = m.db_counters(db)
    result = commit_loop.run(db, clients, bench.commit_seconds)
    m.wait_no_backends(db)
    delta = m.counters_delta(before, m.db_counters(db))
    return {"name": f"PostgreSQL commit loop, {clients} client{'s' if clients > 1 else ''}",
            "transitions": result["transactions"], "window": result["transactions"] / result["tps"],
            "tps": result["tps"], "counters": delta, "library": result["tool"],
            "note": f"1 INSERT + 1 UPDATE per commit; average commit {result['latency_ms']:.2f} ms"
            if result["latency_ms"] else "1 INSERT + 1 UPDATE per commit"}


def _version(package):
    from importlib.metadata import version

    return version(package)
