"""The archive: finished runs written out before retention deletes them.

JSON Lines, one run and its whole history per line, in one file per day (UTC) of archiving:
``runs-2026-12-01.jsonl`` in ``INTERLOCK_ARCHIVE_DIR``. A batch's lines are appended with one
write and made durable (fsync of the file, and of the directory for a new file) before the
transaction that deletes its runs commits. A crash in between leaves the runs in the database,
so the next pass archives them again: a run may appear twice, never not at all. Reading keeps
the last line written for a run.

Each line starts with the run's id (``{"run_id": "…", …``): a lookup parses only its own lines.
Processes writing one directory must be on one host (appends are atomic on a local filesystem).
"""

import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .errors import InterlockError
from .queries import HistoryEntry, Run

PREFIX, SUFFIX = "runs-", ".jsonl"
FORMAT = 1


class ArchivedRunNotFound(InterlockError):
    code = "archived-run-not-found"
    status = 404

    def __init__(self, run_id, directory):
        self.run_id = run_id
        super().__init__(f"run {run_id!r} is not in the archive at {directory}")


def file_name(at: float) -> str:
    return f"{PREFIX}{datetime.fromtimestamp(at, tz=timezone.utc).date().isoformat()}{SUFFIX}"


def line(run_row: dict, history_rows: list, archived_at: float) -> str:
    """One run as a line: every column of its row, its history in seq order, when it was archived."""
    rest = json.dumps({"format": FORMAT, "archived_at": archived_at, "run": dict(run_row),
                       "history": [dict(h) for h in history_rows]}, ensure_ascii=False, separators=(",", ":"))
    return _head(run_row["id"]) + rest[1:] + "\n"


def _head(run_id: str) -> str:
    return f'{{"run_id": {json.dumps(run_id)},'


class Archive:
    def __init__(self, directory):
        self.directory = Path(directory)

    def write(self, lines: list[str], at: float) -> Path:
        """Append ``lines`` to the file of ``at``'s day, durably; the file's path."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / file_name(at)
        new = not path.exists()
        data = "".join(lines).encode("utf-8")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if new:  # the file's name must survive a crash too
            dir_fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        return path

    def files(self, since: float | None = None) -> list[Path]:
        """The archive's files in day order; with ``since``, from that day on."""
        found = sorted(p for p in self.directory.glob(f"{PREFIX}*{SUFFIX}") if p.is_file())
        if since is None:
            return found
        first = file_name(since)
        return [p for p in found if p.name >= first]

    def find(self, run_id: str) -> dict:
        """The record of ``run_id`` (its last line, if archived twice)."""
        head = _head(run_id)
        created = _created_at(run_id)
        # A run is archived after it was created: files of earlier days cannot hold it (a day of
        # slack for an id made by a host's own clock).
        since = None if created is None else created - timedelta(days=1).total_seconds()
        found = None
        for path in self.files(since):
            with path.open(encoding="utf-8") as f:
                for text in f:
                    if text.startswith(head):
                        try:
                            found = json.loads(text)
                        except json.JSONDecodeError:
                            continue  # a torn last line (the disk filled): an earlier copy stands
        if found is None:
            raise ArchivedRunNotFound(run_id, self.directory)
        return found

    def read(self, run_id: str) -> tuple[Run, list[HistoryEntry]]:
        """The run and its history as ``Interlock.get`` and ``Interlock.history`` returned them."""
        return from_record(self.find(run_id))


def from_record(record: dict) -> tuple[Run, list[HistoryEntry]]:
    return Run.from_row(record["run"]), [HistoryEntry.from_row(h) for h in record["history"]]


def _created_at(run_id: str) -> float | None:
    try:
        return int(run_id[:12], 16) / 1000 if len(run_id) == 32 else None
    except ValueError:
        return None
