"""The dashboard: runs started and finished in each hour of the last day by status, and step
durations (percentiles per workflow and step), drawn as inline SVG.

Every figure is computed by the database at a bounded cost however many runs there are: the
hourly counts are index ranges over the last day (``runs.created_at``; ``runs.finished_at,
status``), and the step durations come from the history of the newest ``SAMPLE_RUNS`` runs
started in the last day (each read by its primary key), ranked per step by a window function.
"""

from flask import render_template
from sqlalchemy import Integer, and_, cast, func, select

from engine.models import history, runs

from ..context import engine
from . import blueprint
from .data import STATUSES

HOURS = 24
SAMPLE_RUNS = 5000
PERCENTILES = (50, 90, 99)
FINISHED = ("succeeded", "failed", "cancelled")


def _hour(column, t0, dialect):
    offset = (column - t0) / 3600.0
    # Hours since t0 (never negative here): SQLite's CAST truncates; elsewhere FLOOR.
    return cast(offset, Integer) if dialect == "sqlite" else cast(func.floor(offset), Integer)


def hourly(rt, now: float) -> dict:
    """{"t0": the first hour's start, "started"/"finished": [{status: count}] per hour, oldest first}."""
    t0 = (now // 3600 - (HOURS - 1)) * 3600
    dialect = rt.db.dialect
    out = {"t0": t0, "started": [dict() for _ in range(HOURS)], "finished": [dict() for _ in range(HOURS)]}
    started = _hour(runs.c.created_at, t0, dialect).label("h")
    finished = _hour(runs.c.finished_at, t0, dialect).label("h")
    queries = {
        "started": select(started, runs.c.status, func.count()).where(runs.c.created_at >= t0)
        .group_by(started, runs.c.status),
        "finished": select(finished, runs.c.status, func.count()).where(runs.c.finished_at >= t0)
        .group_by(finished, runs.c.status),
    }
    with rt.db.read() as conn:
        for name, query in queries.items():
            for h, status, n in conn.execute(query):
                if h is not None and 0 <= h < HOURS:
                    out[name][h][status] = n
    return out


def step_durations(rt, now: float) -> list[dict]:
    """[{workflow, step, count, p50, p90, p99, max}] over the attempts (succeeded or failed) of
    the newest SAMPLE_RUNS runs started in the last day, slowest p90 first."""
    sample = (select(runs.c.id, runs.c.workflow).where(runs.c.created_at >= now - HOURS * 3600)
              .order_by(runs.c.created_at.desc()).limit(SAMPLE_RUNS).subquery())
    step = history.c.detail["step"].as_string()
    seconds = history.c.detail["duration"].as_float()
    attempts = (select(sample.c.workflow.label("workflow"), step.label("step"), seconds.label("seconds"))
                .select_from(sample.join(history, history.c.run_id == sample.c.id))
                .where(history.c.kind.in_(("step_succeeded", "step_failed", "step_rechecked")))
                .subquery())
    ranked = select(
        attempts.c.workflow, attempts.c.step, attempts.c.seconds,
        func.row_number().over(partition_by=(attempts.c.workflow, attempts.c.step),
                               order_by=attempts.c.seconds).label("n"),
        func.count().over(partition_by=(attempts.c.workflow, attempts.c.step)).label("total"),
    ).where(attempts.c.seconds.is_not(None)).subquery()
    # The nearest-rank percentile p: the value at rank ceil(p/100 * total); ranks are computed by
    # the database, which sends back only those rows (and the maximum).
    picks = []
    for p in PERCENTILES:
        rank = cast(ranked.c.total * p / 100.0 + 0.999999, Integer) if rt.db.dialect == "sqlite" else \
            cast(func.ceil(ranked.c.total * p / 100.0), Integer)
        picks.append((p, rank))
    query = select(ranked.c.workflow, ranked.c.step, ranked.c.seconds, ranked.c.n, ranked.c.total).where(
        (ranked.c.n == ranked.c.total) | (ranked.c.n == picks[0][1]) | (ranked.c.n == picks[1][1])
        | (ranked.c.n == picks[2][1]))
    found: dict = {}
    with rt.db.read() as conn:
        for workflow, name, value, n, total in conn.execute(query):
            row = found.setdefault((workflow, name), {"workflow": workflow, "step": name, "count": total})
            for p in PERCENTILES:
                if n == max(1, -(-total * p // 100)):
                    row[f"p{p}"] = value
            if n == total:
                row["max"] = value
    rows = list(found.values())
    for row in rows:
        for p in PERCENTILES:
            row.setdefault(f"p{p}", row.get("max"))
    rows.sort(key=lambda r: -(r["p90"] or 0))
    return rows


def _chart(buckets, t0):
    """Stacked bars per hour (one colour per status) as dicts for the template's SVG."""
    top = max([sum(b.values()) for b in buckets] + [1])
    bars = []
    for i, counts in enumerate(buckets):
        y = 100.0
        for status in STATUSES:
            n = counts.get(status, 0)
            if not n:
                continue
            h = 100.0 * n / top
            y -= h
            bars.append({"x": i, "y": round(y, 3), "h": round(h, 3), "status": status, "n": n,
                         "hour": t0 + i * 3600})
    return {"bars": bars, "top": top, "total": sum(sum(b.values()) for b in buckets),
            "totals": {s: sum(b.get(s, 0) for b in buckets) for s in STATUSES}}


@blueprint.get("/dashboard")
def dashboard_page():
    rt = engine()
    now = rt.clock.now()
    counts = hourly(rt, now)
    charts = {name: _chart(counts[name], counts["t0"]) for name in ("started", "finished")}
    return render_template("dashboard.html", charts=charts, t0=counts["t0"], hours=HOURS,
                           steps=step_durations(rt, now), sample=SAMPLE_RUNS, statuses=STATUSES)
