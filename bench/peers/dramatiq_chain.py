"""The transport ceiling: a raw Dramatiq chain, each actor sending the next, 5 hops, nothing persisted.

    python dramatiq_chain.py worker  BROKER_URL QUEUE THREADS   consume until SIGTERM
    python dramatiq_chain.py preload BROKER_URL QUEUE N         send the first hop of N chains
    python dramatiq_chain.py single  BROKER_URL QUEUE K         K chains one after another

The broker is configured as Interlock configures its own (same middleware, publisher confirms on
RabbitMQ, the same prefetch). Each message carries the [start, end] times of the hops so far;
the last hop pushes them to a Redis list (one small write per chain, nothing else is stored).
"""

import json
import signal
import sys
import threading
import time

import dramatiq
import redis
from dramatiq.middleware import ShutdownNotifications, TimeLimit

REDIS_URL = "redis://127.0.0.1:6379/0"
HOPS = 5


def build_broker(url):
    middleware = [TimeLimit(), ShutdownNotifications()]
    if url.startswith("redis://"):
        from dramatiq.brokers.redis import RedisBroker

        return RedisBroker(url=url, middleware=middleware)
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    return RabbitmqBroker(url=url, middleware=middleware, confirm_delivery=True)


def done_key(queue):
    return f"bench:{queue}:done"


def declare(broker, queue, results):
    def hop(chain_id, index, timings):
        start = time.time()
        timings.append([start, time.time()])
        if index + 1 < HOPS:
            actor.send(chain_id, index + 1, timings)
        else:
            results.rpush(done_key(queue), json.dumps([chain_id, timings]))

    actor = dramatiq.Actor(hop, broker=broker, actor_name="bench_hop", queue_name=queue, priority=0,
                           options={"max_retries": 0})
    return actor


def main(argv):
    mode, url, queue, n = argv[0], argv[1], argv[2], int(argv[3])
    broker = build_broker(url)
    results = redis.Redis.from_url(REDIS_URL)
    actor = declare(broker, queue, results)
    if mode == "worker":
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        broker.emit_after("process_boot")
        worker = dramatiq.Worker(broker, worker_threads=n, worker_timeout=100)
        worker.queue_prefetch = max(64, n * 2)  # what Interlock's worker sets
        worker.start()
        print("chain worker ready", flush=True)
        while not stop.wait(0.5):
            pass
        worker.stop(timeout=10_000)
    elif mode == "preload":
        for i in range(n):
            actor.send(f"c{i}", 0, [])
        print(json.dumps({"sent": n}), flush=True)
    elif mode == "single":
        latencies, timings = [], []
        for i in range(n):
            began = time.time()
            actor.send(f"s{i}", 0, [])
            item = results.blpop(done_key(queue), timeout=30)
            if item is None:
                raise TimeoutError("a single chain did not finish within 30s")
            chain = json.loads(item[1])[1]
            latencies.append(chain[-1][1] - began)
            timings.append(chain)
        print(json.dumps({"latencies": latencies, "timings": timings}), flush=True)
    broker.close()
    results.close()


if __name__ == "__main__":
    main(sys.argv[1:])
