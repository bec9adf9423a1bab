"""The run commands of ``interlock``: start, drive, send, cancel, retry, list and show runs."""

import json
import sys
from datetime import datetime

import click

from . import search as search_fields
from .cli_common import json_arg, open_runtime, time_arg
from .runner import follow
from .timeparse import duration, iso

CHILDREN_PAGE = 500


def format_entry(entry) -> str:
    at = datetime.fromtimestamp(entry.at).strftime("%H:%M:%S.%f")[:-3]
    detail = entry.detail or {}
    if entry.kind in ("transition", "started"):
        move = f"{entry.source or '∅'} → {entry.target}" if entry.kind == "transition" else f"→ {entry.target}"
        text = f"{entry.event or ''} {move}".strip()
    elif entry.kind.startswith("step_"):
        text = f"{detail.get('step')} attempt {detail.get('attempt')}"
        if entry.kind == "step_failed":
            text += f": {detail.get('error')}"
            text += " (final)" if detail.get("final") else f" (retry in {detail.get('retry_in')}s)"
        elif entry.kind == "step_rechecked":
            text += f": not yet, again in {detail.get('recheck_in')}s"
        elif entry.kind == "step_succeeded":
            text += f" → {entry.event}"
    elif entry.kind == "timer_fired":
        text = f"{detail.get('timer')} ({detail.get('kind')})"
    elif entry.kind == "child_started":
        text = (f"{detail.get('name')}: run {detail.get('child')} of "
                f"{detail.get('workflow')} v{detail.get('version')}")
    elif entry.kind == "child_ended":
        text = f"run {detail.get('child')} {detail.get('status')} in {detail.get('state')}"
    else:
        text = ", ".join(f"{k}={v}" for k, v in detail.items() if v is not None and k != "traceback")
        if entry.event:
            text = f"{entry.event} {text}"
    cause = f"  [{entry.cause}]" if entry.cause else ""
    return f"#{entry.seq:<4} {at}  {entry.kind:<15} {text}{cause}"


def _print_run(run):
    click.echo(f"run {run.id}  {run.workflow} v{run.version}  {run.status}  state={run.state}"
               f"  key={run.business_key or '-'}")
    click.echo(f"created {iso(run.created_at)}  updated {iso(run.updated_at)}"
               f"  finished {iso(run.finished_at) or '-'}")
    click.echo(f"data {json.dumps(run.data, sort_keys=True)}")


def _run_duration(run, now) -> float:
    return max(0.0, (run.finished_at or now) - run.created_at)


def _all_children(rt, run_id) -> list:
    found, cursor = [], None
    while True:
        page = rt.children(run_id, cursor=cursor, limit=CHILDREN_PAGE)
        found += page.runs
        if page.next is None:
            return found
        cursor = page.next


def _print_family(run, parent, children, now):
    if parent is not None:
        click.echo(f"parent {parent.id}  {parent.workflow} v{parent.version}  {parent.status}"
                   f"  state={parent.state}  (started this run in {run.parent_state})")
    if not children:
        return
    click.echo(f"children ({len(children)}, newest first):")
    for c in children:
        click.echo(f"  {c.id}  {c.workflow + ' v' + str(c.version):<18} {c.state:<14} {c.status:<10}"
                   f" {duration(_run_duration(c, now)):>8}  from {c.parent_state}")


@click.command("run")
@click.argument("workflow")
@click.option("--data", help="Run data as a JSON object (default: the workflow's demo data)")
@click.option("--version", type=int, default=None)
@click.option("--key", "business_key", default=None, help="Business key")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds")
@click.pass_obj
def run_command(settings, workflow, data, version, business_key, timeout):
    """Start a run and drive it to its end in this process, printing each transition."""
    rt = open_runtime(settings, upgrade_sqlite=True)
    cls = rt.registry.get(workflow, version)
    data = json_arg(data) if data is not None else dict(cls.demo_data)
    with rt.worker():
        run = rt.start(workflow, data, version=version, business_key=business_key)
        click.echo(f"run {run.id} ({cls.workflow_name} v{cls.version})")
        final = follow(rt, run.id, on_entry=lambda entry, child: click.echo(_tree_line(entry, child)),
                       events=cls.demo_events, timeout=timeout, children=True)
    click.echo(f"run {final.id} {final.status} in state {final.state}")
    rt.close()
    sys.exit(0 if final.status == "succeeded" else 1)


def _tree_line(entry, child) -> str:
    """A history entry of the run, or (indented, named) of one of the runs it started."""
    if child is None:
        return format_entry(entry)
    return f"    {child.workflow} {child.business_key or child.id[:12]}: {format_entry(entry).strip()}"


@click.command()
@click.argument("workflow")
@click.option("--data", help="Run data as a JSON object")
@click.option("--key", "business_key", default=None, help="Business key (a container number, an order id)")
@click.option("--idempotency-key", default=None, help="A repeat with this key returns the first run")
@click.option("--version", type=int, default=None)
@click.option("--priority", type=click.IntRange(-1000, 1000), default=0, show_default=True,
              help="Higher first where its steps wait for a slot of a limit")
@click.option("--wait", is_flag=True, help="Wait until the run ends (a worker must be running)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--print-id", is_flag=True, help="Print only the run's id: RUN_ID=$(interlock start … --print-id)")
@click.pass_obj
def start(settings, workflow, data, business_key, idempotency_key, version, priority, wait, as_json, print_id):
    """Start a run (executed by whichever worker is running)."""
    rt = open_runtime(settings)
    run = rt.start(workflow, json_arg(data), business_key=business_key,
                   idempotency_key=idempotency_key, version=version, priority=priority)
    if wait:
        run = follow(rt, run.id, fallback_poll=0.1)
    if as_json:
        click.echo(json.dumps(run.to_dict(), indent=2))
    elif print_id:
        click.echo(run.id)
    else:
        click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()
    if wait and run.status != "succeeded":
        sys.exit(1)


@click.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--data", help="Event data as a JSON object")
@click.option("--queue", is_flag=True, help="To a paused run: keep the event and apply it on resume")
@click.pass_obj
def send(settings, run_id, event, data, queue):
    """Send EVENT to run RUN_ID."""
    rt = open_runtime(settings)
    run = rt.send(run_id, event, json_arg(data), cause="cli", queue=queue)
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@click.command()
@click.argument("run_id")
@click.option("--reason", default=None)
@click.pass_obj
def cancel(settings, run_id, reason):
    """Cancel a run: its tasks and timers stop."""
    rt = open_runtime(settings)
    run = rt.cancel(run_id, reason)
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@click.command()
@click.argument("run_id")
@click.pass_obj
def retry(settings, run_id):
    """Run a failed run's failed step again (earlier steps are not repeated)."""
    rt = open_runtime(settings)
    run = rt.retry(run_id)
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@click.group(invoke_without_command=True)
@click.option("--workflow", default=None)
@click.option("--version", type=int, default=None)
@click.option("--status", type=click.Choice(["running", "waiting", "succeeded", "failed", "cancelled"]))
@click.option("--state", default=None)
@click.option("--key", "business_key", default=None)
@click.option("--created-after", default=None, help="ISO 8601 time")
@click.option("--created-before", default=None, help="ISO 8601 time")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", default=None, help="`next` of the previous page")
@click.option("--search", "terms", multiple=True,
              help="A search field: customer=ACME, customer=AC* (a prefix), total>=10, total<100 (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs(ctx, workflow, version, status, state, business_key, created_after, created_before,
         limit, cursor, terms, as_json):
    """List runs, newest first; or act on every run a filter selects (`interlock runs cancel
    --workflow cargo --state in_transit`: see each command's --help)."""
    if ctx.invoked_subcommand is not None:
        return  # a bulk action (engine/cli_batches.py): its own options
    settings = ctx.obj
    rt = open_runtime(settings)
    search = search_terms(terms)
    page = rt.list_runs(search=search or None, workflow=workflow, version=version, status=status, state=state,
                        business_key=business_key, limit=limit, cursor=cursor,
                        created_after=time_arg(created_after, "--created-after"),
                        created_before=time_arg(created_before, "--created-before"))
    if as_json:
        click.echo(json.dumps({"runs": [r.to_dict() for r in page.runs], "next": page.next}, indent=2))
    else:
        for r in page.runs:
            click.echo(f"{r.id}  {r.workflow:<12} v{r.version}  {r.status:<10} {r.state:<14} "
                       f"{r.business_key or '-':<16} {iso(r.created_at)}")
        if not page.runs:
            click.echo("no runs match", err=True)  # stderr: stdout stays one line per run
        if page.next:
            click.echo(f"more: --cursor {page.next}")
    rt.close()


def search_terms(terms) -> dict:
    """``--search`` values (``customer=ACME``, ``total>=10``) as ``list_runs`` takes them."""
    search: dict = {}
    for term in terms:
        parsed, rest = search_fields.parse_terms(term)
        if rest or not parsed:
            raise click.BadParameter(f"{term!r} is not field=value, field>=value, ...", param_hint="--search")
        for name, pairs in parsed.items():
            search.setdefault(name, []).extend(pairs)
    return search


@click.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(settings, run_id, as_json):
    """Show a run, its parent and children, and its whole history."""
    rt = open_runtime(settings)
    run = rt.get(run_id)
    history = rt.history(run_id)
    parent = rt.get(run.parent_id) if run.parent_id is not None else None
    children = _all_children(rt, run.id)
    now = rt.clock.now()
    if as_json:
        click.echo(json.dumps({
            "run": run.to_dict(),
            "parent": parent.to_dict() if parent is not None else None,
            "children": [{**c.to_dict(), "duration_seconds": round(_run_duration(c, now), 3)}
                         for c in children],
            "history": [h.to_dict() for h in history]}, indent=2))
    else:
        _print_run(run)
        _print_family(run, parent, children, now)
        for entry in history:
            click.echo(format_entry(entry))
    rt.close()


COMMANDS = [run_command, start, send, cancel, retry, runs, show]


