"""Step functions executed more than once, counted from the history table alone.

Every execution of a step function that reports back leaves one history row with its task,
attempt number and start time: ``step_started`` when its result was applied, ``ignored``
(cause ``step``) when the fence refused it. Two rows for one (task, attempt) are one
function run twice for the same attempt: a duplicate execution. An attempt whose worker
was lost (``step_failed`` with ``lost``) was cut short and runs again as the next attempt:
counted apart, since the first may have done part of its work.
"""

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import create_engine, select

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
        elif kind == "step_failed" and detail.get("lost"):
            lost.append((*key, at))
    duplicates = [Duplicate(*key, sorted(starts), reasons[key]) for key, starts in executions.items()
                  if len(starts) > 1]
    return Executions(steps, sorted(duplicates, key=lambda d: d.starts[-1]), lost)
