"""CPU per transition of the engine alone, one thread, no broker: each variant's runs started,
then their step tasks executed one after another in this process (read, step, result applied),
until every run has ended. Deterministic enough for ``valgrind --tool=callgrind``.

    .venv/bin/python bench/transition_cpu.py [--runs 200] [--variants noop,callbacks,cargo,orders]
    valgrind --tool=callgrind --callgrind-out-file=cg.%p .venv/bin/python bench/transition_cpu.py --runs 50 --variants callbacks

Prints, per variant, transitions made and CPU µs per transition (process time, this thread).
The examples (``cargo``, ``orders``) are driven by a simulator with zero delays: their data
makes every check and charge succeed at once, and the events the outside world would send
(``depart``, ``inspect``) are sent as soon as a run waits for them.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select  # noqa: E402

from engine.config import Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.models import history, runs, tasks  # noqa: E402
from engine.runtime import Interlock  # noqa: E402

from bench import simulate  # noqa: E402

VARIANTS = {"noop": "bench_noop5", "payload": "bench_payload5", "callbacks": "bench_callbacks5",
            "cargo": "cargo", "orders": "orders"}


def drive(rt, workflow, n) -> tuple[int, float]:
    ids = [rt.start(workflow, simulate.start_data(workflow, i)).id for i in range(n)]
    cpu0 = time.process_time()
    while True:
        simulate.send_waiting(rt, workflow)  # the sends' CPU is counted: they are transitions
        with rt.db.read() as conn:
            queued = conn.execute(select(tasks.c.id).where(tasks.c.status == "queued", tasks.c.kind == "step")
                                  .order_by(tasks.c.id)).scalars().all()
        if not queued:
            break
        for task_id in queued:
            rt.executor.execute(task_id)
    cpu = time.process_time() - cpu0
    with rt.db.read() as conn:
        left = conn.execute(select(func.count()).select_from(runs).where(
            runs.c.id.in_(ids), runs.c.status.in_(("running", "waiting")))).scalar()
        moves = conn.execute(select(func.count()).select_from(history).where(
            history.c.run_id.in_(ids), history.c.kind == "transition")).scalar()
    if left:
        raise RuntimeError(f"{left} runs of {workflow} did not end")
    return moves, cpu


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--variants", default="noop,callbacks,cargo,orders")
    args = p.parse_args(argv)
    directory = Path(tempfile.mkdtemp(prefix="interlock-transition-cpu-"))
    try:
        url = f"sqlite:///{directory / 'interlock.db'}"
        Database(url).upgrade()
        rt = Interlock(Settings(database_url=url, broker_url="memory://", queue="transition_cpu",
                                workflows="bench.flows,workflows"))
        results = {}
        for variant in args.variants.split(","):
            drive(rt, VARIANTS[variant], 5)  # warm up: statements compiled, caches filled
            moves, cpu = drive(rt, VARIANTS[variant], args.runs)
            results[variant] = cpu / moves
            print(f"{variant:10s} {moves:6d} transitions  {cpu / moves * 1e6:8.1f} µs CPU / transition"
                  + (f"  ({results['noop'] / results[variant]:.2f}× no-op)" if "noop" in results else ""),
                  flush=True)
        rt.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
