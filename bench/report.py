"""Reading Interlock's results from its tables, and printing the tables of figures."""

import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import create_engine, func, select

from bench import duplicates
from bench import measure as m

ACTIVE = ("running", "waiting")


class Unavailable(Exception):
    pass


# -- reading Interlock's results (engine/models.py tables) ------------------------------------

def wait_until_ended(url, timeout, stall=90.0):
    """Until no run is running or waiting; raise when it takes too long or nothing moves."""
    from engine.models import runs

    engine = create_engine(url)
    deadline, last, moved = time.monotonic() + timeout, None, time.monotonic()
    try:
        while True:
            with engine.connect() as conn:
                active = conn.execute(select(func.count()).where(runs.c.status.in_(ACTIVE))).scalar_one()
            if active == 0:
                return
            now = time.monotonic()
            if active != last:
                last, moved = active, now
            if now > deadline or now - moved > stall:
                raise TimeoutError(f"{active} runs still active after {timeout:.0f}s"
                                   if now > deadline else f"{active} runs made no progress for {stall:.0f}s")
            time.sleep(0.1)
    finally:
        engine.dispose()


def analyze(url, single_ids):
    """Rates and hop latency of the throughput runs; latency of the single runs (``single_ids``)."""
    from engine.models import history, runs

    engine = create_engine(url)
    single_ids = set(single_ids)
    try:
        with engine.connect() as conn:
            statuses = conn.execute(select(runs.c.id, runs.c.status, runs.c.created_at, runs.c.finished_at)).all()
            rows = conn.execute(select(history.c.run_id, history.c.kind, history.c.at)
                                .where(history.c.kind.in_(("step_started", "transition")))
                                .order_by(history.c.run_id, history.c.seq)).all()
    finally:
        engine.dispose()
    counts, single = {}, []
    for run_id, status, created_at, finished_at in statuses:
        if run_id in single_ids:
            if status == "succeeded":
                single.append(finished_at - created_at)
        else:
            counts[status] = counts.get(status, 0) + 1
    transitions, first, last, hops, single_hops = 0, None, None, [], []
    current, previous_transition = None, None
    for run_id, kind, at in rows:
        alone = run_id in single_ids
        if run_id != current:
            current, previous_transition = run_id, None
        if kind == "transition":
            previous_transition = at
            if not alone:
                transitions += 1
                last = at if last is None else max(last, at)
        else:
            if not alone:
                first = at if first is None else min(first, at)
            if previous_transition is not None:
                (single_hops if alone else hops).append(at - previous_transition)
                previous_transition = None
    n = sum(counts.values())
    window = (last - first) if transitions else None
    row = {"transitions": transitions, "window": window, "runs": n, "statuses": counts, "hops": hops,
           "single": single, "single_hops": single_hops, "tps": transitions / window if window else None,
           "runs_per_s": counts.get("succeeded", 0) / window if window else None}
    executions = duplicates.count(url)
    row.update(steps=executions.steps, duplicates=executions.extra, lost_attempts=len(executions.lost))
    if counts.get("succeeded", 0) != n:
        row["warning"] = "not every run succeeded: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    return row


# -- figures -------------------------------------------------------------------------------------

def _ms(values, p):
    value = m.percentile(values or [], p)
    return None if value is None else value * 1000.0


def figures(row):
    """The printed figures of a row (None where not measured)."""
    transitions = row.get("transitions") or 0
    counters = row.get("counters") or {}
    cpu = [c for c in (row.get("worker_cpu"), row.get("db_cpu")) if c is not None]
    return {
        "tps": row.get("tps"), "runs_per_s": row.get("runs_per_s"),
        "hop_p50": _ms(row.get("single_hops"), 50), "hop_p99": _ms(row.get("single_hops"), 99),
        "load_hop_p50": _ms(row.get("hops"), 50), "load_hop_p99": _ms(row.get("hops"), 99),
        "single_p50": _ms(row.get("single"), 50), "single_p99": _ms(row.get("single"), 99),
        "commits": counters["commits"] / transitions if "commits" in counters and transitions else None,
        "statements": counters["statements"] / transitions if "statements" in counters and transitions else None,
        "rollbacks": counters["rollbacks"] / transitions if "rollbacks" in counters and transitions else None,
        "rows": sum(counters[k] for k in ("inserted", "updated", "deleted")) / transitions
        if "inserted" in counters and transitions else None,
        "worker_cpu": row.get("worker_cpu"), "db_cpu": row.get("db_cpu"),
        "cpu_ms": 1000.0 * sum(cpu) / transitions if cpu and transitions else None,
        "duplicates_per_1000": 1000.0 * row["duplicates"] / row["steps"] if row.get("steps") else None,
    }


def _fmt(value, digits=1):
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}" if abs(value) >= 1 or value == 0 else f"{value:.{digits + 1}f}"


def _label(row):
    variant = {"noop": "no-op", "payload": "1 KB payload", "backlog": "3 × 0.5 s steps, backlog"}.get(
        row.get("variant"), "no-op")
    return f"{row['name']} | {variant}"


def summary(row):
    if "unavailable" in row:
        return f"{row['name']}: unavailable: {row['unavailable']}"
    if "crashed" in row:
        return f"{row['name']}: CRASHED: {row['crashed']}"
    f = figures(row)
    parts = [f"{_fmt(f['tps'])} transitions/s"]
    parts += [f"{label} {_fmt(f[key], 2)} ms" for key, label in (
        ("load_hop_p50", "hop p50 loaded"), ("hop_p50", "hop p50 alone"), ("single_p50", "single p50"))
        if f[key] is not None]
    if row.get("steps"):
        parts.append(f"{row['duplicates']} duplicate executions in {row['steps']} steps "
                     f"({_fmt(f['duplicates_per_1000'], 2)} per 1,000)")
    return ", ".join(parts) + (f"  [{row['warning']}]" if row.get("warning") else "")


def _reference(bench, row):
    """The Interlock row (no-op variant) a baseline is compared with."""
    for other in bench.rows:
        if other["kind"] == "interlock" and other.get("backend") == row.get("ref") and other.get("variant") == "noop" \
                and "tps" in other:
            return other
    return None


def _ratio(a, b):
    return f"{a / b:.2f}×" if a is not None and b else "-"


def machine():
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    facts = {"cpu": f"{os.cpu_count()} × {cpu}", "memory": f"{mem / 1024 / 1024:.1f} GiB",
             "python": platform.python_version()}
    for name, read in (("postgresql", lambda: f"{m.pg_version()} (fsync={m.pg_setting('fsync')}, "
                                              f"synchronous_commit={m.pg_setting('synchronous_commit')})"),
                       ("redis", _redis_version), ("rabbitmq", _rabbitmq_version)):
        try:
            facts[name] = read()
        except Exception as exc:  # noqa: BLE001
            facts[name] = f"unreachable ({type(exc).__name__})"
    return facts


def _redis_version():
    import redis

    client = redis.Redis.from_url(m.REDIS_URL)
    try:
        return client.info("server")["redis_version"]
    finally:
        client.close()


def _rabbitmq_version():
    import pika

    conn = pika.BlockingConnection(pika.URLParameters(m.AMQP_URL))
    try:
        value = conn._impl.server_properties.get("version", "?")
        return value.decode() if isinstance(value, bytes) else str(value)
    finally:
        conn.close()


def _shown(path):
    relative = os.path.relpath(path, m.ROOT)
    return path if relative.startswith("..") else relative


def render(bench, elapsed):
    args, out = bench.args, []
    facts = machine()
    statements = m.statements_available() if not facts["postgresql"].startswith("unreachable") else "no server"
    out += ["", f"## Throughput — {'quick' if args.quick else 'full'} run, "
            f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}", "",
            f"command: `{' '.join([_shown(sys.executable)] + sys.argv)}`  ",
            "machine: " + "; ".join(f"{k} {v}" for k, v in facts.items()) + "  ",
            f"setup: {args.runs} runs started at once (5 steps each; backlog: 3 steps of 0.5 s) then drained by {args.workers} worker "
            f"processes × {args.threads} threads; {args.single} single runs one after another; "
            f"INTERLOCK_RESEND_AFTER={args.resend_after:g}; whole invocation {elapsed:.0f} s; load average "
            f"{bench.load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (2 CPUs: above 2, other work "
            "shared them)  ",
            "statements per transition: " + ("pg_stat_statements" if statements is True else
                                             f"not measured on PostgreSQL: {statements}"), ""]
    out += ["Hop: a step finished (its transition was applied) → the next step started. \"alone\": in the "
            "single runs, nothing else running; \"loaded\": in the throughput runs, behind the whole backlog "
            "(about runs in flight ÷ transitions/s with a FIFO queue). Single run: started → succeeded, one run at a time.", "",
            "| system | variant | transitions/s | runs/s | hop p50 ms alone | hop p99 ms alone | "
            "hop p50 ms loaded | hop p99 ms loaded | single run p50 ms | single run p99 ms | "
            "Interlock ÷ this (transitions/s) |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in bench.rows:
        if "unavailable" in row or "crashed" in row:
            what = f"unavailable: {row['unavailable']}" if "unavailable" in row else f"CRASHED: {row['crashed']}"
            out.append(f"| {row['name']} | {what} | | | | | | | | | |")
            continue
        f, ref = figures(row), _reference(bench, row)
        vs = f"{_ratio(ref['tps'], f['tps'])} ({ref['name'].split(', ', 1)[1]})" if ref else "-"
        out.append(f"| {_label(row)} | {_fmt(f['tps'])} | {_fmt(f['runs_per_s'])} | {_fmt(f['hop_p50'], 2)} | "
                   f"{_fmt(f['hop_p99'], 2)} | {_fmt(f['load_hop_p50'], 2)} | {_fmt(f['load_hop_p99'], 2)} | "
                   f"{_fmt(f['single_p50'], 2)} | {_fmt(f['single_p99'], 2)} | "
                   f"{vs if row['kind'] != 'interlock' else ''} |")
    out += ["", "Cost, over the throughput runs: commits (and rolled-back, i.e. read-only, transactions) and rows "
            "written per transition; CPU seconds of the worker processes (less what they used to boot) and of "
            "the PostgreSQL backends serving them.", "",
            "| system | variant | measured | commits / transition | statements / transition | "
            "rollbacks / transition | rows written / transition | worker CPU s | database CPU s | "
            "CPU ms / transition | counted by | notes |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for row in bench.rows:
        if "unavailable" in row or "crashed" in row:
            continue
        f = figures(row)
        measured = f"{row['transitions']:,} in {row['window']:.1f} s" if row.get("window") else "-"
        notes = "; ".join(x for x in (row.get("library"), row.get("note"), row.get("warning")) if x)
        out.append(f"| {_label(row)} | {measured} | {_fmt(f['commits'], 2)} | {_fmt(f['statements'], 2)} | "
                   f"{_fmt(f['rollbacks'], 2)} | {_fmt(f['rows'], 2)} | {_fmt(f['worker_cpu'])} | {_fmt(f['db_cpu'])} | {_fmt(f['cpu_ms'], 2)} | "
                   f"{row.get('counter_source', 'pg_stat_database' if row.get('counters') else '-')} | {notes} |")
    counted = [r for r in bench.rows if r.get("steps")]
    if counted:
        out += ["", "Step functions executed more than once (from the history: two results for one task "
                "attempt), with no fault injected; attempts lost with their worker would be counted apart.", "",
                "| system | variant | step attempts | duplicate executions | per 1,000 steps | attempts lost |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        for row in counted:
            out.append(f"| {_label(row)} | {row['steps']:,} | {row['duplicates']} | "
                       f"{_fmt(figures(row)['duplicates_per_1000'], 2)} | {row['lost_attempts']} |")
    baselines = [r for r in bench.rows if r["kind"] != "interlock" and "tps" in r]
    if baselines:
        out += ["", "Interlock's figure ÷ the baseline's (rates: above 1 is Interlock ahead; "
                "latencies: below 1 is Interlock ahead):", "",
                "| baseline | compared with | transitions/s | hop p50 alone | hop p50 loaded | single run p50 |",
                "| --- | --- | ---: | ---: | ---: | ---: |"]
        for row in baselines:
            ref = _reference(bench, row)
            if ref is None:
                out.append(f"| {row['name']} | (no Interlock row on the same servers) | - | - | - | - |")
                continue
            f, r = figures(row), figures(ref)
            out.append(f"| {row['name']} | {ref['name']} | {_ratio(r['tps'], f['tps'])} | "
                       f"{_ratio(r['hop_p50'], f['hop_p50'])} | {_ratio(r['load_hop_p50'], f['load_hop_p50'])} | "
                       f"{_ratio(r['single_p50'], f['single_p50'])} |")
    out += targets(bench)
    return "\n".join(out)


def targets(bench):
    """Issue 5's targets against this run's figures (no-op variant)."""
    rows = {(r.get("backend") or r["name"]): r for r in bench.rows
            if "tps" in r and r.get("variant", "noop") == "noop"}
    rabbit, lite = rows.get("pg-rabbitmq"), rows.get("sqlite")
    fr, fl = (figures(rabbit) if rabbit else {}), (figures(lite) if lite else {})

    def peer(name):
        row = rows.get(name)
        return figures(row)["tps"] if row else None

    checks = [
        ("PostgreSQL + RabbitMQ ≥ 1,000 transitions/s", fr.get("tps"), 1000, True, ""),
        ("≥ 3× DBOS Transact", _div(fr.get("tps"), peer("DBOS Transact (PostgreSQL)")), 3, True, "×"),
        ("≥ 2× Celery chain", _div(fr.get("tps"), peer("Celery chain (Redis)")), 2, True, "×"),
        ("≥ 0.5× raw Dramatiq chain (RabbitMQ)", _div(fr.get("tps"), peer("Dramatiq chain (RabbitMQ)")), 0.5, True, "×"),
        ("hop p50 ≤ 3 ms (RabbitMQ; a run alone)", fr.get("hop_p50"), 3, False, " ms"),
        ("single 5-step run p50 ≤ 15 ms (RabbitMQ)", fr.get("single_p50"), 15, False, " ms"),
        ("SQLite + memory ≥ 1,500 transitions/s", fl.get("tps"), 1500, True, ""),
        ("SQLite + memory hop p50 ≤ 1 ms (a run alone)", fl.get("hop_p50"), 1, False, " ms"),
        ("≤ 1 commit per transition (PostgreSQL + RabbitMQ)", fr.get("commits"), 1, False, ""),
    ]
    out = ["", "Issue 5 targets (no-op workflow):", "", "| target | measured | |", "| --- | ---: | --- |"]
    for name, value, goal, higher, unit in checks:
        if value is None:
            out.append(f"| {name} | - | not measured |")
            continue
        met = value >= goal if higher else value <= goal
        verdict = "met" if met else f"missed: {value / goal:.2f}× the target" if higher else \
            f"missed: {value / goal:.1f}× the limit"
        out.append(f"| {name} | {_fmt(value, 2)}{unit} | {verdict} |")
    return out


def _div(a, b):
    return a / b if a is not None and b else None


def as_json(bench):
    return {"args": {k: str(v) for k, v in vars(bench.args).items()},
            "rows": [{**{k: v for k, v in r.items() if k not in ("hops", "single", "single_hops")}, **figures(r)}
                     if "unavailable" not in r and "crashed" not in r else r for r in bench.rows]}
