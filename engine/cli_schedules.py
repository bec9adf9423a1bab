"""``interlock schedules``: list, show, create, pause, resume, trigger and delete schedules."""

import json

import click

from . import schedules
from .cli_common import json_arg, open_runtime
from .schedule_times import CATCHUP, OVERLAP, local
from .timeparse import iso

NEXT_TIMES = 5


def _when(row) -> str:
    return row["cron"] if row["cron"] is not None else f"every {row['every']:g}s"


def _json_row(rt, row) -> dict:
    out = {**row, **{k: iso(row[k]) for k in ("next_fire_at", "last_fire_at", "created_at", "updated_at",
                                               "buffered_at")}}
    out["next_fire_times"] = [] if row["status"] == "paused" else \
        [iso(t) for t in schedules.spec_of(row).next_times(rt.clock.now(), NEXT_TIMES)]
    return out


def _with_runtime(settings, work):
    rt = open_runtime(settings)
    try:
        return work(rt)
    finally:
        rt.close()


@click.group("schedules")
def group():
    """Schedules: start runs on a cron expression or an interval."""


@group.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def list_command(settings, as_json):
    """List the schedules with their next fire time."""
    def work(rt):
        rows = schedules.list_all(rt)
        if as_json:
            click.echo(json.dumps([_json_row(rt, row) for row in rows], indent=2))
            return
        if not rows:
            click.echo("no schedules")
        for row in rows:
            nxt = local(row["next_fire_at"], row["timezone"]) if row["status"] == "active" else "-"
            click.echo(f"{row['name']}  {row['workflow']}  {_when(row)} ({row['timezone']})  {row['status']}"
                       f"  next {nxt}  overlap={row['overlap']} catchup={row['catchup']}  [{row['origin']}]")
    _with_runtime(settings, work)


@group.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(settings, name, as_json):
    """A schedule, its next fire times and its latest ticks with their runs."""
    def work(rt):
        row, ticks = schedules.get(rt, name), schedules.ticks(rt, name)
        if as_json:
            out = _json_row(rt, row)
            out["ticks"] = [{**t, "fire_time": iso(t["fire_time"]), "created_at": iso(t["created_at"]),
                             "started_at": iso(t["started_at"])} for t in ticks]
            click.echo(json.dumps(out, indent=2))
            return
        click.echo(f"schedule {row['name']}  {row['workflow']}  {_when(row)} ({row['timezone']})  {row['status']}")
        click.echo(f"overlap {row['overlap']}  catchup {row['catchup']} within {row['catchup_window']:g}s"
                   f"  missed {row['missed']}  data {json.dumps(row['data'], sort_keys=True)}")
        for t in _json_row(rt, row)["next_fire_times"]:
            click.echo(f"next {t}")
        for t in ticks:
            click.echo(f"tick {iso(t['fire_time'])}  {t['cause']:<8} {t['status']:<8} "
                       f"run {t['run_id'] or '-'} {t['run_status'] or ''}".rstrip())
    _with_runtime(settings, work)


@group.command("create")
@click.argument("name")
@click.option("--workflow", required=True)
@click.option("--cron", default=None, help="Five fields: minute hour day-of-month month day-of-week")
@click.option("--every", type=click.FloatRange(min=1), default=None, help="An interval in seconds")
@click.option("--timezone", default="UTC", show_default=True, help="The IANA time zone the cron is read in")
@click.option("--data", default=None, help="Each run's data as a JSON object")
@click.option("--version", type=click.IntRange(min=1), default=None)
@click.option("--overlap", type=click.Choice(OVERLAP), default="skip", show_default=True)
@click.option("--catchup", type=click.Choice(CATCHUP), default="last", show_default=True)
@click.option("--catchup-window", type=click.FloatRange(min=0, min_open=True), default=86400.0, show_default=True,
              help="Seconds")
@click.pass_obj
def create(settings, name, workflow, cron, every, timezone, data, version, overlap, catchup, catchup_window):
    """Create a schedule (kept until deleted; declared ones come from the workflow modules)."""
    data = json_arg(data)

    def work(rt):
        row = schedules.create(rt, name=name, workflow=workflow, cron=cron, every=every, timezone=timezone,
                               data=data, version=version, overlap=overlap, catchup=catchup,
                               catchup_window=catchup_window)
        click.echo(f"{row['name']} created: next {local(row['next_fire_at'], row['timezone'])}")
    _with_runtime(settings, work)


def _simple(name, action, summary, done):
    @group.command(name, help=summary)
    @click.argument("schedule")
    @click.pass_obj
    def command(settings, schedule):
        def work(rt):
            result = action(rt, schedule)
            click.echo(done(schedule, result))
        _with_runtime(settings, work)
    return command


_simple("pause", schedules.pause, "Pause a schedule: no tick fires until it resumes.",
        lambda name, row: f"{name} paused")
_simple("resume", schedules.resume, "Resume a schedule from now on.",
        lambda name, row: f"{name} active: next {local(row['next_fire_at'], row['timezone'])}")
_simple("delete", schedules.remove, "Delete a schedule and its ticks (its runs stay).",
        lambda name, _: f"{name} deleted")
_simple("trigger", schedules.trigger, "Fire a tick now, under the schedule's overlap policy.",
        lambda name, tick: f"{name}: tick {tick['status']}" + (f", run {tick['run_id']}" if tick["run_id"] else "")
        + (f": {tick['error']}" if tick["error"] else ""))
