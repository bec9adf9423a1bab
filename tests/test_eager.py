"""Steps run eagerly (in the worker that committed their task) behave like steps sent through the broker."""

import threading
import time
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY

from engine import State, Workflow, step
from engine.testing import Harness


class Chain(Workflow):
    name, version = "eager_chain", 1
    first = State(initial=True)
    second = State()
    done = State(final=True)
    advance = first.to(second)
    finish = second.to(done)

    @step(first)
    def one(self, run):
        return "advance", {"one": run.attempt}

    @step(second)
    def two(self, run):
        return "finish", {"two": run.data["one"] + 1, "thread": threading.current_thread().name}


SLOW_THREADS = []


class Slow(Workflow):
    name, version = "eager_slow", 1
    first = State(initial=True)
    second = State()
    done = State(final=True)
    advance = first.to(second)
    finish = second.to(done)

    @step(first)
    def quick(self, run):
        return "advance"

    @step(second, retries=0, time_limit=timedelta(seconds=1))
    def endless(self, run):
        SLOW_THREADS.append(threading.current_thread().name)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
        return "finish"


def _started(via):
    return REGISTRY.get_sample_value("interlock_steps_started_total", {"workflow": "eager_chain", "via": via}) or 0


@pytest.mark.parametrize("eager_threads", [0, 4])
def test_a_chain_of_steps_ends_the_same_with_or_without_eager_threads(eager_threads):
    with Harness(Chain, eager_threads=eager_threads) as h:
        before = _started("broker"), _started("eager")
        run = h.run("eager_chain")
        # The metric tells how each step reached its worker: started in the worker's own
        # process, the run's first step runs eagerly too.
        assert (_started("broker") - before[0], _started("eager") - before[1]) == (
            (0, 2) if eager_threads else (2, 0))
        thread = run.data.pop("thread")
        assert (run.status, run.data) == ("succeeded", {"one": 1, "two": 2})
        assert [(e.kind, e.event, e.target) for e in h.rt.history(run.id)] == [
            ("started", None, "first"),
            ("step_started", None, None), ("step_succeeded", "advance", None), ("transition", "advance", "second"),
            ("step_started", None, None), ("step_succeeded", "finish", None), ("transition", "finish", "done")]
        # The second step's task was committed by this worker: with eager threads it ran at once.
        assert thread.startswith("interlock-eager") == (eager_threads > 0)


def test_a_step_run_eagerly_is_stopped_at_its_time_limit():
    with Harness(Slow, eager_threads=4) as h:
        began = time.monotonic()
        run = h.run("eager_slow", timeout=20)
        assert run.status == "failed" and run.state == "second"
        failed = [e for e in h.rt.history(run.id) if e.kind == "step_failed"]
        assert len(failed) == 1 and "TimeLimitExceeded" in failed[0].detail["error"]
        assert time.monotonic() - began < 10
        assert SLOW_THREADS and SLOW_THREADS[0].startswith("interlock-eager")
