"""The README's five-minute tour, run as written, in a fresh directory, the way a new user would.

Every code block of the `## A five-minute tour` section runs, in order:

- the Python block whose first line is `# myflows/shipping.py` is saved as that file;
- the first terminal runs the shell blocks up to the one that starts `interlock dev`, and keeps
  running it (on a free port: INTERLOCK_PORT=0, the one variable the test adds);
- the second terminal runs the remaining shell blocks, and the other Python blocks, one Python
  session typed into `.venv/bin/python` at their place, as one shell session (variables set by a
  block stay set), every command stopping the session if it fails.

The directory has a `.venv` link to the checkout's, so `.venv/bin/interlock` runs as written.
Then it checks what the user would look at: the URLs the banner prints answer, the shipment ends
`delivered`, history and diagram show it, the order of the session snippet is stored with its run,
and the bound model's row follows its run to `delivered`.
"""

import json
import os
import re
import signal
import sqlite3
import subprocess
from pathlib import Path

import pytest
import requests

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SHIPPING = "# myflows/shipping.py"


def tour_blocks() -> list[tuple[str, str]]:
    """(language, text) of each fenced block in the tour section."""
    text = README.read_text()
    section = text[text.index("## A five-minute tour"):]
    section = section[:section.index("\n## ")]
    return re.findall(r"^```(\w+)\n(.*?)^```$", section, re.M | re.S)


def starts_dev(block: str) -> bool:
    return re.search(r"^\S*interlock dev\b", block, re.M) is not None


def terminals(blocks):
    """The shipping module, the first terminal's script, the second terminal's script."""
    [module] = [text for lang, text in blocks if lang == "python" and text.startswith(SHIPPING)]
    [dev_at] = [i for i, (lang, text) in enumerate(blocks) if lang == "sh" and starts_dev(text)]
    first = [text for lang, text in blocks[:dev_at + 1] if lang == "sh"]
    second, python = [], []
    for lang, text in blocks[dev_at + 1:] + [("end", "")]:
        if lang != "python" and python:  # a Python session ends where the shell resumes
            second.append(".venv/bin/python - <<'PYTHON'\n" + "".join(python) + "PYTHON\n")
            python = []
        if lang == "python":
            python.append(text)
        elif lang == "sh":
            second.append(text)
    return module, first, second


def shell(blocks) -> list[str]:
    return ["bash", "-euo", "pipefail", "-x", "-c", "\n".join(blocks)]


@pytest.fixture
def directory(tmp_path):
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PS4"] = "+ $ "  # `bash -x` shows each command before its output
    return tmp_path, env


def interlock_json(directory, env, *args):
    result = subprocess.run([".venv/bin/interlock", *args, "--json"], cwd=directory, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_readme_tour_works_as_written(directory):
    directory, env = directory
    module, first, second = terminals(tour_blocks())
    path = directory / SHIPPING.removeprefix("# ")
    path.parent.mkdir()
    path.write_text(module)

    out, err = directory / "terminal-1.out", directory / "terminal-1.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        dev = subprocess.Popen(shell(first), cwd=directory, env={**env, "INTERLOCK_PORT": "0"},
                               stdout=stdout, stderr=stderr, start_new_session=True)
    try:
        def banner():
            assert dev.poll() is None, f"the first terminal ended ({dev.returncode}): {err.read_text()}"
            found = dict(re.findall(r"^(web pages|API):\s+(\S+)", out.read_text(), re.M))
            return found if len(found) == 2 else None

        urls = wait_until(banner, timeout=40, interval=0.05, message="interlock dev's banner")
        assert "succeeded in state delivered" in out.read_text()  # `interlock run cargo` went first
        assert "shipment v1" in out.read_text() and "cargo v1" in out.read_text()
        page = requests.get(urls["web pages"], timeout=10)
        assert page.status_code == 200 and "shipment" in page.text
        index = requests.get(urls["API"], timeout=10)
        assert index.status_code == 200 and index.json()["openapi"] == "/api/openapi.json"

        tour = subprocess.run(shell(second), cwd=directory, env=env, capture_output=True, text=True, timeout=60)
        assert tour.returncode == 0, f"{tour.stdout}\n{tour.stderr}"
        assert "Traceback" not in tour.stderr, tour.stderr
        assert "stateDiagram-v2" in tour.stdout and ":::active" in tour.stdout  # the diagram, highlighted
        assert "2 transition depart booked in_transit" in tour.stdout  # the Python session's history

        [shipment] = interlock_json(directory, env, "runs", "--workflow", "shipment")["runs"]
        def ended():
            shown = interlock_json(directory, env, "show", shipment["id"])
            return shown if shown["run"]["status"] not in ("running", "waiting") else None

        shown = wait_until(ended, timeout=30, interval=0.2, message="the shipment's run to end")
        assert (shown["run"]["status"], shown["run"]["state"]) == ("succeeded", "delivered")
        assert shown["run"]["business_key"] == "MSCU1234565"
        history = shown["history"]
        assert [(h["event"], h["source"], h["target"]) for h in history if h["kind"] == "transition"] == [
            ("depart", "booked", "in_transit"), ("arrive", "in_transit", "delivered")]
        assert [h["kind"] for h in history].count("step_rechecked") == 2
        text = subprocess.run([".venv/bin/interlock", "show", shipment["id"]], cwd=directory, env=env,
                              capture_output=True, text=True, timeout=30).stdout
        assert "depart booked → in_transit" in text and "arrive in_transit → delivered" in text

        def order_completed():
            runs = interlock_json(directory, env, "runs", "--workflow", "orders", "--key", "A-1001")["runs"]
            return runs and runs[0]["status"] == "succeeded"

        wait_until(order_completed, timeout=30, interval=0.2, message="the order to complete")
        with sqlite3.connect(directory / "interlock.db") as db:
            assert db.execute("SELECT id, customer FROM orders").fetchall() == [("A-1001", "ada@example.com")]

        # The bound model: its row's status is its run's state, the worker's changes too.
        assert "review ['approve', 'reject']" in tour.stdout and "\nshipping\n" in tour.stdout

        def bound_order_delivered():
            with sqlite3.connect(directory / "interlock.db") as db:
                return db.execute("SELECT id, status FROM bound_orders").fetchall() == [("B-7", "delivered")]

        wait_until(bound_order_delivered, timeout=30, interval=0.2, message="the bound order's row to say delivered")
        [bound] = interlock_json(directory, env, "runs", "--workflow", "bound_orders")["runs"]
        assert (bound["status"], bound["state"], bound["business_key"]) == ("succeeded", "delivered", "B-7")
    finally:
        os.killpg(dev.pid, signal.SIGINT)  # Ctrl-C in the first terminal
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
    log = err.read_text()
    assert "Traceback" not in log and "alembic" not in log, log
