"""The retention commands of ``interlock``: ``runs purge`` deletes finished runs by hand,
``archive read`` finds a deleted run in the archive."""

import json
from pathlib import Path

import click

from . import retention
from .archive import Archive, from_record
from .cli_common import open_runtime, time_arg
from .cli_runs import _print_run, format_entry
from .timeparse import iso


@click.command()
@click.option("--finished-before", required=True, help="ISO 8601 time: delete runs that finished before it")
@click.option("--workflow", default=None, help="Only runs of this workflow (every version)")
@click.option("--dry-run", is_flag=True, help="Count the runs it would delete; delete nothing")
@click.option("--archive-dir", envvar="INTERLOCK_ARCHIVE_DIR", default=None,
              help="Write the runs here before deleting them [env INTERLOCK_ARCHIVE_DIR; default: no archive]")
@click.pass_obj
def purge(settings, finished_before, workflow, dry_run, archive_dir):
    """Delete finished runs with their history, tasks and timers, whatever their retention.

    A run whose parent is active, or that still has child runs, is kept (children go first)."""
    cutoff = time_arg(finished_before, "--finished-before")
    rt = open_runtime(settings.replace(archive_dir=archive_dir))
    try:
        if cutoff > rt.clock.now():
            raise click.BadParameter(f"{finished_before} is in the future; runs finish in the past",
                                     param_hint="--finished-before")
        which = f"finished before {iso(cutoff)}" + (f" of workflow {workflow}" if workflow else "")
        if dry_run:
            click.echo(f"would delete {retention.count_purge(rt, cutoff, workflow)} run(s) {which}")
            return
        deleted = retention.purge(rt, cutoff, workflow)
        archived = f", archived in {rt.settings.archive_dir}" if rt.settings.archive_dir and deleted else ""
        click.echo(f"deleted {deleted} run(s) {which}{archived}")
    finally:
        rt.close()


@click.group()
def archive():
    """Runs deleted by retention or purge, as the archive kept them (INTERLOCK_ARCHIVE_DIR)."""


@archive.command("read")
@click.argument("run_id")
@click.option("--dir", "directory", envvar="INTERLOCK_ARCHIVE_DIR", default=None,
              help="The archive's directory [env INTERLOCK_ARCHIVE_DIR]")
@click.option("--json", "as_json", is_flag=True)
def archive_read(run_id, directory, as_json):
    """Show an archived run and its whole history (as `interlock show` did before it was deleted)."""
    if not directory:
        raise click.UsageError("no archive directory: give --dir or set INTERLOCK_ARCHIVE_DIR")
    if not Path(directory).is_dir():
        raise click.BadParameter(f"{directory} is not a directory", param_hint="--dir")
    record = Archive(directory).find(run_id)
    run, history = from_record(record)
    if as_json:
        click.echo(json.dumps({"run": run.to_dict(), "history": [h.to_dict() for h in history],
                               "archived_at": iso(record["archived_at"])}, indent=2))
        return
    _print_run(run)
    click.echo(f"archived {iso(record['archived_at'])}")
    for entry in history:
        click.echo(format_entry(entry))
