"""`interlock runs cancel|retry|send|pause|resume` over a filter, and `interlock batches`
(engine/batches.py): bulk actions, their progress and their refusals."""

import json
import time

import click

from . import batch_work, batches
from .cli_common import json_arg, open_runtime, time_arg
from .cli_runs import runs, search_terms

POLL = 0.2  # seconds between looks at a batch another process works


def _filter_options(fn):
    options = [
        click.option("--workflow", default=None),
        click.option("--version", type=click.IntRange(min=1), default=None),
        click.option("--status", type=click.Choice(batches.STATUSES)),
        click.option("--state", default=None),
        click.option("--key", "business_key", default=None),
        click.option("--created-after", default=None, help="ISO 8601 time"),
        click.option("--created-before", default=None, help="ISO 8601 time"),
        click.option("--search", "terms", multiple=True, help="A search field: customer=ACME, total>=10 (repeatable)"),
        click.option("--run", "run_ids", multiple=True, help="Only this run (repeatable)"),
        click.option("--dry-run", is_flag=True, help="Only count the runs the filter selects: nothing changes"),
        click.option("--wait", is_flag=True, help="Wait until the batch is done, working its chunks here too"),
        click.option("--json", "as_json", is_flag=True),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _bulk(settings, action, options, *, event=None, data=None, reason=None):
    rt = open_runtime(settings)
    try:
        given = {k: options[k] for k in ("workflow", "version", "status", "state", "business_key")}
        given["created_after"] = time_arg(options["created_after"], "--created-after")
        given["created_before"] = time_arg(options["created_before"], "--created-before")
        given["search"] = search_terms(options["terms"]) or None
        given["run_ids"] = list(options["run_ids"]) or None
        # Stored as JSON: (op, value) pairs become lists.
        if given["search"]:
            given["search"] = {k: [list(p) for p in v] for k, v in given["search"].items()}
        out = batches.create(rt, action, given, event=event, data=data, reason=reason, dry_run=options["dry_run"])
        if not options["dry_run"] and options["wait"]:
            out = _wait(rt, out["id"])
        _show(out, options["as_json"])
    finally:
        rt.close()


def _wait(rt, batch_id):
    while True:
        row = batches.get(rt, batch_id)
        if row["status"] in ("done", "cancelled"):
            return row
        if batch_work.work(rt) == 0:
            time.sleep(POLL)  # another process holds its lease, or it just finished


def _show(out, as_json):
    if as_json:
        click.echo(json.dumps(out, indent=2))
    elif out.get("dry_run"):
        click.echo(f"would {out['action']} {out['total_estimate']} run(s)")
        for run_id in out["sample"]:
            click.echo(f"  {run_id}")
    else:
        click.echo(f"batch {out['id']} {out['action']} {out['status']}: {out['done']} done, {out['refused']} refused, "
                   f"{out['skipped']} skipped of ~{out['total_estimate']}")


@runs.command("cancel")
@_filter_options
@click.option("--reason", default=None)
@click.pass_obj
def cancel_runs(settings, reason, **options):
    """Cancel every run the filter selects (a batch the workers carry out)."""
    _bulk(settings, "cancel", options, reason=reason)


@runs.command("retry")
@_filter_options
@click.pass_obj
def retry_runs(settings, **options):
    """Retry every failed run the filter selects."""
    _bulk(settings, "retry", options)


@runs.command("pause")
@_filter_options
@click.option("--reason", default=None)
@click.pass_obj
def pause_runs(settings, reason, **options):
    """Pause every run the filter selects."""
    _bulk(settings, "pause", options, reason=reason)


@runs.command("resume")
@_filter_options
@click.pass_obj
def resume_runs(settings, **options):
    """Resume every paused run the filter selects."""
    _bulk(settings, "resume", options)


@runs.command("send")
@click.argument("event")
@_filter_options
@click.option("--data", help="Event data as a JSON object")
@click.pass_obj
def send_runs(settings, event, data, **options):
    """Send EVENT to every run the filter selects (runs that do not take it now are reported)."""
    _bulk(settings, "send", options, event=event, data=json_arg(data))


@click.group("batches", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def group(ctx, as_json):
    """Bulk actions: list them (newest first), show one, list its refusals, stop one."""
    if ctx.invoked_subcommand is not None:
        return
    rt = open_runtime(ctx.obj)
    page = batches.list_batches(rt)
    rt.close()
    if as_json:
        click.echo(json.dumps(page, indent=2))
        return
    for row in page["batches"]:
        _show(row, False)


@group.command("show")
@click.argument("batch_id")
@click.option("--refusals", is_flag=True, help="Also list the runs that refused, with the error")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show_batch(settings, batch_id, refusals, as_json):
    """A batch's progress."""
    rt = open_runtime(settings)
    row = batches.get(rt, batch_id)
    _show(row, as_json)
    if refusals:
        after = None
        while True:
            page = batches.items(rt, batch_id, outcome="refused", after=after, limit=batches.MAX_PAGE)
            for item in page["items"]:
                click.echo(f"  {item['run_id']}  {item['error']}")
            if page["next"] is None:
                break
            after = page["next"]
    rt.close()


@group.command("stop")
@click.argument("batch_id")
@click.pass_obj
def stop_batch(settings, batch_id):
    """Stop a batch: no further chunk starts."""
    rt = open_runtime(settings)
    _show(batches.cancel(rt, batch_id), False)
    rt.close()
