"""Bound models (issue 18): inserts of bound rows per second against the same rows unbound.

    .venv/bin/python bench/bound_models.py --quick     # 300 rows a kind, SQLite and PostgreSQL
    .venv/bin/python bench/bound_models.py             # 3,000 rows a kind
    .venv/bin/python bench/bound_models.py --backend postgresql --rows 10000

The bound rows are ``workflows.bound_orders.Order`` (each insert starts a ``bound_orders`` run in
the application's flush: the run, its history entry, its timer, its search row and the row's
state column, in the same transaction); the unbound ones are the same columns in a table no
binding knows. Each row is one ORM session commit, as an application writing orders one by one
does (``--per-commit 50``: 50 rows per commit). The two kinds alternate in blocks of 100 rows so
that a shared machine's load falls on both alike. On PostgreSQL a third case disables the
trigger on ``runs`` that NOTIFYs watchers (in the bench's own database): every change to a run
pays for it at its commit, bound or not. No worker runs (a step's dispatch is not what
is measured; the example's first state has none). Target: bound >= 0.5x unbound.
"""

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Float, String, create_engine, func, select, text  # noqa: E402
from sqlalchemy.orm import Mapped, Session, mapped_column  # noqa: E402

from bench import measure as m  # noqa: E402
from engine.config import Settings  # noqa: E402
from engine.db import Database  # noqa: E402
from engine.models import runs  # noqa: E402
from engine.runtime import Interlock  # noqa: E402
from workflows.bound_orders import Base, Order  # noqa: E402

BLOCK = 100


class PlainOrder(Base):
    """The same columns as ``Order``, bound to nothing."""

    __tablename__ = "bench_plain_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(255), default="")
    total: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str | None] = mapped_column(String(255), index=True)


def insert(engine, model, ids, per_commit) -> float:
    """Seconds to insert a row per id, ``per_commit`` rows per session commit."""
    t0 = time.perf_counter()
    with Session(engine) as s:
        for i in range(0, len(ids), per_commit):
            for row_id in ids[i:i + per_commit]:
                s.add(model(id=row_id, customer="ada@example.com", total=40.0))
            s.commit()
    return time.perf_counter() - t0


def measure(rt, app, rows, per_commit) -> dict:
    Base.metadata.drop_all(rt.db.engine)
    Base.metadata.create_all(rt.db.engine)
    warm = [f"W-{i}" for i in range(50)]
    insert(app, PlainOrder, warm, per_commit)
    insert(app, Order, warm, per_commit)
    seconds = {"unbound": 0.0, "bound": 0.0}
    for block in range(0, rows, BLOCK):
        ids = [f"B-{n}" for n in range(block, min(rows, block + BLOCK))]
        seconds["unbound"] += insert(app, PlainOrder, ids, per_commit)
        seconds["bound"] += insert(app, Order, ids, per_commit)
    with rt.db.read() as conn:
        started = conn.execute(select(func.count()).select_from(runs).where(runs.c.workflow == "bound_orders")).scalar()
        in_state = conn.execute(select(func.count()).select_from(Order.__table__)
                                .where(Order.__table__.c.status == "placed")).scalar()
    assert started == rows + len(warm) == in_state, (started, in_state)
    return {kind: rows / s for kind, s in seconds.items()}


def sqlite_case(rows, per_commit):
    directory = tempfile.mkdtemp(prefix="bench-bound-")
    try:
        url = f"sqlite:///{directory}/interlock.db"
        Database(url).upgrade()
        rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows="workflows"))
        try:
            return measure(rt, rt.db.write_engine, rows, per_commit)  # SQLite: the write lock up front
        finally:
            rt.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def postgresql_case(rows, per_commit, notify=True):
    name = f"bench_bound_{uuid.uuid4().hex[:8]}"
    admin = create_engine(m.PG_ADMIN_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = m.PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        Database(url).upgrade()
        rt = Interlock(Settings(database_url=url, broker_url="memory://", workflows="workflows"))
        if not notify:  # what the rows cost without the watchers' NOTIFY (engine/notify.py) at each commit
            with rt.db.write() as conn:
                conn.execute(text("ALTER TABLE runs DISABLE TRIGGER USER"))
        app = create_engine(Database(url).url)  # the application's own engine
        try:
            return measure(rt, app, rows, per_commit)
        finally:
            app.dispose()
            rt.close()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
        admin.dispose()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="300 rows of each kind")
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--per-commit", type=int, default=1)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args(argv)
    rows = 300 if args.quick else args.rows
    cases = {"sqlite": sqlite_case, "postgresql": postgresql_case,
             "postgresql, runs NOTIFY trigger off": lambda n, c: postgresql_case(n, c, notify=False)}
    print(f"{rows} rows of each kind, {args.per_commit} per commit, pid {os.getpid()}")
    print("| database | unbound rows/s | bound rows/s | bound / unbound |")
    print("| --- | ---: | ---: | ---: |")
    chosen = [name for name in cases if args.backend == "both" or name.startswith(args.backend)]
    for backend in chosen:
        rates = cases[backend](rows, args.per_commit)
        print(f"| {backend} | {rates['unbound']:.0f} | {rates['bound']:.0f} | "
              f"{rates['bound'] / rates['unbound']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
