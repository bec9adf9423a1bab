"""The `interlock` command as a new user meets it, run as a real process from a project directory.

Workflow modules are found in the current directory by every command; one that fails to
import is a one-line error; an empty listing says so; `interlock dev` (and `make dev`) start
quietly on the port asked for and print two URLs that answer.
"""

import json
import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"

PARCELS = '''
from engine import State, Workflow


class Parcel(Workflow):
    name, version = "parcel", 1

    packed = State(initial=True)
    handed_over = State(final=True)

    hand_over = packed.to(handed_over)
'''

BROKEN = {
    "a missing module": (None, "ModuleNotFoundError: No module named 'parcels'", "'parcels'"),
    "a missing import inside it": ("import carrier_sdk\n", "ModuleNotFoundError: No module named 'carrier_sdk'",
                                   "'parcels.flows'"),
    "an exception inside it": ("TABLE = {}\nRATE = TABLE['eu']\n", "KeyError: 'eu'", "'parcels.flows'"),
    "a DefinitionError": (PARCELS.replace('name, version = "parcel", 1', 'name = "parcel"'),
                          "DefinitionError", "'parcels.flows'"),
}


def environment(tmp_path, **variables) -> dict:
    """The user's shell: the checkout's .venv/bin first, no INTERLOCK_* but those given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["INTERLOCK_DATABASE_URL"] = f"sqlite:///{tmp_path / 'interlock.db'}"
    env.update(variables)
    return env


def interlock(tmp_path, *args, **variables) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "interlock"), *args], cwd=tmp_path, env=environment(tmp_path, **variables),
                          capture_output=True, text=True, timeout=60)


def ok(result) -> str:
    assert result.returncode == 0, (result.args, result.returncode, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def project(tmp_path):
    """A directory holding the user's package `parcels` (not installed anywhere)."""
    (tmp_path / "parcels").mkdir()
    (tmp_path / "parcels" / "flows.py").write_text(PARCELS)
    return tmp_path


def test_every_command_finds_workflow_modules_in_the_current_directory(project):
    mine = {"INTERLOCK_WORKFLOWS": "parcels"}
    assert "parcel v1" in ok(interlock(project, "workflows", **mine))
    assert "stateDiagram" in ok(interlock(project, "diagram", "parcel", **mine))
    ok(interlock(project, "db", "upgrade"))
    run_id = ok(interlock(project, "start", "parcel", "--print-id", **mine)).strip()
    assert ok(interlock(project, "send", run_id, "hand_over", **mine)).split() == [run_id, "succeeded", "handed_over"]
    assert "handed_over" in ok(interlock(project, "diagram", "parcel", "--run", run_id, **mine))
    listed = json.loads(ok(interlock(project, "runs", "--workflow", "parcel", "--json", **mine)))
    assert [r["id"] for r in listed["runs"]] == [run_id]


def assert_one_line_error(tmp_path, command, module_text, error, named):
    if module_text is not None:
        (tmp_path / "parcels").mkdir()
        (tmp_path / "parcels" / "flows.py").write_text(module_text)
    if command[0] in ("start", "worker"):
        ok(interlock(tmp_path, "db", "upgrade"))  # else it stops at the schema first
    result = interlock(tmp_path, *command, INTERLOCK_WORKFLOWS="parcels")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    [line] = result.stderr.splitlines()
    assert f"cannot import workflow module {named}" in line and error in line, line
    if module_text is not None and error != "ModuleNotFoundError: No module named 'parcels'":
        assert str(tmp_path / "parcels" / "flows.py") in line  # where it failed


@pytest.mark.parametrize("module_text, error, named", BROKEN.values(), ids=BROKEN.keys())
def test_a_workflow_module_that_fails_to_import_is_a_one_line_error(tmp_path, module_text, error, named):
    assert_one_line_error(tmp_path, ["diagram", "parcel"], module_text, error, named)


@pytest.mark.parametrize("command", [["workflows"], ["start", "parcel"], ["run", "parcel"], ["worker"]])
def test_every_command_reports_a_failed_import_the_same_way(tmp_path, command):
    assert_one_line_error(tmp_path, command, *BROKEN["an exception inside it"])


def test_runs_says_when_nothing_matches_and_json_keeps_its_shape(tmp_path):
    ok(interlock(tmp_path, "db", "upgrade"))
    empty = interlock(tmp_path, "runs", "--workflow", "cargo")
    assert ok(empty) == "" and empty.stderr.strip() == "no runs match"
    assert json.loads(ok(interlock(tmp_path, "runs", "--json"))) == {"runs": [], "next": None}
    run_id = ok(interlock(tmp_path, "start", "cargo", "--print-id", "--data", '{"container": "C1"}')).strip()
    found = interlock(tmp_path, "runs", "--workflow", "cargo")
    assert run_id in ok(found) and found.stderr == ""
    assert interlock(tmp_path, "runs", "--status", "failed").stderr.strip() == "no runs match"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def started(args, cwd, env, out: Path, err: Path):
    """A long-running command in its own process group, stopped with Ctrl-C (SIGINT) at the end."""
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def banner_urls(proc, out: Path, err: Path) -> dict:
    """{"web pages": url, "API": url} from the start-up banner, once it is printed."""
    def printed():
        assert proc.poll() is None, f"exited with {proc.returncode}: {err.read_text()}"
        lines = [line.split(":", 1) for line in out.read_text().splitlines() if ": http" in line]
        return {name.strip(): rest.split()[0] for name, rest in lines} if len(lines) >= 2 else None

    return wait_until(printed, timeout=30, interval=0.05, message="the start-up banner")


def assert_both_urls_answer(urls: dict, port: int):
    assert urls["web pages"] == f"http://127.0.0.1:{port}/"
    assert urls["API"] == f"http://127.0.0.1:{port}/api"
    page = requests.get(urls["web pages"], timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    index = requests.get(urls["API"], timeout=10)
    assert index.status_code == 200, index.text[:300]
    document = requests.get(urls["API"].removesuffix("/api") + index.json()["openapi"], timeout=10)
    assert document.status_code == 200 and document.json()["openapi"].startswith("3.1")


def test_dev_listens_on_interlock_port_starts_quietly_and_prints_urls_that_answer(tmp_path):
    port = free_port()
    env = environment(tmp_path, INTERLOCK_PORT=str(port))
    out, err = tmp_path / "dev.out", tmp_path / "dev.err"
    with started([str(BIN / "interlock"), "dev"], tmp_path, env, out, err) as proc:
        assert_both_urls_answer(banner_urls(proc, out, err), port)
    log = err.read_text()
    assert "alembic" not in log and "Traceback" not in log, log
    assert "migrated from empty to" in log  # one line instead of alembic's dozen


def test_make_dev_takes_the_port_from_make(tmp_path):
    port = free_port()
    stamp = ROOT / ".venv" / ".installed"
    # -o: the checkout's .venv counts as installed (make would rebuild it if pyproject.toml is newer).
    args = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-o", str(stamp),
            f"VENV={ROOT / '.venv'}", "dev", f"PORT={port}"]
    out, err = tmp_path / "make.out", tmp_path / "make.err"
    with started(args, tmp_path, environment(tmp_path), out, err) as proc:
        assert_both_urls_answer(banner_urls(proc, out, err), port)
