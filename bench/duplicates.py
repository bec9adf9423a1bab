"""Step functions executed more than once, counted from the history table alone.

Every execution of a step function that reports back leaves a history row with its task,
attempt number and start time: ``step_started`` when its result was applied, ``ignored``
(cause ``step``) when the fence refused it. Two start times for one (task, attempt) are one
function run twice for the same attempt: a duplicate execution. (The same start time twice
is one execution reported twice, say a result applied again after its commit's answer was
lost: the fence ignored the second.) An attempt whose worker was lost (``step_failed`` with
``lost``, ``WorkerLost``) was cut short and runs again as the next attempt: counted apart,
since the first may have done part of its work. (An activity task whose external worker let
its visibility timeout pass is not a step function of ours: not counted.)
"""

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from sqlalchemy import create_engine, select

from bench.chaos_checks import Invariant
from engine.models import history


@dataclass
class Duplicate:
    run_id: str
    task: str
    attempt: int
    starts: list  # epoch seconds each execution started, earliest first
    reasons: list = field(default_factory=list)  # why the others' results were ignored


@dataclass
class Executions:
    steps: int  # step attempts applied (step_started rows)
    duplicates: list  # Duplicate, one per (task, attempt) run more than once
    lost: list  # (run_id, task, attempt, started_at) of attempts lost with their worker

    @property
    def extra(self) -> int:
        """Executions beyond the first of each attempt."""
        return sum(len(d.starts) - 1 for d in self.duplicates)

    def per_thousand(self) -> float | None:
        return 1000.0 * self.extra / self.steps if self.steps else None


def count(url: str) -> Executions:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(history.c.run_id, history.c.kind, history.c.at, history.c.cause,
                                       history.c.detail).where(
                history.c.kind.in_(("step_started", "ignored", "step_failed")))).all()
    finally:
        engine.dispose()
    executions, reasons, lost, steps = defaultdict(list), defaultdict(list), [], 0
    for run_id, kind, at, cause, detail in rows:
        detail = detail or {}
        if "task" not in detail or "attempt" not in detail:
            continue
        key = (run_id, detail["task"], detail["attempt"])
        if kind == "step_started":
            steps += 1
            executions[key].append(at)
        elif kind == "ignored" and cause == "step":
            executions[key].append(at)
            reasons[key].append(detail.get("reason"))
        elif kind == "step_failed" and detail.get("lost") and str(detail.get("error")).startswith("WorkerLost"):
            lost.append((*key, at - (detail.get("duration") or 0.0)))  # recorded when the lease ran out
    duplicates = [Duplicate(*key, sorted(set(starts)), reasons[key]) for key, starts in executions.items()
                  if len(set(starts)) > 1]
    return Executions(steps, sorted(duplicates, key=lambda d: d.starts[-1]), lost)


# After a fault ends, how long a second copy of a step may take to start because of it: the
# killed worker's heartbeat going stale (two leases) or Redis giving its messages back (15 s), the
# broker restart being noticed, a lease lost with a dropped connection, a publish lost with
# the API (the safety interval).
RECOVERY = {"kill_worker": 30.0, "restart_broker": 15.0, "drop_db": 15.0, "kill_api": None}
# The longest a chaos workflow's step runs before a fault can cut it short (with margin).
LONGEST_STEP = 10.0
# Faults that can stop a worker renewing its leases (the API runs no step): a killed worker, a
# dropped database connection, a broker outage stalling the reconciler loop on its sends.
CUT_STEPS = {"kill_worker", "drop_db", "restart_broker"}


def attribute(executions, faults, resend_after: float) -> Invariant:
    """Each step function executed twice, put down to the injected fault it overlapped: its
    first copy started before the fault ended and the second within the fault's recovery
    time. One with no such fault is a violation: nothing but a fault may run a step twice.

    ``faults``: (seconds into the run, kind, what, seconds taken, epoch began, epoch ended)."""
    invariant = Invariant("no step run twice without a fault", checked=executions.steps,
                          checked_what="step attempts")
    invariant.attributed, invariant.lost_to = Counter(), Counter()

    def cause(first, last):
        """The latest fault that began before the second copy started and could explain it."""
        for _at, kind, _what, _took, began_at, ended_at in sorted(faults, key=lambda f: -f[4]):
            recovery = RECOVERY[kind] if RECOVERY[kind] is not None else 2 * resend_after + 10.0
            if first <= ended_at + 1.0 and began_at - 1.0 <= last <= ended_at + recovery:
                return kind
        return None

    for dup in executions.duplicates:
        found = cause(dup.starts[0], dup.starts[-1])
        if found is None:
            invariant.fail("step executed twice with no fault near it", dup.run_id,
                           f"task {dup.task} attempt {dup.attempt} started at {', '.join(f'{t:.2f}' for t in dup.starts)}"
                           f" ({'; '.join(r or '?' for r in dup.reasons)})")
        else:
            invariant.attributed[found] += len(dup.starts) - 1
    for run_id, task, attempt, started_at in executions.lost:
        # Lost while it ran: started before the fault ended, at most a step's run before it began;
        # of several, the first to begin after the step started (the one that cut it short).
        near = sorted((f for f in faults if f[1] in CUT_STEPS and f[4] - LONGEST_STEP <= started_at <= f[5] + 1.0),
                      key=lambda f: (f[4] < started_at - 1.0, abs(f[4] - started_at)))
        found = near[0][1] if near else None
        if found is None:
            invariant.fail("attempt lost with its worker with no fault near it", run_id,
                           f"task {task} attempt {attempt} started at {started_at:.2f}")
        else:
            invariant.lost_to[found] += 1
    invariant.notes.append(f"{executions.extra} duplicate executions ("
                           + (", ".join(f"{n} {k}" for k, n in sorted(invariant.attributed.items())) or "none")
                           + f"), {len(executions.lost)} attempts lost with their worker ("
                           + (", ".join(f"{n} {k}" for k, n in sorted(invariant.lost_to.items())) or "none") + ")")
    return invariant
