"""The ``interlock`` command: database, workers and servers; the run commands are in ``cli_runs``,
the schedule commands in ``cli_schedules``."""

import json
import logging
import multiprocessing
import signal
import sys
import threading
from dataclasses import asdict

import click

from . import cli_batches, cli_diff, cli_migrate, cli_pauses, cli_retention, cli_runs, cli_schedules, logs, tracing
from .cli_common import load_registry, open_runtime
from .config import Settings
from .db import Database
from .errors import InterlockError

log = logging.getLogger("interlock")


def _configure_logging(level=logging.INFO, fmt="text", traces=True):
    """Log lines (INTERLOCK_LOG_FORMAT: text or json), and traces if OTEL_* ask for them."""
    logs.configure(level, fmt)
    if traces:
        tracing.setup()
    logging.getLogger("pika").setLevel(logging.WARNING)
    # Alembic's INFO lines ("Context impl SQLiteImpl.") open every start; _upgrade_sqlite says what changed.
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _wait_for_signal():
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


@click.group()
@click.option("--database-url", envvar="INTERLOCK_DATABASE_URL", default=None,
              help="SQLAlchemy URL [env INTERLOCK_DATABASE_URL; default sqlite:///interlock.db]")
@click.option("--broker-url", envvar="INTERLOCK_BROKER_URL", default=None,
              help="memory://, redis://… or amqp://… [env INTERLOCK_BROKER_URL; default memory://]")
@click.option("--workflows", envvar="INTERLOCK_WORKFLOWS", default=None,
              help="Comma-separated modules that define workflows [env INTERLOCK_WORKFLOWS; default workflows]")
@click.option("--clock-skew-warn", type=click.FloatRange(min=0), default=None,
              help="Warn when this host's clock differs from the database's by more seconds "
                   "[env INTERLOCK_CLOCK_SKEW_WARN; default 1]")
@click.pass_context
def cli(ctx, database_url, broker_url, workflows, clock_skew_warn):
    """Interlock: durable state-machine workflows."""
    ctx.obj = Settings.from_env(database_url=database_url, broker_url=broker_url, workflows=workflows,
                                clock_skew_warn=clock_skew_warn)


# -- database -------------------------------------------------------------------------

@cli.group()
def db():
    """Database schema (Alembic migrations)."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@click.pass_obj
def db_upgrade(settings, revision):
    """Bring the database schema to the latest migration."""
    database = Database(settings.database_url)
    database.upgrade(revision)
    click.echo(f"database at {database.current_revision()}")
    database.dispose()


@db.command("current")
@click.pass_obj
def db_current(settings):
    """Show the schema revision of the database and of the code."""
    database = Database(settings.database_url)
    click.echo(f"database: {database.current_revision() or 'empty'}\ncode:     {database.head_revision()}")
    database.dispose()


# -- processes ----------------------------------------------------------------------------

def _worker_main(settings_dict, threads, metrics_port=None, metrics_host="127.0.0.1"):
    _configure_logging(fmt=settings_dict["log_format"])
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
    rt = open_runtime(Settings(**settings_dict))
    with rt.worker(threads):
        log.info("worker ready: %d threads on %s", threads, rt.settings.broker_url)
        _wait_for_signal()
    rt.close()


@cli.command()
@click.option("--processes", "-p", default=1, show_default=True, type=click.IntRange(1, 256))
@click.option("--threads", "-t", default=None, type=click.IntRange(1, 1024),
              help="Step threads per process [env INTERLOCK_WORKER_THREADS; default 8]")
@click.option("--metrics-port", type=click.IntRange(1, 65535), default=None, envvar="INTERLOCK_METRICS_PORT",
              help="Serve Prometheus metrics here (process i of --processes on port + i)")
@click.option("--metrics-host", default="127.0.0.1", show_default=True, envvar="INTERLOCK_METRICS_HOST")
@click.pass_obj
def worker(settings, processes, threads, metrics_port, metrics_host):
    """Run steps, timers and the reconciler (until SIGINT/SIGTERM)."""
    threads = threads or settings.worker_threads
    if processes == 1:
        _worker_main(asdict(settings), threads, metrics_port, metrics_host)
        return
    spawn = multiprocessing.get_context("spawn")
    children = [spawn.Process(target=_worker_main, daemon=False,
                              args=(asdict(settings), threads, metrics_port and metrics_port + i, metrics_host))
                for i in range(processes)]
    for child in children:
        child.start()
    signal.signal(signal.SIGTERM, lambda *_: [c.terminate() for c in children])
    try:
        for child in children:
            child.join()
    except KeyboardInterrupt:
        for child in children:
            child.join()


def _port_option(what):
    return click.option("--port", envvar="INTERLOCK_PORT", default=None, type=click.IntRange(0, 65535),
                        help=f"Port {what} listens on; 0: any free one [env INTERLOCK_PORT; default 8000]")


def _url(host, port, path):
    shown = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{shown}]' if ':' in shown else shown}:{port}{path}"


@cli.command()
@click.option("--threads", "-t", default=None, type=click.IntRange(1, 1024))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the API listens on")
@_port_option("the API and the web pages")
@click.pass_obj
def dev(settings, threads, host, port):
    """Everything in one process on the embedded default: migrate SQLite, run steps and timers, serve the API."""
    from api import create_app
    from api.serving import ThreadedServer

    port = settings.port if port is None else port
    _configure_logging(fmt=settings.log_format)
    rt = open_runtime(settings, upgrade_sqlite=True)
    try:
        server = ThreadedServer(create_app(interlock=rt), host, port)
    except OSError as exc:
        rt.close()
        raise click.ClickException(f"cannot serve the API on {host}:{port}: {exc}") from None
    with rt.worker(threads or settings.worker_threads):
        server.start()
        names = ", ".join(f"{c.workflow_name} v{c.version}" for c in rt.registry.all())
        click.echo(f"interlock dev: {settings.database_url}, broker {settings.broker_url}\n"
                   f"workflows: {names}\n"
                   f"web pages: {_url(host, server.port, '/')}\n"
                   f"API:       {_url(host, server.port, '/api')} "
                   f"(OpenAPI: {_url(host, server.port, '/api/openapi.json')})\n"
                   "start runs from another shell with `interlock start NAME`; Ctrl-C stops")
        _wait_for_signal()
        server.stop()
    rt.close()


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on")
@_port_option("the API and the web pages")
@click.option("--workers", "-w", default=1, show_default=True, type=click.IntRange(1, 64),
              help="Processes, each with its own notifier and database pool")
@click.option("--threads", default=1100, show_default=True, type=click.IntRange(1, 20_000),
              help="Threads per process: each open stream or waiting long poll holds one")
@click.pass_obj
def serve(settings, host, port, workers, threads):
    """Serve the REST API and live streams (gunicorn, gthread worker) until SIGINT/SIGTERM."""
    from api.serving import GunicornServer, is_loopback

    port = settings.port if port is None else port
    _configure_logging(fmt=settings.log_format, traces=False)  # traces: in each server process (api/serving.py)
    if not is_loopback(host) and not settings.api_tokens:
        log.warning("serving on %s with INTERLOCK_API_TOKENS empty: anyone who can reach it "
                    "can read and change runs", host)
    database = Database(settings.database_url)
    try:
        database.check_schema()  # fail here, not in every worker
    finally:
        database.dispose()
    load_registry(settings)  # likewise a workflow module that does not import; the workers inherit sys.path
    GunicornServer(settings, host=host, port=port, workers=workers, threads=threads).run()

@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows(settings, as_json):
    """List the loaded workflows."""
    from .describe import describe

    registry = load_registry(settings)
    described = [describe(cls) for cls in registry.all()]
    if as_json:
        click.echo(json.dumps(described, indent=2))
        return
    for d in described:
        click.echo(f"{d['name']} v{d['version']}: {len(d['states'])} states, events "
                   f"{', '.join(d['events'])}; steps {', '.join(s['name'] for s in d['steps']) or '-'}")


@cli.command()
@click.argument("workflow")
@click.option("--version", type=int, default=None)
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid", show_default=True)
@click.option("--run", "run_id", default=None, help="Highlight this run's current state")
@click.pass_obj
def diagram(settings, workflow, version, fmt, run_id):
    """Print a workflow's state diagram (Mermaid, or Graphviz DOT)."""
    from .describe import diagram as render

    registry = load_registry(settings)
    active = None
    if run_id is not None:
        rt = open_runtime(settings)
        run = rt.get(run_id)
        rt.close()
        workflow, version, active = run.workflow, run.version, run.configuration
    click.echo(render(registry.get(workflow, version), fmt, active))


for command in [*cli_runs.COMMANDS, *cli_pauses.COMMANDS]:
    cli.add_command(command)
cli.add_command(cli_schedules.group)
cli_runs.runs.add_command(cli_retention.purge)
cli.add_command(cli_retention.archive)
cli.add_command(cli_batches.group)
cli.add_command(cli_migrate.group)
cli.add_command(cli_diff.diff)


def main():
    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except InterlockError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
