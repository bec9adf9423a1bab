"""The fan-out benchmark's workflows (bench/fanout.py; INTERLOCK_WORKFLOWS=bench.fanout_flows).

``bench_noop1``: one step that does nothing: the child, also run on its own for the plain rate.
``bench_fanout_<N>``: a Map of ``bench_noop1`` over ``data["items"]``, at most N at a time, with
the results collected; one class per N in ``BENCH_FANOUT_CONCURRENCY`` (default "100,1000"),
so every process that loads this module defines the same workflows.
"""

import os

from engine import State, Workflow, map_, step


class Noop1(Workflow):
    name, version = "bench_noop1", 1

    work = State(initial=True)
    done = State(final=True)
    finish = work.to(done)

    @step(work)
    def nothing(self, run):
        return "finish"


def fanout_workflow(concurrency: int) -> type[Workflow]:
    class Fanout(Workflow):
        name, version = f"bench_fanout_{concurrency}", 1

        mapping = State(initial=True)
        done = State(final=True)
        all_done = mapping.to(done)

        children = map_(mapping, items="items", workflow="bench_noop1", max_concurrency=concurrency,
                        on_done="all_done", results="results")

    Fanout.__name__ = Fanout.__qualname__ = f"Fanout{concurrency}"
    return Fanout


CONCURRENCY = [int(c) for c in os.environ.get("BENCH_FANOUT_CONCURRENCY", "100,1000").split(",") if c.strip()]
for _concurrency in CONCURRENCY:
    globals()[f"Fanout{_concurrency}"] = fanout_workflow(_concurrency)
