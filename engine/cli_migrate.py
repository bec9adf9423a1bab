"""`interlock migrate`: plans that move runs between versions of a workflow (engine/migration_plans.py),
their dry run, and applying them."""

import json

import click

from . import migration_plans
from .cli_batches import _show as show_batch
from .cli_batches import _wait
from .cli_common import open_runtime, time_arg
from .cli_runs import search_terms
from .moving import OUTCOMES


def _mapping(pairs) -> dict:
    out = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"expected OLD=NEW (state ids), got {pair!r}", param_hint="--map")
        out[old] = new
    return out


@click.group("migrate", invoke_without_command=True)
@click.option("--workflow", default=None, help="Only this workflow's plans")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def group(ctx, workflow, as_json):
    """Move runs to another version of their workflow: plan, look, apply. Lists the plans."""
    if ctx.invoked_subcommand is not None:
        return
    rt = open_runtime(ctx.obj)
    try:
        plans = migration_plans.list_plans(rt, workflow=workflow)
    finally:
        rt.close()
    if as_json:
        click.echo(json.dumps(plans, indent=2))
        return
    for plan in plans:
        counts = ", ".join(f"{plan['counts'][k]} {k}" for k in OUTCOMES)
        click.echo(f"{plan['id']}  {plan['workflow']} v{plan['from_version']} -> v{plan['to_version']}  "
                   f"{plan['status']}  {counts}" + ("  applied" if plan["batch_id"] else ""))


@group.command("plan")
@click.argument("workflow")
@click.option("--from", "from_version", type=click.IntRange(min=1), required=True)
@click.option("--to", "to_version", type=click.IntRange(min=1), required=True)
@click.option("--map", "pairs", multiple=True, help="A state renamed or split: OLD=NEW (repeatable)")
@click.option("--status", type=click.Choice(("running", "waiting", "failed")))
@click.option("--state", default=None)
@click.option("--key", "business_key", default=None)
@click.option("--created-after", default=None, help="ISO 8601 time")
@click.option("--created-before", default=None, help="ISO 8601 time")
@click.option("--search", "terms", multiple=True, help="A search field: customer=ACME, total>=10 (repeatable)")
@click.option("--run", "run_ids", multiple=True, help="Only this run (repeatable)")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def plan_command(settings, workflow, from_version, to_version, pairs, terms, run_ids, as_json, **given):
    """Judge each active run of WORKFLOW v--from against v--to: clean, mapped or impossible, and why."""
    given["created_after"] = time_arg(given["created_after"], "--created-after")
    given["created_before"] = time_arg(given["created_before"], "--created-before")
    search = search_terms(terms)
    if search:
        given["search"] = {k: [list(p) for p in v] for k, v in search.items()}
    if run_ids:
        given["run_ids"] = list(run_ids)
    rt = open_runtime(settings)
    try:
        plan = migration_plans.create(rt, workflow, from_version, to_version, mapping=_mapping(pairs),
                                      filter={k: v for k, v in given.items() if v is not None})
    finally:
        rt.close()
    _show_plan(plan, as_json)


def _show_plan(plan, as_json):
    if as_json:
        click.echo(json.dumps(plan, indent=2))
        return
    mapping = ", ".join(f"{k}={v}" for k, v in plan["mapping"].items())
    click.echo(f"plan {plan['id']}: {plan['workflow']} v{plan['from_version']} -> v{plan['to_version']}"
               + (f" with {mapping}" if mapping else "") + f" ({plan['status']})")
    click.echo("  " + ", ".join(f"{plan['counts'][k]} {k}" for k in OUTCOMES))
    for shape in plan["shapes"]:
        click.echo(f"\n  {shape['outcome']}: {shape['runs']} run(s)"
                   + (f" in {', '.join(shape['configuration'])}" if shape["configuration"] else ""))
        if shape["reason"]:
            click.echo(f"    why: {shape['reason']}")
        for change in shape["changes"]:
            click.echo(f"    - {change}")
    for outcome in OUTCOMES:
        if plan["samples"][outcome]:
            click.echo(f"\n  {outcome}, for example: {' '.join(plan['samples'][outcome])}")
    if plan.get("batch"):
        click.echo("")
        show_batch(plan["batch"], False)
    elif plan["counts"]["clean"] + plan["counts"]["mapped"]:
        click.echo(f"\n  dry run: interlock migrate apply {plan['id']} --dry-run")


@group.command("show")
@click.argument("plan_id")
@click.option("--runs", "outcome", type=click.Choice(OUTCOMES), default=None,
              help="Also list every run judged so, with the reason")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show_command(settings, plan_id, outcome, as_json):
    """A plan: its verdicts, how many runs each, and how far applying it went."""
    rt = open_runtime(settings)
    try:
        _show_plan(migration_plans.get(rt, plan_id), as_json)
        after = None
        while outcome is not None:
            page = migration_plans.plan_runs(rt, plan_id, outcome=outcome, after=after, limit=500)
            for row in page["runs"]:
                click.echo(f"  {row['run_id']}  {row['reason'] or '; '.join(row['changes'])}")
            after = page["next"]
            if after is None:
                break
    finally:
        rt.close()


@group.command("apply")
@click.argument("plan_id")
@click.option("--dry-run", is_flag=True, help="Say what applying would do to each run now: nothing changes")
@click.option("--wait", is_flag=True, help="Wait until every run is moved, moving them here too")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def apply_command(settings, plan_id, dry_run, wait, as_json):
    """Move the plan's runs (a batch the workers carry out); runs changed since the plan are refused."""
    rt = open_runtime(settings)
    try:
        if dry_run:
            out = migration_plans.dry_run(rt, plan_id)
            if as_json:
                click.echo(json.dumps(out, indent=2))
                return
            click.echo(f"would move {out['counts']['applied']} run(s), refuse {out['counts']['refused']} "
                       f"(changed since the plan), skip {out['counts']['skipped']}")
            for outcome in ("refused", "skipped"):
                for sample in out["samples"][outcome]:
                    click.echo(f"  {outcome} {sample['run_id']}: {sample['reason']}")
            return
        batch = migration_plans.apply(rt, plan_id)
        if wait:
            batch = _wait(rt, batch["id"])
        show_batch(batch, as_json)
    finally:
        rt.close()
