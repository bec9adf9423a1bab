"""The benchmark's 5-step no-op workflow as a Celery chain on Redis, run in the peer's own virtualenv.

    python -m celery -A celery_chain worker ...   the worker (BENCH_QUEUE names its queue)
    python celery_chain.py preload N              send N chains
    python celery_chain.py single K               K chains one after another

Each task appends its [start, end] times to the list the chain passes along; the last one pushes
the list to a Redis list (one small write per chain). No result backend: a chain needs none.
"""

import json
import os
import sys
import time

import redis
from celery import Celery, chain
from celery.signals import worker_ready

REDIS_URL = "redis://127.0.0.1:6379/0"
QUEUE = os.environ.get("BENCH_QUEUE", "bench_celery")
HOPS = 5

app = Celery("bench_chain", broker=REDIS_URL)
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, worker_hijack_root_logger=False,
                broker_connection_retry_on_startup=True, worker_send_task_events=False,
                # No remote-control mailbox: nothing but the benchmark's own keys is left in Redis.
                worker_enable_remote_control=False)
_results = None


def results():
    global _results
    if _results is None:
        _results = redis.Redis.from_url(REDIS_URL)
    return _results


def done_key():
    return f"bench:{QUEUE}:done"


@app.task(name="bench.step")
def step(timings, chain_id):
    start = time.time()
    timings.append([start, time.time()])
    if len(timings) == HOPS:
        results().rpush(done_key(), json.dumps([chain_id, timings]))
    return timings


@worker_ready.connect
def _ready(**_kwargs):
    print("chain worker ready", flush=True)


def send(chain_id):
    chain(step.s([], chain_id), *[step.s(chain_id) for _ in range(HOPS - 1)]).apply_async()


def main(argv):
    from importlib.metadata import version

    mode, n = argv[0], int(argv[1])
    if mode == "preload":
        for i in range(n):
            send(f"c{i}")
        print(json.dumps({"sent": n, "library": f"celery {version('celery')}"}), flush=True)
    elif mode == "single":
        latencies, timings = [], []
        for i in range(n):
            began = time.time()
            send(f"s{i}")
            item = results().blpop(done_key(), timeout=30)
            if item is None:
                raise TimeoutError("a single chain did not finish within 30s")
            chain_timings = json.loads(item[1])[1]
            latencies.append(chain_timings[-1][1] - began)
            timings.append(chain_timings)
        print(json.dumps({"latencies": latencies, "timings": timings}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
