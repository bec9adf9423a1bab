"""Prometheus metrics of this process, and run counts read from the database at scrape time.

Counters live in the process that did the work: scrape every `interlock worker`
(``--metrics-port``) and `interlock serve` (``/metrics``). The ``interlock_runs`` gauge is
read from the database, so any one scrape shows the whole cluster's runs.
"""

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from .models import runs

runs_started = Counter("interlock_runs_started", "Runs started", ["workflow"])
runs_finished = Counter("interlock_runs_finished", "Runs that ended", ["workflow", "status"])
transitions = Counter("interlock_transitions", "Transitions applied", ["workflow", "cause"])
step_attempts = Counter("interlock_step_attempts", "Step attempts, by outcome",
                        ["workflow", "step", "outcome"])
step_failures = Counter("interlock_step_failures", "Failed step attempts", ["workflow", "step"])
step_duration = Histogram("interlock_step_duration_seconds", "Time a step's function ran",
                          ["workflow", "step"],
                          buckets=(.001, .005, .01, .05, .1, .5, 1, 5, 10, 60, 300, float("inf")))
steps_started = Counter("interlock_steps_started", "Step attempts started, by how the task reached this worker "
                        "(the broker, or eagerly: committed by this worker)", ["workflow", "via"])
queue_lag = Histogram("interlock_queue_lag_seconds", "Task committed (or due) until a worker started it",
                      ["workflow"], buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 5, 30, float("inf")))
timers_fired = Counter("interlock_timers_fired", "Timers fired", ["workflow"])
timer_lag = Histogram("interlock_timer_lag_seconds", "Timer due time until it fired", ["workflow"],
                      buckets=(.01, .05, .1, .25, .5, 1, 2, 5, 30, float("inf")))
runs_deleted = Counter("interlock_runs_deleted", "Finished runs deleted by retention or purge (archived "
                       "first when INTERLOCK_ARCHIVE_DIR is set)", ["workflow"])
open_streams = Gauge("interlock_open_streams", "Open long-poll and SSE requests", ["kind"])


def observe(outcome) -> None:
    """Count what one committed change did (called after the commit)."""
    workflow = outcome.run["workflow"]
    for row in outcome.history:
        kind, detail = row["kind"], row["detail"] or {}
        if kind == "started":
            runs_started.labels(workflow).inc()
        elif kind == "transition":
            transitions.labels(workflow, row["cause"] or "event").inc()
        elif kind in ("step_succeeded", "step_failed", "step_rechecked"):
            step = detail.get("step") or "?"
            step_attempts.labels(workflow, step, kind.removeprefix("step_")).inc()
            if kind == "step_failed":
                step_failures.labels(workflow, step).inc()
            if detail.get("duration") is not None:
                step_duration.labels(workflow, step).observe(detail["duration"])
        elif kind == "timer_fired":
            timers_fired.labels(workflow).inc()
            if detail.get("lag") is not None:
                timer_lag.labels(workflow).observe(max(0.0, detail["lag"]))
    if outcome.finished:
        runs_finished.labels(workflow, outcome.run["status"]).inc()


def observe_claim(workflow: str, available_at: float, via: str, now: float) -> None:
    steps_started.labels(workflow, via).inc()
    queue_lag.labels(workflow).observe(max(0.0, now - available_at))


class RunCounts(Collector):
    """``interlock_runs{workflow,status}`` from the database (the whole cluster's truth)."""

    def __init__(self, db):
        self.db = db

    def collect(self):
        family = GaugeMetricFamily("interlock_runs", "Runs in the database by workflow and status",
                                   labels=["workflow", "status"])
        with self.db.read() as conn:
            rows = conn.execute(select(runs.c.workflow, runs.c.status, func.count())
                                .group_by(runs.c.workflow, runs.c.status)).all()
        for workflow, status, count in rows:
            family.add_metric([workflow, status], count)
        yield family
