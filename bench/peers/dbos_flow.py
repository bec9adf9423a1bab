"""The benchmark's 5-step no-op workflow for DBOS Transact, run in the peer's own virtualenv.

    python dbos_flow.py single DB_URL K        K workflows one after another; prints latencies
    python dbos_flow.py throughput DB_URL N    prints "@@ready", waits for "go" on stdin, runs N
                                               workflows at once, prints the result, waits for "exit"

The workflow and its steps run in this process (DBOS is a library: the process that starts a
workflow executes it, checkpointing each step's output in PostgreSQL). Timings of each step
are kept in memory, not in DBOS, so measuring adds no database work.
"""

import json
import os
import sys
import threading
import time
from importlib.metadata import version

from dbos import DBOS

TIMINGS: dict[str, list] = {}
_lock = threading.Lock()


def _mark(run_key, start):
    with _lock:
        TIMINGS.setdefault(run_key, []).append([start, time.time()])


@DBOS.step()
def step1(key):
    _mark(key, time.time())


@DBOS.step()
def step2(key):
    _mark(key, time.time())


@DBOS.step()
def step3(key):
    _mark(key, time.time())


@DBOS.step()
def step4(key):
    _mark(key, time.time())


@DBOS.step()
def step5(key):
    _mark(key, time.time())


@DBOS.workflow()
def noop5(key):
    step1(key)
    step2(key)
    step3(key)
    step4(key)
    step5(key)
    return key


def launch(url, concurrency):
    DBOS(config={"name": "interlock-bench", "system_database_url": url, "log_level": "WARNING",
                 "sys_db_pool_size": max(20, concurrency + 4)})
    DBOS.launch()


def emit(obj):
    print(json.dumps(obj), flush=True)


def main(argv):
    mode, url, n = argv[0], argv[1], int(argv[2])
    concurrency = int(os.environ.get("BENCH_CONCURRENCY", "16"))
    launch(url, concurrency)
    info = {"library": f"dbos {version('dbos')}"}
    try:
        if mode == "single":
            latencies = []
            for i in range(n):
                began = time.time()
                DBOS.start_workflow(noop5, f"single-{i}").get_result()
                latencies.append(time.time() - began)
            emit({**info, "latencies": latencies, "timings": list(TIMINGS.values())})
        else:
            # Default: every run started at once with DBOS.start_workflow (a thread each; the
            # faster of DBOS's two ways here). BENCH_DBOS_MODE=queue: a DBOS queue instead.
            queue = None
            if os.environ.get("BENCH_DBOS_MODE", "start") == "queue":
                # Every run is enqueued at once; the queue lets `concurrency` of them run at a
                # time in this process (the equivalent of the workers' threads).
                queue = DBOS.register_queue("bench", worker_concurrency=concurrency, polling_interval_sec=0.01)
            print("@@ready", flush=True)
            sys.stdin.readline()
            cpu0, began = sum(os.times()[:2]), time.time()
            if queue is not None:
                handles = [queue.enqueue(noop5, f"run-{i}") for i in range(n)]
            else:
                handles = [DBOS.start_workflow(noop5, f"run-{i}") for i in range(n)]
            for handle in handles:
                handle.get_result()
            ended, cpu = time.time(), sum(os.times()[:2]) - cpu0
            emit({**info, "began": began, "ended": ended, "cpu": cpu, "timings": list(TIMINGS.values())})
            sys.stdin.readline()
    finally:
        DBOS.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
