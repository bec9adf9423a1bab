"""`interlock pause` and `interlock resume`: a run, or every run of a workflow (engine/pauses.py)."""

import click

from .cli_common import open_runtime
from .timeparse import iso


def _target(run_id, workflow, version):
    if (run_id is None) == (workflow is None):
        raise click.UsageError("give a RUN_ID or --workflow NAME (not both)")
    if version is not None and workflow is None:
        raise click.UsageError("--version goes with --workflow")


@click.command()
@click.argument("run_id", required=False)
@click.option("--workflow", default=None, help="Pause every run of this workflow instead")
@click.option("--version", type=click.IntRange(min=1), default=None, help="With --workflow: only this version")
@click.option("--reason", default=None)
@click.pass_obj
def pause(settings, run_id, workflow, version, reason):
    """Pause run RUN_ID (or every run of a workflow): no step starts and no timer fires until resumed."""
    _target(run_id, workflow, version)
    rt = open_runtime(settings)
    try:
        if run_id is not None:
            run = rt.pause(run_id, reason)
            click.echo(f"{run.id} {run.status} {run.state} paused since {iso(run.paused_at)}")
        else:
            paused = rt.pause_workflow(workflow, version, reason)
            which = f"v{paused['version']}" if paused["version"] else "every version"
            click.echo(f"workflow {workflow} ({which}) paused since {iso(paused['paused_at'])}")
    finally:
        rt.close()


@click.command()
@click.argument("run_id", required=False)
@click.option("--workflow", default=None, help="Resume a paused workflow instead")
@click.option("--version", type=click.IntRange(min=1), default=None, help="With --workflow: the pause of this version")
@click.pass_obj
def resume(settings, run_id, workflow, version):
    """Resume run RUN_ID (or a paused workflow): held steps start, due timers fire, queued events apply."""
    _target(run_id, workflow, version)
    rt = open_runtime(settings)
    try:
        if run_id is not None:
            run = rt.resume(run_id)
            click.echo(f"{run.id} {run.status} {run.state}")
        elif rt.resume_workflow(workflow, version):
            click.echo(f"workflow {workflow} resumed")
        else:
            click.echo(f"workflow {workflow} was not paused{f' (v{version})' if version else ''}")
    finally:
        rt.close()


@click.command()
@click.argument("run_id")
@click.argument("priority", type=click.IntRange(-1000, 1000))
@click.pass_obj
def priority(settings, run_id, priority):
    """Set run RUN_ID's PRIORITY (higher first where its steps wait for a slot of a limit)."""
    rt = open_runtime(settings)
    try:
        run = rt.set_priority(run_id, priority)
        click.echo(f"{run.id} {run.status} {run.state} priority {run.priority}")
    finally:
        rt.close()


@click.command("limits")
@click.option("--name", default=None, help="Only this limit (a step's, or a workflow's max_active)")
@click.pass_obj
def limits_command(settings, name):
    """Limits' keys: steps' concurrency (slots, in use, tasks waiting) and workflows' max_active
    (active runs, runs waiting in their initial state), busiest first."""
    from . import admission, limit_views

    rt = open_runtime(settings)
    try:
        for row in limit_views.list_limits(rt, name=name):
            click.echo(f"{row['name']}{' [' + row['key'] + ']' if row['key'] else ''}: {row['in_use']} of "
                       f"{row['slots']} in use, {row['waiting']} waiting")
        for row in admission.list_slots(rt, name=name):
            click.echo(f"workflow {row['name']}{' [' + row['key'] + ']' if row['key'] else ''}: {row['in_use']} of "
                       f"{row['slots']} active, {row['waiting']} waiting to start")
    finally:
        rt.close()


COMMANDS = [pause, resume, priority, limits_command]
