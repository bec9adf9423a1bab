"""The workflow ``bench/scale.py`` adds to ``bench.flows`` (INTERLOCK_WORKFLOWS=bench.flows,bench.scale_flows).

``bench_wait``: a run that waits on one timer and ends when it fires. The scale benchmark
bulk-loads many of these as the waiting part of the background (their timers armed far in
the future), then brings 10^5 of them due at once to time the firing.
"""

from datetime import timedelta

from engine import State, Workflow, after


class Wait(Workflow):
    name, version = "bench_wait", 1

    waiting = State(initial=True)
    expired = State(final=True)

    expire = waiting.to(expired)

    deadline = after(timedelta(days=30), waiting, send="expire")
