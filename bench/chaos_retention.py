"""The chaos run's retention (bench/chaos.py): a schedule issues a ``chaos_receipt`` run every
second (bench/chaos_workflows.py), whose workflow keeps a finished run two seconds; the workers'
reconcilers archive (``INTERLOCK_ARCHIVE_DIR``) and delete them while the faults go on.

Invariant 15, ``retention deletes whole finished runs``, from the database and the archive:

- every archived run was finished (succeeded, failed, cancelled) at least its retention before
  it was archived, is a ``chaos_receipt`` (no other workflow keeps runs for a limited time
  here), and its archived history is contiguous from 1 to its ``last_seq``;
- a run deleted from the database was archived first (the schedule's ticks name every run they
  started: each is in the database or in the archive, bench/chaos_schedules.py);
- nothing of a deleted run is left behind: no history, task, timer, search field or signal
  row names a run that is not in the database.

A run archived twice (a crash between the archive's write and the delete's commit) is allowed:
the next pass writes it again; reading keeps the last line.
"""

import json
from pathlib import Path

from sqlalchemy import create_engine, select

from engine.db import normalize_url
from engine.definitions import FINAL_STATUSES
from engine.models import history, run_search, runs, signals, tasks, timers

WORKFLOW, RETENTION = "chaos_receipt", 2.0
SCHEDULE = {"name": "chaos-receipts", "workflow": WORKFLOW, "every": 1, "overlap": "allow", "catchup": "all",
            "data": {}}
CLOCK_SLACK = 0.25  # seconds: each process's clock is corrected to the database's, not equal to it


def archived(directory) -> dict:
    """Run id -> its archived records in the order written (the last one counts)."""
    out = {}
    for path in sorted(Path(directory).glob("runs-*.jsonl")):
        with path.open(encoding="utf-8") as f:
            for text in f:
                record = json.loads(text)
                out.setdefault(record["run_id"], []).append(record)
    return out


def check(url: str, records: dict, invariant) -> list:
    """``records``: ``archived(directory)``."""
    engine = create_engine(normalize_url(url))
    try:
        with engine.connect() as conn:
            present = set(conn.execute(select(runs.c.id)).scalars())
            left = {}
            for name, table in (("history", history), ("tasks", tasks), ("timers", timers),
                                ("search fields", run_search), ("signals", signals)):
                left[name] = set(conn.execute(select(table.c.run_id).distinct()).scalars()) - present
    finally:
        engine.dispose()
    inv = invariant("retention deletes whole finished runs", checked_what="deleted runs")
    twice = still_present = 0
    for run_id, copies in records.items():
        inv.checked += 1
        twice += len(copies) > 1
        record = copies[-1]
        run, rows = record["run"], record["history"]
        if run["workflow"] != WORKFLOW:
            inv.fail("a run without a retention deleted", run_id, f"({run['workflow']})")
        if run["status"] not in FINAL_STATUSES:
            inv.fail("an unfinished run deleted", run_id, f"({run['status']} in {run['state']})")
        elif run["finished_at"] is None or record["archived_at"] < run["finished_at"] + RETENTION - CLOCK_SLACK:
            inv.fail("a run deleted before its retention", run_id,
                     f"(finished {run['finished_at']}, archived {record['archived_at']})")
        if [h["seq"] for h in rows] != list(range(1, run["last_seq"] + 1)):
            inv.fail("archived history not whole", run_id, f"({len(rows)} rows, last_seq {run['last_seq']})")
        still_present += run_id in present
    for name, run_ids in left.items():
        for run_id in run_ids:
            inv.fail(f"{name} left of a deleted run", run_id)
    inv.notes.append(f"{twice} archived twice, {still_present} archived and not yet deleted")
    return [inv]
