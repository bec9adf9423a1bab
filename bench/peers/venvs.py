"""Peer virtualenvs, one per peer, created with pip under a cache directory (.bench-venvs/)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
CACHE = ROOT / ".bench-venvs"
PEERS = {
    "dbos": ["dbos"],
    "celery": ["celery[redis]"],
}


class Unavailable(Exception):
    pass


def python_for(name, install=True, timeout=900):
    """The peer venv's python; creates the venv and installs the peer when ``install``."""
    venv = CACHE / name
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    wanted = " ".join(PEERS[name])
    if stamp.exists() and stamp.read_text() == wanted and python.exists():
        return str(python)
    if not install:
        raise Unavailable(f"not installed in {venv.relative_to(ROOT)} (skipped in --quick; a full run installs it)")
    CACHE.mkdir(exist_ok=True)
    base = getattr(sys, "_base_executable", sys.executable)
    steps = [[base, "-m", "venv", "--clear", str(venv)],
             [str(python), "-m", "pip", "install", "-q", "--timeout", "30", "--retries", "1", *PEERS[name]]]
    for argv in steps:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  check=False)
        except subprocess.TimeoutExpired:
            raise Unavailable(f"{' '.join(argv[-1:])}: no answer within {timeout}s") from None
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr or done.stdout).strip().splitlines() if not ln.startswith("WARNING")]
            raise Unavailable(f"{' '.join(argv[2:4])} failed: {lines[-1] if lines else done.returncode}")
    stamp.write_text(wanted)
    return str(python)
