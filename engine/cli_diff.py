"""`interlock diff NAME FROM TO`: what changed between two loaded versions of a workflow."""

import json

import click

from .cli_common import load_registry
from .errors import InterlockError
from .workflow_diff import diff as compare
from .workflow_diff import parse_renames, render_text


class DiffRefused(click.ClickException):
    exit_code = 2

    def format_message(self):
        return self.message

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


@click.command("diff")
@click.argument("name")
@click.argument("from_version", metavar="FROM", type=click.IntRange(min=1))
@click.argument("to_version", metavar="TO", type=click.IntRange(min=1))
@click.option("--map", "mapping", multiple=True, metavar="OLD=NEW",
              help="State OLD of version FROM is state NEW of version TO (renamed); repeatable")
@click.option("--json", "as_json", is_flag=True, help="The diff as JSON (the API's document)")
@click.pass_obj
def diff(settings, name, from_version, to_version, mapping, as_json):
    """Compare two versions of workflow NAME: states, events, transitions, steps, timers, triggers,
    activities, child runs and maps added, removed or changed. Needs no database."""
    registry = load_registry(settings)
    try:
        d = compare(registry.get(name, from_version), registry.get(name, to_version), parse_renames(mapping, "="))
    except InterlockError as exc:  # an unknown workflow or version, a wrong mapping: one line, exit 2
        raise DiffRefused(str(exc)) from None
    click.echo(json.dumps(d, indent=2) if as_json else render_text(d))
