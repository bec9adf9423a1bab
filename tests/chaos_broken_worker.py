"""`interlock worker` with a deliberately broken reconciler: it never recovers a lost task.

Only tests/test_chaos.py starts it (``bench/chaos.py --worker-module tests.chaos_broken_worker``),
to show that the chaos run's invariants catch a reconciler that stops doing its job.
Nothing in the engine can be switched into this state.
"""

from engine.cli import main
from engine.reconciler import Reconciler


def _recover_nothing(self) -> int:
    return 0


Reconciler.recover_lost_tasks = _recover_nothing

if __name__ == "__main__":
    main()
