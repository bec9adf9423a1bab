"""The ``interlock`` command: database, workers, and runs from the shell."""

import json
import logging
import multiprocessing
import os
import signal
import sys
import threading
from dataclasses import asdict
from datetime import datetime

import click

from .config import Settings
from .db import Database
from .errors import InterlockError
from .registry import Registry, WorkflowModuleError
from .runner import follow
from .timeparse import iso, parse_time

log = logging.getLogger("interlock")


def _json_arg(value, what="--data"):
    if value is None:
        return None
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}", param_hint=what) from None


def _time_arg(value, what):
    if value is None:
        return None
    parsed = parse_time(value)
    if parsed is None:
        raise click.BadParameter("expected an ISO 8601 time", param_hint=what)
    return parsed


def _configure_logging(level=logging.INFO):
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.WARNING)
    # Alembic's INFO lines ("Context impl SQLiteImpl.") open every start; _upgrade_sqlite says what changed.
    logging.getLogger("alembic").setLevel(logging.WARNING)


class WorkflowModulesFailed(click.ClickException):
    exit_code = 2


def _current_directory_first():
    """Workflow modules are looked up in the current directory first, for every command."""
    cwd = os.getcwd()
    sys.path[:] = [cwd] + [p for p in sys.path if p not in ("", cwd)]


def _loading_workflows(load):
    _current_directory_first()
    try:
        return load()
    except WorkflowModuleError as exc:
        raise WorkflowModulesFailed(str(exc)) from None


def _registry(settings: Settings) -> Registry:
    return _loading_workflows(lambda: Registry().load_modules(settings.workflow_modules))


def _upgrade_sqlite(settings: Settings):
    db = Database(settings.database_url)
    try:
        before = db.current_revision()
        db.upgrade()
        after = db.current_revision()
    finally:
        db.dispose()
    if after != before:
        log.info("database %s migrated from %s to %s", settings.database_url, before or "empty", after)


def _open(settings: Settings, *, upgrade_sqlite=False):
    from .runtime import Interlock

    if upgrade_sqlite and settings.is_sqlite:
        _upgrade_sqlite(settings)
    return _loading_workflows(lambda: Interlock(settings))


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
    _configure_logging()
    if metrics_port:
        from prometheus_client import start_http_server

        start_http_server(metrics_port, addr=metrics_host)
    rt = _open(Settings(**settings_dict))
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
    _configure_logging()
    rt = _open(settings, upgrade_sqlite=True)
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
    _configure_logging()
    if not is_loopback(host) and not settings.api_tokens:
        log.warning("serving on %s with INTERLOCK_API_TOKENS empty: anyone who can reach it "
                    "can read and change runs", host)
    database = Database(settings.database_url)
    try:
        database.check_schema()  # fail here, not in every worker
    finally:
        database.dispose()
    _registry(settings)  # likewise a workflow module that does not import; the workers inherit sys.path
    GunicornServer(settings, host=host, port=port, workers=workers, threads=threads).run()


# -- runs -----------------------------------------------------------------------------

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
    else:
        text = ", ".join(f"{k}={v}" for k, v in detail.items() if v is not None and k != "traceback")
        if entry.event:
            text = f"{entry.event} {text}"
    cause = f"  [{entry.cause}]" if entry.cause else ""
    return f"#{entry.seq:<4} {at}  {entry.kind:<15} {text}{cause}"


def _print_run(run, history=None):
    click.echo(f"run {run.id}  {run.workflow} v{run.version}  {run.status}  state={run.state}"
               f"  key={run.business_key or '-'}")
    click.echo(f"created {iso(run.created_at)}  updated {iso(run.updated_at)}"
               f"  finished {iso(run.finished_at) or '-'}")
    click.echo(f"data {json.dumps(run.data, sort_keys=True)}")
    for entry in history or []:
        click.echo(format_entry(entry))


@cli.command("run")
@click.argument("workflow")
@click.option("--data", help="Run data as a JSON object (default: the workflow's demo data)")
@click.option("--version", type=int, default=None)
@click.option("--key", "business_key", default=None, help="Business key")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds")
@click.pass_obj
def run_command(settings, workflow, data, version, business_key, timeout):
    """Start a run and drive it to its end in this process, printing each transition."""
    rt = _open(settings, upgrade_sqlite=True)
    cls = rt.registry.get(workflow, version)
    data = _json_arg(data) if data is not None else dict(cls.demo_data)
    with rt.worker():
        run = rt.start(workflow, data, version=version, business_key=business_key)
        click.echo(f"run {run.id} ({cls.workflow_name} v{cls.version})")
        final = follow(rt, run.id, on_entry=lambda e: click.echo(format_entry(e)),
                       events=cls.demo_events, timeout=timeout)
    click.echo(f"run {final.id} {final.status} in state {final.state}")
    rt.close()
    sys.exit(0 if final.status == "succeeded" else 1)


@cli.command()
@click.argument("workflow")
@click.option("--data", help="Run data as a JSON object")
@click.option("--key", "business_key", default=None, help="Business key (a container number, an order id)")
@click.option("--idempotency-key", default=None, help="A repeat with this key returns the first run")
@click.option("--version", type=int, default=None)
@click.option("--wait", is_flag=True, help="Wait until the run ends (a worker must be running)")
@click.option("--json", "as_json", is_flag=True)
@click.option("--print-id", is_flag=True, help="Print only the run's id: RUN_ID=$(interlock start … --print-id)")
@click.pass_obj
def start(settings, workflow, data, business_key, idempotency_key, version, wait, as_json, print_id):
    """Start a run (executed by whichever worker is running)."""
    rt = _open(settings)
    run = rt.start(workflow, _json_arg(data), business_key=business_key,
                   idempotency_key=idempotency_key, version=version)
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


@cli.command()
@click.argument("run_id")
@click.argument("event")
@click.option("--data", help="Event data as a JSON object")
@click.pass_obj
def send(settings, run_id, event, data):
    """Send EVENT to run RUN_ID."""
    rt = _open(settings)
    run = rt.send(run_id, event, _json_arg(data), cause="cli")
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@cli.command()
@click.argument("run_id")
@click.option("--reason", default=None)
@click.pass_obj
def cancel(settings, run_id, reason):
    """Cancel a run: its tasks and timers stop."""
    rt = _open(settings)
    run = rt.cancel(run_id, reason)
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@cli.command()
@click.argument("run_id")
@click.pass_obj
def retry(settings, run_id):
    """Run a failed run's failed step again (earlier steps are not repeated)."""
    rt = _open(settings)
    run = rt.retry(run_id)
    click.echo(f"{run.id} {run.status} {run.state}")
    rt.close()


@cli.command()
@click.option("--workflow", default=None)
@click.option("--version", type=int, default=None)
@click.option("--status", type=click.Choice(["running", "waiting", "succeeded", "failed", "cancelled"]))
@click.option("--state", default=None)
@click.option("--key", "business_key", default=None)
@click.option("--created-after", default=None, help="ISO 8601 time")
@click.option("--created-before", default=None, help="ISO 8601 time")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--cursor", default=None, help="`next` of the previous page")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def runs(settings, workflow, version, status, state, business_key, created_after, created_before,
         limit, cursor, as_json):
    """List runs, newest first."""
    rt = _open(settings)
    page = rt.list_runs(workflow=workflow, version=version, status=status, state=state,
                        business_key=business_key, limit=limit, cursor=cursor,
                        created_after=_time_arg(created_after, "--created-after"),
                        created_before=_time_arg(created_before, "--created-before"))
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


@cli.command()
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def show(settings, run_id, as_json):
    """Show a run and its whole history."""
    rt = _open(settings)
    run = rt.get(run_id)
    history = rt.history(run_id)
    if as_json:
        click.echo(json.dumps({"run": run.to_dict(), "history": [h.to_dict() for h in history]}, indent=2))
    else:
        _print_run(run, history)
    rt.close()


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
def workflows(settings, as_json):
    """List the loaded workflows."""
    from .describe import describe

    registry = _registry(settings)
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

    registry = _registry(settings)
    active = None
    if run_id is not None:
        rt = _open(settings)
        run = rt.get(run_id)
        rt.close()
        workflow, version, active = run.workflow, run.version, run.configuration
    click.echo(render(registry.get(workflow, version), fmt, active))


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
