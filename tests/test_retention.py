"""Retention: finished runs past their workflow's retention (or INTERLOCK_RETENTION) are deleted with
everything that belongs to them, relatives of active runs are kept, and the archive gives them back.

The duty is driven with an explicit ``now``: no test waits for time to pass.
"""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import func, or_, select, text

from engine import retention
from engine.archive import Archive, file_name
from engine.config import Settings
from engine.errors import ConfigurationError, DefinitionError
from engine.models import history, map_items, maps, run_search, runs, signals, tasks, timers
from engine.reconciler import Reconciler
from engine.runtime import Interlock
from tests.conftest import TEST_WORKFLOWS

WORKFLOWS = f"{TEST_WORKFLOWS},tests.retention_workflows"
ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0
FAR = 10 * 365 * 86400.0  # ten years on: past every retention but timedelta.max


@pytest.fixture(params=["sqlite", "postgresql"])
def base(request):
    return request.getfixturevalue("sqlite_settings" if request.param == "sqlite" else "pg_settings")


@pytest.fixture
def make_rt(base):
    made = []

    def make(**changes):
        rt = Interlock(base.replace(workflows=WORKFLOWS, **changes))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


def finish(rt, workflow, event="close", data=None):
    run = rt.start(workflow, data or {})
    return rt.send(run.id, event)


def sweep(rt, now) -> int:
    """Run the duty until it finds nothing more to delete (parents go a pass after their children)."""
    total = 0
    while (deleted := retention.delete_expired(rt, now=now)) > 0:
        total += deleted
    return total


def exists(rt, run_id) -> bool:
    with rt.db.read() as conn:
        return conn.execute(select(runs.c.id).where(runs.c.id == run_id)).first() is not None


def rows_of(rt, ids) -> dict:
    """Rows referring to ``ids`` in every table that refers to a run."""
    where = {
        "runs": runs.c.id.in_(ids), "history": history.c.run_id.in_(ids), "tasks": tasks.c.run_id.in_(ids),
        "timers": timers.c.run_id.in_(ids),
        "signals": or_(signals.c.run_id.in_(ids), signals.c.source_id.in_(ids)),
        "maps": maps.c.parent_id.in_(ids), "map_items": map_items.c.parent_id.in_(ids),
        "run_search": run_search.c.run_id.in_(ids),
    }
    tables = {"runs": runs, "history": history, "tasks": tasks, "timers": timers, "signals": signals,
              "maps": maps, "map_items": map_items, "run_search": run_search}
    with rt.db.read() as conn:
        return {name: conn.execute(select(func.count()).select_from(tables[name]).where(cond)).scalar()
                for name, cond in where.items()}


def kid_of(rt, parent_id):
    [started] = [e for e in rt.history(parent_id) if e.kind == "child_started"]
    return started.detail["child"]


# -- which runs go ------------------------------------------------------------------------------

def test_exactly_the_runs_past_their_retention_are_deleted(make_rt):
    rt = make_rt(retention=2 * HOUR)  # the default; ret_note keeps its own hour, ret_forever forever
    note1, plain1, forever = finish(rt, "ret_note"), finish(rt, "ret_plain"), finish(rt, "ret_forever")
    note2, plain2 = finish(rt, "ret_note"), finish(rt, "ret_plain")
    active = rt.start("ret_note", {})
    first = (note1.finished_at + note2.finished_at) / 2

    assert sweep(rt, first + HOUR) == 1
    assert [exists(rt, r.id) for r in (note1, note2, plain1, plain2, forever, active)] == \
        [False, True, True, True, True, True]

    second = (plain1.finished_at + plain2.finished_at) / 2
    assert sweep(rt, second + 2 * HOUR) == 2
    assert [exists(rt, r.id) for r in (note2, plain1, plain2, forever, active)] == [False, False, True, True, True]

    assert sweep(rt, plain2.finished_at + FAR) == 1  # plain2; never the forever one, nor the active one
    assert [exists(rt, r.id) for r in (plain2, forever, active)] == [False, True, True]
    assert rt.get(active.id).status == "waiting"


def test_without_a_default_only_workflows_with_a_retention_lose_runs(make_rt):
    rt = make_rt()
    assert rt.settings.retention is None
    note, plain = finish(rt, "ret_note"), finish(rt, "ret_plain")
    assert sweep(rt, plain.finished_at + FAR) == 1
    assert (exists(rt, note.id), exists(rt, plain.id)) == (False, True)


def test_a_run_goes_with_its_history_tasks_timers_signals_maps_and_search_fields(make_rt):
    rt = make_rt()
    note = rt.start("ret_note", {"n": 1})
    for _ in range(3):
        rt.send(note.id, "edit")
    rt.send(note.id, "close")
    chore = rt.start("ret_chore", {})
    rt.cancel(chore.id, "no one came")
    batch = rt.start("ret_batch", {"items": [{"n": i} for i in range(3)]})
    while rt.get(batch.id).status != "succeeded":
        with rt.db.read() as conn:
            kids = conn.execute(select(runs.c.id).where(runs.c.parent_id == batch.id,
                                                        runs.c.status == "waiting")).scalars().all()
        for kid in kids:
            rt.send(kid, "sign")
    with rt.db.read() as conn:
        kids = conn.execute(select(runs.c.id).where(runs.c.parent_id == batch.id)).scalars().all()
    ids = [note.id, chore.id, batch.id, *kids]
    before = rows_of(rt, ids)
    assert all(before.values()), before  # every kind of row is there to be deleted

    assert sweep(rt, rt.clock.now() + 2 * HOUR) == len(ids)
    assert rows_of(rt, ids) == dict.fromkeys(before, 0)


def test_a_parent_of_an_active_child_is_kept_until_the_child_ends(make_rt):
    rt = make_rt()
    filing = rt.start("ret_filing", {})
    papers = kid_of(rt, filing.id)
    rt.send(filing.id, "drop")  # the parent ends; its papers go on alone
    later = rt.clock.now() + 2 * HOUR
    assert sweep(rt, later) == 0
    assert rt.get(papers).parent_id == filing.id and rt.get(filing.id).status == "succeeded"

    rt.send(papers, "sign")
    assert sweep(rt, rt.clock.now() + 2 * HOUR) == 2
    assert not exists(rt, papers) and not exists(rt, filing.id)


def test_a_child_of_an_active_parent_is_kept_until_the_parent_ends(make_rt):
    rt = make_rt()
    filing = rt.start("ret_filing", {})
    papers = kid_of(rt, filing.id)
    rt.send(papers, "sign")
    assert (rt.get(papers).status, rt.get(filing.id).state) == ("succeeded", "filed")
    assert sweep(rt, rt.clock.now() + 2 * HOUR) == 0

    rt.send(filing.id, "store")
    assert sweep(rt, rt.clock.now() + 2 * HOUR) == 2
    assert not exists(rt, papers) and not exists(rt, filing.id)


def test_finished_ancestors_of_an_active_run_are_kept(make_rt):
    rt = make_rt()
    office = rt.start("ret_office", {})
    filing = kid_of(rt, office.id)
    papers = kid_of(rt, filing)
    rt.send(office.id, "close")
    rt.send(filing, "drop")
    assert [rt.get(r).status for r in (office.id, filing, papers)] == ["succeeded", "succeeded", "waiting"]
    assert sweep(rt, rt.clock.now() + 2 * HOUR) == 0  # the office's child is kept, so is the office

    rt.send(papers, "sign")
    assert sweep(rt, rt.clock.now() + 2 * HOUR) == 3
    assert not any(exists(rt, r) for r in (office.id, filing, papers))


def test_the_duty_deletes_a_batch_a_poll_interval_and_then_looks_less_often(make_rt, monkeypatch):
    rt = make_rt()
    monkeypatch.setattr(retention, "BATCH", 3)
    monkeypatch.setattr(retention, "SQLITE_BATCH", 3)
    notes = [finish(rt, "ret_note") for _ in range(7)]
    duty = retention.Retention(rt)
    now, pause = notes[-1].finished_at + 2 * HOUR, rt.settings.poll_interval
    assert duty.tick(now) == 3
    assert duty.tick(now) == 0  # one batch per poll interval, however often the reconciler passes
    assert [duty.tick(now + i * pause) for i in (1, 2, 3)] == [3, 1, 0]
    finish(rt, "ret_note")
    assert duty.tick(now + 2 * pause + 1) == 0  # found less than a batch: the next look is LOOK_EVERY later
    assert duty.tick(now + 2 * pause + retention.LOOK_EVERY) == 1


def test_the_reconcilers_pass_runs_the_duty(make_rt):
    from prometheus_client import REGISTRY

    def counted():
        return REGISTRY.get_sample_value("interlock_runs_deleted_total", {"workflow": "ret_plain"}) or 0

    rt = make_rt(retention=1e-6)
    plain = finish(rt, "ret_plain")
    before = counted()
    Reconciler(rt).tick()
    assert not exists(rt, plain.id)
    assert counted() == before + 1


# -- settings and definitions ----------------------------------------------------------------

@pytest.mark.parametrize("raw, seconds", [("30d", 30 * 86400.0), ("1h30m", 5400.0), ("3600", 3600.0),
                                          ("2w", 14 * 86400.0), ("0.5s", 0.5), ("none", None)])
def test_INTERLOCK_RETENTION_takes_seconds_or_units(raw, seconds):
    assert Settings.from_env({"INTERLOCK_RETENTION": raw}).retention == seconds


@pytest.mark.parametrize("raw", ["soon", "0", "-5", "30x", "1h1h", "nan", "inf", "h"])
def test_a_malformed_INTERLOCK_RETENTION_is_refused(raw):
    with pytest.raises(ConfigurationError, match="INTERLOCK_RETENTION"):
        Settings.from_env({"INTERLOCK_RETENTION": raw})


@pytest.mark.parametrize("bad", [30, "30d", timedelta(0), timedelta(seconds=-1), True])
def test_a_bad_retention_fails_at_import(bad):
    from engine import State, Workflow

    with pytest.raises(DefinitionError, match="retention must be a timedelta"):
        class Bad(Workflow):
            name, version = "ret_bad", 1
            retention = bad
            a = State(initial=True)
            b = State(final=True)
            go = a.to(b)


# -- by hand -----------------------------------------------------------------------------------

def interlock(rt, *args, **variables):
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env.update({"INTERLOCK_DATABASE_URL": rt.settings.database_url, "INTERLOCK_WORKFLOWS": WORKFLOWS,
                "PYTHONPATH": str(ROOT), **variables})
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def table_counts(rt) -> dict:
    tables = {"runs": runs, "history": history, "tasks": tasks, "timers": timers, "signals": signals}
    with rt.db.read() as conn:
        return {name: conn.execute(select(func.count()).select_from(t)).scalar() for name, t in tables.items()}


def iso_at(ts):
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat()


def test_purge_dry_run_counts_what_purge_deletes_and_changes_nothing(make_rt):
    rt = make_rt()
    notes = [finish(rt, "ret_note") for _ in range(3)]
    rt.start("ret_note", {})  # active
    held = rt.start("ret_filing", {})
    rt.send(held.id, "drop")  # finished, but its papers are active: both stay
    done = rt.start("ret_filing", {})
    rt.send(kid_of(rt, done.id), "sign")
    rt.send(done.id, "store")  # finished with its finished papers: both go, papers first
    before = table_counts(rt)
    cutoff = iso_at(rt.clock.now() + 0.001)

    dry = interlock(rt, "runs", "purge", "--finished-before", cutoff, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("would delete 5 run(s) finished before")
    only_notes = interlock(rt, "runs", "purge", "--finished-before", cutoff, "--workflow", "ret_note", "--dry-run")
    assert only_notes.stdout.startswith("would delete 3 run(s)"), only_notes.stdout + only_notes.stderr
    assert table_counts(rt) == before

    done_purge = interlock(rt, "runs", "purge", "--finished-before", cutoff)
    assert done_purge.returncode == 0, done_purge.stderr
    assert done_purge.stdout.startswith("deleted 5 run(s)")
    assert not any(exists(rt, n.id) for n in notes) and exists(rt, held.id) and not exists(rt, done.id)
    assert rt.list_runs().runs and len(rt.list_runs().runs) == 3


def test_purge_deletes_a_family_leaf_first_whatever_the_retention(make_rt):
    rt = make_rt()
    office = rt.start("ret_office", {})
    filing = kid_of(rt, office.id)
    papers = kid_of(rt, filing)
    rt.send(papers, "sign")
    rt.send(filing, "store")
    rt.send(office.id, "close")
    plain = finish(rt, "ret_plain")  # no retention at all: purge deletes it anyway
    cutoff = rt.clock.now() + 0.001
    assert retention.count_purge(rt, cutoff) == 4
    assert retention.count_purge(rt, cutoff, "ret_office") == 0  # its descendants are not office runs
    assert retention.purge(rt, cutoff, "ret_office") == 0
    assert retention.purge(rt, cutoff) == 4
    assert not any(exists(rt, r) for r in (office.id, filing, papers, plain.id))


@pytest.mark.parametrize("args, message", [
    (["--finished-before", "last tuesday"], "expected an ISO 8601 time"),
    (["--finished-before", "2999-01-01T00:00:00Z"], "is in the future"),
    ([], "Missing option '--finished-before'"),
])
def test_purge_refuses_bad_input_with_one_line_and_changes_nothing(make_rt, args, message):
    rt = make_rt()
    finish(rt, "ret_note")
    before = table_counts(rt)
    result = interlock(rt, "runs", "purge", *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert table_counts(rt) == before


def test_the_runs_listing_still_works_beside_purge(make_rt):
    rt = make_rt()
    note = finish(rt, "ret_note")
    listed = interlock(rt, "runs", "--workflow", "ret_note", "--json")
    assert [r["id"] for r in json.loads(listed.stdout)["runs"]] == [note.id]


# -- the archive ---------------------------------------------------------------------------

def test_the_archive_gives_back_a_run_and_its_whole_history(make_rt, tmp_path):
    rt = make_rt(archive_dir=str(tmp_path / "archive"))
    run = rt.start("ret_note", {"title": "minutes", "ünïcode": "✓", "n": 0.1})
    rt.update_data(run.id, {"n": 2})
    rt.send(run.id, "edit", {"line": "first"})
    rt.send(run.id, "close")
    before, entries = rt.get(run.id), rt.history(run.id)
    assert len(entries) >= 4

    assert sweep(rt, before.finished_at + 2 * HOUR) == 1
    assert not exists(rt, run.id)
    assert Archive(tmp_path / "archive").read(run.id) == (before, entries)

    shown = interlock(rt, "archive", "read", run.id, "--dir", str(tmp_path / "archive"), "--json")
    assert shown.returncode == 0, shown.stderr
    got = json.loads(shown.stdout)
    assert (got["run"], got["history"]) == (before.to_dict(), [h.to_dict() for h in entries])
    text_form = interlock(rt, "archive", "read", run.id, INTERLOCK_ARCHIVE_DIR=str(tmp_path / "archive"))
    assert text_form.returncode == 0 and f"run {run.id}" in text_form.stdout and "close" in text_form.stdout


def test_the_archive_has_a_file_per_day(make_rt, tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("archive")
    rt = make_rt(archive_dir=str(tmp_path))
    first, second = finish(rt, "ret_note"), finish(rt, "ret_note")
    day = 86400.0
    # Each sweep's `now` is a different day; only the first run is past its hour at the first.
    now = (first.finished_at + second.finished_at) / 2 + HOUR
    assert sweep(rt, now) == 1
    assert sweep(rt, now + day) == 1
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [file_name(now), file_name(now + day)] and names[0] != names[1]
    for name, run in zip(names, (first, second)):
        [record] = (tmp_path / name).read_text().splitlines()
        assert json.loads(record)["run_id"] == run.id
    assert Archive(tmp_path).read(second.id)[0] == second


def test_a_crash_between_archive_and_delete_archives_twice_and_reads_once(make_rt, tmp_path_factory, monkeypatch):
    tmp_path = tmp_path_factory.mktemp("archive")
    rt = make_rt(archive_dir=str(tmp_path))
    run = finish(rt, "ret_note")
    entries = rt.history(run.id)
    real = retention._delete

    def crash(conn, ids):
        raise RuntimeError("killed before the delete committed")

    monkeypatch.setattr(retention, "_delete", crash)
    with pytest.raises(RuntimeError):
        retention.delete_expired(rt, now=run.finished_at + 2 * HOUR)
    assert exists(rt, run.id)
    monkeypatch.setattr(retention, "_delete", real)
    assert sweep(rt, run.finished_at + 2 * HOUR) == 1
    [archived] = list(tmp_path.iterdir())
    assert len(archived.read_text().splitlines()) == 2
    assert Archive(tmp_path).read(run.id) == (run, entries)


def test_archive_read_of_an_unknown_run_is_a_one_line_error(make_rt, tmp_path):
    rt = make_rt()
    missing = interlock(rt, "archive", "read", "0" * 32, "--dir", str(tmp_path))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [f"error: run '{'0' * 32}' is not in the archive at {tmp_path}"]
    no_dir = interlock(rt, "archive", "read", "0" * 32)
    assert no_dir.returncode == 2 and "--dir" in no_dir.stderr


def test_on_postgresql_the_selection_walks_the_retention_index(pg_settings):
    rt = Interlock(pg_settings.replace(workflows=WORKFLOWS))
    try:
        group = retention.Group("ret_note", 1, rt.clock.now())
        query = select(runs.c.id).where(*retention._deletable(group)).order_by(runs.c.finished_at).limit(500)
        compiled = query.compile(rt.db.engine, compile_kwargs={"literal_binds": True})
        with rt.db.engine.connect() as conn:
            conn.execute(text("SET enable_seqscan = off"))  # an empty table: ask whether the index serves it
            plan = "\n".join(conn.execute(text(f"EXPLAIN {compiled}")).scalars())
        assert "ix_runs_workflow_version_finished_at" in plan, plan
    finally:
        rt.close()


def test_on_postgresql_a_run_another_transaction_holds_is_left_for_a_later_pass(pg_settings):
    rt = Interlock(pg_settings.replace(workflows=WORKFLOWS))
    try:
        held, free = finish(rt, "ret_note"), finish(rt, "ret_note")
        later = free.finished_at + 2 * HOUR
        with rt.db.engine.connect() as other:
            other.execute(select(runs.c.id).where(runs.c.id == held.id).with_for_update())  # a transition, say
            assert retention.delete_expired(rt, now=later) == 1  # did not wait for it
            assert exists(rt, held.id) and not exists(rt, free.id)
            other.rollback()
        assert retention.delete_expired(rt, now=later) == 1
        assert not exists(rt, held.id)
    finally:
        rt.close()
