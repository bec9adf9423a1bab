"""The outside world of the shipped examples, with zero delays, for the benchmarks.

``start_data``: a run's data that makes every simulated service answer at once (the carrier's
feed reports arrival on the first check, customs clears on the first attempt, the gateway
charges at once). ``send_waiting``: the events the outside world would send (a workflow's
``demo_events``: ``depart``, ``inspect``…) sent to every run waiting for one. The benchmark
workflows (bench/flows.py) need neither: their steps answer at once.
"""

import time

from sqlalchemy import select

from engine.models import runs

DATA = {
    "cargo": lambda i: {"container": f"MSCU{i:07d}", "origin": "Shanghai", "destination": "Rotterdam",
                        "manifest": ["electronics"], "check_every_seconds": 0, "arrives_after_checks": 1,
                        "customs_outages": 0, "customs_holds": 0},
    "orders": lambda i: {"order_id": f"B-{i}", "customer": f"c{i % 100}@example.com", "card": "4242",
                         "items": [{"sku": "BOOK-1", "qty": 2, "price": 12.5}], "gateway_timeouts": 0},
    "bench_callbacks5": lambda i: {"items": 1},  # its first transition's guard reads it
}


def start_data(workflow: str, i: int = 0) -> dict:
    make = DATA.get(workflow)
    return make(i) if make is not None else {}


def send_waiting(rt, workflow: str, limit: int = 1000, pool=None) -> tuple[int, float]:
    """Send each waiting run of ``workflow`` the event its state waits for (on ``pool``'s threads,
    if given); how many were sent, and the CPU seconds the sends took (the engine's work of those
    transitions, on the threads that sent them)."""
    events = rt.registry.get(workflow).demo_events
    if not events:
        return 0, 0.0
    with rt.db.read() as conn:
        waiting = conn.execute(select(runs.c.id, runs.c.state).where(
            runs.c.workflow == workflow, runs.c.status == "waiting", runs.c.state.in_(list(events)))
            .limit(limit)).all()

    def send(found):
        run_id, state = found
        event = events[state]
        event, data = (event if isinstance(event, tuple) else (event, {}))
        began = time.thread_time()
        rt.send(run_id, event, data)
        return time.thread_time() - began

    cpu = sum(map(send, waiting) if pool is None else pool.map(send, waiting))
    return len(waiting), cpu


class Simulator:
    """A thread sending the outside world's events to waiting runs of ``workflow`` (on ``threads``
    threads, as many callers would) until stopped; nothing to do for a workflow without
    ``demo_events``."""

    def __init__(self, rt, workflow: str, poll: float = 0.01, threads: int = 4):
        import threading

        self.rt, self.workflow, self.poll, self.threads = rt, workflow, poll, threads
        self.sent = 0
        self.send_cpu = 0.0  # CPU seconds of the sends: the engine's work, counted as the workers' is
        self.poll_cpu = 0.0  # CPU seconds of looking for waiting runs: the simulator's own, not counted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-simulator", daemon=True)
        self.needed = bool(rt.registry.get(workflow).demo_events)

    def start(self) -> "Simulator":
        if self.needed:
            self._thread.start()
        return self

    def _loop(self):
        from concurrent.futures import ThreadPoolExecutor

        began = time.thread_time()
        with ThreadPoolExecutor(self.threads, thread_name_prefix="bench-simulator") as pool:
            while not self._stop.is_set():
                sent, cpu = send_waiting(self.rt, self.workflow, pool=pool)
                self.sent += sent
                self.send_cpu += cpu
                if not sent:
                    self._stop.wait(self.poll)
        self.poll_cpu = time.thread_time() - began

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
