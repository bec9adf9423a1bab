"""Retention under churn: finished runs arrive at a steady rate, the reconciler's duty deletes them
an hour after they finish, and the tables stop growing.

Simulated time, real database. Every simulated minute, the minute's runs are inserted finished,
in bulk through the engine's tables, each with its history (5 entries), a task and a timer; one
in ten is a parent with a child run (and the child's applied ``child_ended`` signal), and one in
two hundred is a parent that stays active for two simulated hours with its child finished (the
child must be kept until the parent ends). Then the retention duty runs as the reconciler runs
it (``Retention.tick`` with the simulated time as ``now``, again at once while it deletes a full
batch). Every half simulated hour it prints the tables' row counts and the database's size.

With ``--probe``, the churn is followed by a latency check: a thread starts and finishes a run
every 50 ms of real time through the engine (two transitions), first for 10 s with the duty idle,
then while the duty drains a backlog (``--backlog`` runs past their retention) pass after pass,
as a reconciler does; the simulation starts a day after the real clock, so the probe's runs are
part of what it deletes.

    .venv/bin/python bench/retention.py --quick            # seconds
    .venv/bin/python bench/retention.py                    # 1,000,000 runs churned (~10 min)
    .venv/bin/python bench/retention.py --runs-per-hour 100000 --hours 3 --database-url postgresql://…/ret_bench

``--database-url`` takes an empty database (migrated first); default: SQLite in a temp dir. On
PostgreSQL, with ``--vacuum``, each report first runs ``VACUUM`` on the tables, as autovacuum
would (a server with autovacuum off keeps every deleted row's space until someone does).
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import func, select, text, update  # noqa: E402

from engine import State, Workflow  # noqa: E402
from engine import retention  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.models import history, map_items, maps, runs, signals, tasks, timers  # noqa: E402
from engine.registry import Registry  # noqa: E402
from engine.runtime import Interlock  # noqa: E402

START = time.time() + 86400  # simulated time starts here (epoch seconds)
STEP = 60.0  # simulated seconds per insert round
REPORT_EVERY = 1800.0
TABLES = {"runs": runs, "history": history, "tasks": tasks, "timers": timers, "signals": signals,
          "maps": maps, "map_items": map_items}


class Shipment(Workflow):
    name, version = "bench_shipment", 1
    retention = timedelta(hours=1)
    booked = State(initial=True)
    delivered = State(final=True)
    deliver = booked.to(delivered)


class Customs(Workflow):
    name, version = "bench_customs", 1
    retention = timedelta(hours=1)
    filed = State(initial=True)
    cleared = State(final=True)
    clear = filed.to(cleared)


class Probe(Workflow):
    name, version = "bench_probe", 1
    retention = timedelta(hours=1)
    open = State(initial=True)
    closed = State(final=True)
    close = open.to(closed)


class Prober(threading.Thread):
    """Start and finish a run every 50 ms; the latency of the two transitions together."""

    def __init__(self, rt):
        super().__init__(daemon=True)
        self.rt, self.samples, self.done = rt, [], threading.Event()

    def run(self):
        while not self.done.wait(0.05):
            t0 = time.perf_counter()
            run = self.rt.start("bench_probe", {})
            self.rt.send(run.id, "close")
            self.samples.append((time.perf_counter() - t0) * 1000)

    def take(self) -> list:
        taken, self.samples = self.samples, []
        return sorted(taken)


def pct(values, q):
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


class Churn:
    def __init__(self, rt, rate, seed=7):
        self.rt, self.rate, self.rnd = rt, rate, random.Random(seed)
        self.inserted = 0
        self.long_parents: list[tuple[float, str]] = []  # (finishes at, id)

    def _id(self, at):
        return f"{int(at * 1000):012x}{self.rnd.getrandbits(80):020x}"

    def _run(self, workflow, created, finished, parent=None, status="succeeded"):
        state = {"bench_shipment": "delivered", "bench_customs": "cleared"}[workflow]
        if finished is None:
            state = {"bench_shipment": "booked", "bench_customs": "filed"}[workflow]
        return {"id": self._id(created), "workflow": workflow, "version": 1, "status": status, "state": state,
                "configuration": [state], "entries": {state: 4}, "history_values": None,
                "data": {"container": f"MSCU{self.inserted:07d}", "weight_kg": 1200},
                "business_key": f"KEY-{self.inserted:07d}", "idempotency_key": None, "last_seq": 5,
                "open_tasks": 0, "open_timers": 0, "created_at": created, "updated_at": finished or created,
                "finished_at": finished, "parent_id": parent, "parent_state": "booked" if parent else None,
                "parent_seq": 1 if parent else None}

    def _history(self, run, created, finished):
        end = finished or created
        kinds = ["started", "step_started", "step_succeeded", "transition", "timer_fired"]
        return [{"run_id": run["id"], "seq": i + 1, "at": created + (end - created) * i / 5, "kind": kind,
                 "event": "deliver" if kind == "transition" else None, "source": None, "target": run["state"],
                 "cause": "step" if kind.startswith("step") else None, "data": None,
                 "detail": {"step": "book", "attempt": 1} if kind.startswith("step") else None}
                for i, kind in enumerate(kinds)]

    def _task_timer(self, run, created):
        task = {"id": self._id(created), "run_id": run["id"], "state": "booked", "entry_seq": 1, "name": "book",
                "kind": "step", "status": "succeeded", "attempt": 1, "max_attempts": 3, "available_at": created,
                "sent_at": created, "sent_by": None, "sends": 1, "claimed_at": None, "lease_until": None,
                "token": None, "visibility_timeout": None, "last_error": None, "created_at": created,
                "updated_at": created + 1}
        timer = {"id": self._id(created), "run_id": run["id"], "state": "booked", "entry_seq": 1, "name": "sla",
                 "kind": "timer", "event": "deliver", "due_at": created + 86400, "status": "cancelled",
                 "created_at": created, "fired_at": None}
        return task, timer

    def insert(self, t0, t1):
        """The runs finishing in [t0, t1), at the steady rate."""
        count = self.rnd.random() + self.rate * (t1 - t0) / 3600
        rows = {name: [] for name in TABLES}

        def add(run, created, finished):
            rows["runs"].append(run)
            rows["history"] += self._history(run, created, finished)
            task, timer = self._task_timer(run, created)
            rows["tasks"].append(task)
            rows["timers"].append(timer)
            self.inserted += 1

        for _ in range(int(count)):
            finished = self.rnd.uniform(t0, t1)
            created = finished - self.rnd.uniform(10, 600)
            kind = self.rnd.random()
            if kind < 0.005:  # a parent active for two hours, its child finished
                parent = self._run("bench_shipment", created, None, status="waiting")
                child = self._run("bench_customs", created + 1, finished, parent=parent["id"])
                add(parent, created, None)
                add(child, created + 1, finished)
                self.long_parents.append((finished + 7200, parent["id"]))
            elif kind < 0.1:  # a parent with a child that finished before it
                parent = self._run("bench_shipment", created, finished)
                child = self._run("bench_customs", created + 1, finished - 5, parent=parent["id"])
                add(parent, created, finished)
                add(child, created + 1, finished - 5)
                rows["signals"].append({"id": self._id(finished - 5), "run_id": parent["id"], "kind": "child_ended",
                                        "source_id": child["id"], "state": "booked", "entry_seq": 1,
                                        "payload": {"status": "succeeded"}, "status": "applied",
                                        "created_at": finished - 5, "applied_at": finished - 4})
            else:
                add(self._run("bench_shipment", created, finished), created, finished)
        due = [p for p in self.long_parents if p[0] < t1]
        self.long_parents = [p for p in self.long_parents if p[0] >= t1]
        with self.rt.db.write() as conn:
            for name, batch in rows.items():
                if batch:
                    conn.execute(TABLES[name].insert(), batch)
            for at, parent_id in due:  # the long parents end (as their last transition would)
                conn.execute(update(runs).where(runs.c.id == parent_id).values(
                    status="succeeded", state="delivered", finished_at=at, updated_at=at))


def counts(rt) -> dict:
    with rt.db.read() as conn:
        return {name: conn.execute(select(func.count()).select_from(t)).scalar() for name, t in TABLES.items()}


def vacuum(rt) -> float:
    t0 = time.perf_counter()
    with rt.db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        for name in TABLES:
            conn.exec_driver_sql(f"VACUUM {name}")
    return time.perf_counter() - t0


def size_mb(rt) -> str:
    with rt.db.read() as conn:
        if rt.db.dialect == "sqlite":
            page = conn.exec_driver_sql("PRAGMA page_size").scalar()
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar()
            return f"{pages * page / 1e6:.0f} MB file, {(pages - free) * page / 1e6:.0f} MB used"
        total = sum(conn.execute(text(f"SELECT pg_total_relation_size('{name}')")).scalar() for name in TABLES)
        return f"{total / 1e6:.0f} MB (tables and indexes)"


def orphans(rt) -> tuple[int, int]:
    """(children whose parent row is gone, finished children of active parents that are gone: 0 and 0)."""
    parent = runs.alias("parent")
    with rt.db.read() as conn:
        dangling = conn.execute(select(func.count()).select_from(runs).where(
            runs.c.parent_id.is_not(None), ~select(parent.c.id).where(parent.c.id == runs.c.parent_id).exists())
        ).scalar()
        active_parents = conn.execute(select(func.count()).select_from(runs).where(
            runs.c.status == "waiting")).scalar()
        with_child = conn.execute(select(func.count(func.distinct(runs.c.parent_id))).select_from(
            runs.join(parent, parent.c.id == runs.c.parent_id)).where(parent.c.status == "waiting")).scalar()
    return dangling, active_parents - with_child


def explain(rt, now):
    group = retention.Group("bench_shipment", 1, now - 3600)
    query = select(runs.c.id).where(*retention._deletable(group)).order_by(runs.c.finished_at).limit(retention.batch_size(rt))
    sql = str(query.compile(rt.db.engine, compile_kwargs={"literal_binds": True}))
    with rt.db.engine.connect() as conn:
        prefix = "EXPLAIN QUERY PLAN " if rt.db.dialect == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
        rows = conn.exec_driver_sql(prefix + sql).all()
        conn.rollback()
    return "\n".join(" ".join(str(c) for c in row) if rt.db.dialect == "sqlite" else row[0] for row in rows)


def latency(rt, churn, duty, now, backlog):
    """Transitions' latency with the duty idle, then while it drains ``backlog`` runs."""
    probe = Prober(rt)
    probe.start()
    time.sleep(10)
    idle = probe.take()
    probe.done.set()
    probe.join()
    rate, churn.rate = churn.rate, backlog * 60  # the backlog finishes in one simulated minute
    churn.insert(now, now + STEP)
    churn.rate = rate
    now += STEP + 2 * 3600
    probe = Prober(rt)
    probe.start()
    t0, drained, passes, batch = time.perf_counter(), 0, 0, retention.batch_size(rt)
    while True:  # as the reconciler's loop: a pass, then poll_interval (the duty never makes it busy)
        got = duty.tick(now + time.perf_counter() - t0)
        drained, passes = drained + got, passes + (got > 0)
        if 0 < got < batch:
            break
        time.sleep(rt.settings.poll_interval)
    took = time.perf_counter() - t0
    busy = probe.take()
    probe.done.set()
    probe.join()
    print(f"\nprobe: a run started and finished through the engine every 50 ms ({rt.db.dialect})")
    print("| duty | samples | p50 ms | p99 ms | max ms |\n| --- | ---: | ---: | ---: | ---: |")
    print(f"| idle | {len(idle)} | {pct(idle, 0.5):.1f} | {pct(idle, 0.99):.1f} | {pct(idle, 1.0):.1f} |")
    print(f"| draining {drained:,} runs in {passes:,} passes, {took:.0f} s | {len(busy)} | {pct(busy, 0.5):.1f} | "
          f"{pct(busy, 0.99):.1f} | {pct(busy, 1.0):.1f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10,000 runs an hour for 3 simulated hours")
    parser.add_argument("--runs-per-hour", type=int, default=100_000)
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--database-url", default=None, help="an empty database (default: SQLite in a temp dir)")
    parser.add_argument("--archive", action="store_true", help="archive the runs (a temp dir) before deleting them")
    parser.add_argument("--vacuum", action="store_true", help="PostgreSQL: VACUUM the tables at each report")
    parser.add_argument("--probe", action="store_true", help="then time transitions, duty idle and draining a backlog")
    parser.add_argument("--backlog", type=int, default=50_000, help="runs the duty drains under --probe")
    args = parser.parse_args()
    if args.quick:
        args.runs_per_hour, args.hours = 10_000, 3.0

    tmp = tempfile.mkdtemp(prefix="interlock-retention-")
    url = args.database_url or f"sqlite:///{tmp}/retention.db"
    Database(url).upgrade()
    registry = Registry()
    registry.add(Shipment)
    registry.add(Customs)
    registry.add(Probe)
    archive = os.path.join(tmp, "archive") if args.archive else ""
    rt = Interlock(Settings(database_url=url, workflows="", archive_dir=archive), registry=registry)
    rt.keep_clock = lambda: None  # simulated time: `now` is given to the duty
    churn, duty = Churn(rt, args.runs_per_hour), retention.Retention(rt)
    ticks, insert_s, delete_s, deleted = [], 0.0, 0.0, 0
    end, now, next_report = START + args.hours * 3600, START, START + REPORT_EVERY
    print(f"{args.runs_per_hour:,} finished runs an hour for {args.hours:g} simulated hours, retention 1 h, "
          f"{url.split(':', 1)[0]}{', archived' if archive else ''}, {os.cpu_count()} CPUs (shared)\n")
    print("| sim hour | runs churned | deleted | runs | history | tasks | timers | signals | database | "
          "delete s / 1k runs | tick p50 / max ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |")
    window = []
    while now < end:
        t0 = time.perf_counter()
        churn.insert(now, now + STEP)
        insert_s += time.perf_counter() - t0
        # The reconciler's passes during the simulated minute, one every poll interval.
        for i in range(int(STEP / rt.settings.poll_interval)):
            t0 = time.perf_counter()
            got = duty.tick(now + i * rt.settings.poll_interval)
            took = time.perf_counter() - t0
            if got:
                ticks.append(took)
                window.append((got, took))
                deleted += got
                delete_s += took
        now += STEP
        if now >= next_report:
            next_report += REPORT_EVERY
            vacuumed = f", vacuum {vacuum(rt):.1f} s" if args.vacuum and rt.db.dialect == "postgresql" else ""
            c = counts(rt)
            per_k = sum(t for _, t in window) / max(1, sum(g for g, _ in window)) * 1000
            recent = sorted(t for _, t in window) or [0.0]
            print(f"| {(now - START) / 3600:.1f} | {churn.inserted:,} | {deleted:,} | {c['runs']:,} | "
                  f"{c['history']:,} | {c['tasks']:,} | {c['timers']:,} | {c['signals']:,} | {size_mb(rt)}{vacuumed} | "
                  f"{per_k:.2f} | {statistics.median(recent) * 1000:.0f} / {recent[-1] * 1000:.0f} |", flush=True)
            window = []
    dangling, childless = orphans(rt)
    ticks.sort()
    print(f"\nchurned {churn.inserted:,} runs, deleted {deleted:,}; inserting took {insert_s:.0f} s, "
          f"deleting {delete_s:.0f} s ({delete_s / max(1, deleted) * 1e6:.0f} µs a run)")
    if ticks:
        print(f"retention ticks with deletes: {len(ticks):,}, p50 {statistics.median(ticks) * 1000:.0f} ms, "
              f"p99 {ticks[int(len(ticks) * 0.99)] * 1000:.0f} ms, max {ticks[-1] * 1000:.0f} ms "
              f"(one transaction of up to {retention.batch_size(rt)} runs each)")
    print(f"children whose parent is gone: {dangling}; active parents that lost their child: {childless}")
    if args.probe:
        latency(rt, churn, duty, now, args.backlog)
    if archive:
        files = sorted(Path(archive).iterdir())
        print(f"archive: {len(files)} file(s), {sum(f.stat().st_size for f in files) / 1e6:.0f} MB")
    print("\nthe selection (one batch of bench_shipment v1):\n" + explain(rt, now))
    rt.close()


if __name__ == "__main__":
    main()
