"""The runs a bulk action acts on in bench/bulk_cancel.py: they wait for an event that never comes."""

from engine import State, Workflow


class Waiting(Workflow):
    name, version = "bench_waiting", 1

    waiting = State(initial=True)
    done = State(final=True)

    go = waiting.to(done)
