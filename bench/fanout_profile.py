"""bench/fanout.py's figures, read from the database, and its profile of a map's drain: py-spy
on one worker process (wall clock: waits included) and pg_stat_activity sampled every 50 ms."""

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import create_engine, func, select

from bench import measure as m

PY_SPY = Path(sys.executable).parent / "py-spy"
# What a leaf frame is doing, by file: the first rule that matches wins.
LEAF = [("PostgreSQL round trip (psycopg: a statement, a lock wait, the commit)", ("psycopg/",)),
        ("SQLAlchemy", ("sqlalchemy/",)), ("broker client (pika / redis)", ("pika/", "redis/", "dramatiq/")),
        ("python-statemachine", ("statemachine/",)), ("json", ("json/",)), ("engine/ code itself", ("engine/",))]


# Innermost frames of a thread waiting for work (a queue, an event, its next poll).
IDLE = ("threading.py", "queue.py", "selectors.py", "sleep (")


def figures(url, concurrency) -> dict:
    """The child workflow's rate; for a map, also its parent's fan-in lag and the peak concurrency."""
    from engine.models import history, runs

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            kids = conn.execute(select(runs.c.id, runs.c.status, runs.c.created_at, runs.c.finished_at)
                                .where(runs.c.workflow == "bench_noop1")).all()
            first_step = conn.execute(select(func.min(history.c.at)).join(runs, runs.c.id == history.c.run_id)
                                      .where(runs.c.workflow == "bench_noop1",
                                             history.c.kind == "step_started")).scalar()
            parent = conn.execute(select(runs.c.id, runs.c.status, runs.c.created_at)
                                  .where(runs.c.parent_id.is_(None), runs.c.workflow != "bench_noop1")).first()
            left, ends = None, []
            if parent is not None:
                left = conn.execute(select(func.min(history.c.at)).where(
                    history.c.run_id == parent.id, history.c.kind == "transition",
                    history.c.source == "mapping")).scalar()
                ends = conn.execute(select(history.c.at, history.c.detail).where(
                    history.c.run_id == parent.id, history.c.kind == "child_ended")).all()
                counted = conn.execute(select(history.c.kind).where(
                    history.c.run_id == parent.id, history.c.kind.in_(("child_started", "child_ended")))
                    .order_by(history.c.seq)).scalars().all()
    finally:
        engine.dispose()
    statuses = Counter(k.status for k in kids)
    last = max((k.finished_at for k in kids if k.finished_at), default=None)
    # Plain runs were queued before the workers started: timed from the first step.
    start = first_step if concurrency is None else min((k.created_at for k in kids), default=None)
    row = {"runs": len(kids), "statuses": dict(statuses),
           "rate": len(kids) / (last - start) if last and start and last > start else None,
           "window": (last - start) if last and start else None}
    if concurrency is not None:
        row.update(lag=(left - last) if left and last else None, peak=_peak(counted),
                   parent_status=parent.status if parent else None, **_fanin(kids, ends))
    if statuses.get("succeeded", 0) != len(kids) or (concurrency is not None and row["parent_status"] != "succeeded"):
        row["warning"] = "not every run succeeded: " + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    return row


def _fanin(kids, ends) -> dict:
    """How the parent took its children's ends: transactions (one ``at`` each), ends per
    transaction, and the median child's life (created -> finished) and wait (finished -> the
    parent's transaction that applied its end)."""
    finished = {k.id: k for k in kids}
    waits = [at - finished[d["child"]].finished_at for at, d in ends
             if d["child"] in finished and finished[d["child"]].finished_at]
    lives = [k.finished_at - k.created_at for k in kids if k.finished_at]
    transactions = len({at for at, _ in ends})
    return {"parent_transactions": transactions,
            "ends_per_transaction": len(ends) / transactions if transactions else None,
            "child_life_ms": 1000 * m.percentile(lives, 50) if lives else None,
            "end_wait_ms": 1000 * m.percentile(waits, 50) if waits else None}


def _peak(counted) -> int:
    """The most children running at once as their parent counts them: started and not yet
    ended, in the order of its history. (Times would not do: a child's ``created_at`` is when
    its parent's transaction began, before some of the ends that transaction applies.)"""
    active = peak = 0
    for kind in counted:
        active += 1 if kind == "child_started" else -1
        peak = max(peak, active)
    return peak


class Sampler:
    """py-spy on the first worker process under ``root_pid``, and the database's backends, from now
    for ``seconds`` (or until ``finish``)."""

    def __init__(self, root_pid, dbname, out_prefix, seconds):
        self.dbname, self.seconds = dbname, seconds
        self.out = Path(f"{out_prefix}-py-spy.txt")
        pids = [p for p in m.process_tree([root_pid]) if p != root_pid] or [root_pid]
        self.spy = subprocess.Popen([str(PY_SPY), "record", "--pid", str(pids[0]), "--duration", str(int(seconds)),
                                     "--rate", "200", "--format", "raw", "--idle", "--threads", "--nonblocking",
                                     "--output", str(self.out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        self.activity, self.samples = Counter(), 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample_db, daemon=True)
        self.thread.start()

    def _sample_db(self):
        import psycopg

        deadline = time.monotonic() + self.seconds
        with psycopg.connect(f"host=127.0.0.1 port=5432 user=postgres dbname={self.dbname}", autocommit=True) as conn:
            while not self.stop.wait(0.05) and time.monotonic() < deadline:
                rows = conn.execute("SELECT state, coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '') "
                                    "FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
                                    "AND backend_type = 'client backend'", (self.dbname,)).fetchall()
                self.samples += 1
                for state, kind, event in rows:
                    if state != "idle":
                        self.activity[f"{state}: {kind} {event}".strip()] += 1

    def finish(self) -> dict:
        self.stop.set()
        self.thread.join(10)
        try:
            text, _ = self.spy.communicate(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.spy.kill()
            text, _ = self.spy.communicate()
        db = {k: v / max(1, self.samples) for k, v in self.activity.most_common(8)}
        if self.spy.returncode != 0 or not self.out.exists():
            return {"db": db, "error": (text or b"").decode(errors="replace").strip()[-300:]}
        return {"db": db, **summarize(self.out.read_text())}


def summarize(raw) -> dict:
    """Of the samples of threads busy inside engine/ code (not waiting for work): the engine
    functions they were in (inclusive), and what the innermost frame was doing."""
    inclusive, leaves, by_thread, total = Counter(), Counter(), Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        frames = [p.strip() for p in parts[1:]]
        if not any("engine/" in f for f in frames) or any(w in frames[-1] for w in IDLE):
            continue  # a thread waiting for work
        count = int(count)
        total += count
        by_thread[parts[0].split(": ", 1)[-1]] += count
        for frame in {f.split(":")[0] for f in frames if "engine/" in f}:
            inclusive[_short(frame)] += count
        leaf = frames[-1]
        leaves[next((label for label, files in LEAF if any(p in leaf for p in files)), "other Python")] += count
    if not total:
        return {"samples": 0}
    return {"samples": total, "threads": [(k, v / total) for k, v in by_thread.most_common(5)],
            "inclusive": [(k, v / total) for k, v in inclusive.most_common(16)],
            "leaf": [(k, v / total) for k, v in leaves.most_common()]}


def _short(frame) -> str:
    for marker in ("/work/main/", str(m.ROOT) + "/"):
        frame = frame.replace(marker, "")
    return frame


def render(profile) -> str:
    out = ["PostgreSQL backends of the database, share of 50 ms samples (idle ones left out): "
           + "; ".join(f"{k} {v:.2f}" for k, v in profile.get("db", {}).items())]
    if profile.get("error"):
        return "\n".join(out + [f"py-spy failed: {profile['error']}"])
    if not profile.get("samples"):
        return "\n".join(out + ["py-spy: no sample inside engine/ code"])
    out.append(f"py-spy, one worker process, {profile['samples']:,} samples of threads busy inside engine/ code "
               "(wall clock: waits for PostgreSQL included); threads: " + ", ".join(f"{k} {v:.0%}" for k, v in profile["threads"]))
    out += [f"  {share:6.1%}  {name}" for name, share in profile["inclusive"]]
    out.append("  innermost frame: " + "; ".join(f"{k} {v:.0%}" for k, v in profile["leaf"]))
    return "\n".join(out)
