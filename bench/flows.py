"""The benchmark workflows (loaded with INTERLOCK_WORKFLOWS=bench.flows, the repository root on PYTHONPATH).

``bench_noop5``: five sequential steps that do nothing; each step's answer is the event that
moves the run to the next state, so a run makes five step transitions.

``bench_payload5``: the same five steps on a run that carries a 1 KB string in its data; each
step replaces it with a new 1 KB string, so every transition writes the payload again.

``bench_limited5``: the five no-op steps, each with a concurrency limit never reached (10,000
at once, shared by the five: engine/limits.py), so every step takes and gives back a slot.
"""

import time

from engine import Limit, State, Workflow, step

PAYLOAD_BYTES = 1024


def payload(tag: str) -> str:
    """A 1 KB ASCII string starting with ``tag``."""
    return (tag + ":" + "x" * PAYLOAD_BYTES)[:PAYLOAD_BYTES]


class Noop5(Workflow):
    name, version = "bench_noop5", 1

    s1 = State(initial=True)
    s2 = State()
    s3 = State()
    s4 = State()
    s5 = State()
    done = State(final=True)

    e1 = s1.to(s2)
    e2 = s2.to(s3)
    e3 = s3.to(s4)
    e4 = s4.to(s5)
    e5 = s5.to(done)

    @step(s1)
    def step1(self, run):
        return "e1"

    @step(s2)
    def step2(self, run):
        return "e2"

    @step(s3)
    def step3(self, run):
        return "e3"

    @step(s4)
    def step4(self, run):
        return "e4"

    @step(s5)
    def step5(self, run):
        return "e5"


class Payload5(Workflow):
    name, version = "bench_payload5", 1

    s1 = State(initial=True)
    s2 = State()
    s3 = State()
    s4 = State()
    s5 = State()
    done = State(final=True)

    e1 = s1.to(s2)
    e2 = s2.to(s3)
    e3 = s3.to(s4)
    e4 = s4.to(s5)
    e5 = s5.to(done)

    @step(s1)
    def step1(self, run):
        return "e1", {"payload": payload("s1")}

    @step(s2)
    def step2(self, run):
        return "e2", {"payload": payload("s2")}

    @step(s3)
    def step3(self, run):
        return "e3", {"payload": payload("s3")}

    @step(s4)
    def step4(self, run):
        return "e4", {"payload": payload("s4")}

    @step(s5)
    def step5(self, run):
        return "e5", {"payload": payload("s5")}


class Slow3(Workflow):
    """Three steps of half a second: a few hundred runs keep every worker thread busy and the
    queue full for longer than the re-send interval (the duplicate-execution check)."""

    name, version = "bench_slow3", 1

    s1 = State(initial=True)
    s2 = State()
    s3 = State()
    done = State(final=True)

    e1 = s1.to(s2)
    e2 = s2.to(s3)
    e3 = s3.to(done)

    @step(s1)
    def step1(self, run):
        time.sleep(0.5)
        return "e1"

    @step(s2)
    def step2(self, run):
        time.sleep(0.5)
        return "e2"

    @step(s3)
    def step3(self, run):
        time.sleep(0.5)
        return "e3"


NEVER_REACHED = Limit(10_000, name="bench.never_reached")


class Limited5(Workflow):
    name, version = "bench_limited5", 1

    s1 = State(initial=True)
    s2 = State()
    s3 = State()
    s4 = State()
    s5 = State()
    done = State(final=True)

    e1 = s1.to(s2)
    e2 = s2.to(s3)
    e3 = s3.to(s4)
    e4 = s4.to(s5)
    e5 = s5.to(done)

    @step(s1, concurrency=NEVER_REACHED)
    def step1(self, run):
        return "e1"

    @step(s2, concurrency=NEVER_REACHED)
    def step2(self, run):
        return "e2"

    @step(s3, concurrency=NEVER_REACHED)
    def step3(self, run):
        return "e3"

    @step(s4, concurrency=NEVER_REACHED)
    def step4(self, run):
        return "e4"

    @step(s5, concurrency=NEVER_REACHED)
    def step5(self, run):
        return "e5"
