"""Starting `interlock` commands as real processes for tests."""

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def clean_env() -> dict:
    """This environment without INTERLOCK_* settings: the defaults apply."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLOCK_")}
    env["PYTHONPATH"] = str(ROOT)
    return env


def env_for(settings, **extra) -> dict:
    env = clean_env()
    env.update({
        "INTERLOCK_DATABASE_URL": settings.database_url,
        "INTERLOCK_BROKER_URL": settings.broker_url,
        "INTERLOCK_WORKFLOWS": settings.workflows,
        "INTERLOCK_QUEUE": settings.queue,
        "INTERLOCK_BROKER_PRIORITIES": str(settings.broker_priorities),
        "INTERLOCK_LEASE_SECONDS": str(settings.lease_seconds),
        "INTERLOCK_RESEND_AFTER": str(settings.resend_after),
        "INTERLOCK_POLL_INTERVAL": str(settings.poll_interval),
        **extra,
    })
    return env


def interlock(*args, env, cwd=ROOT, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


class Process:
    """A long-running `interlock` command (worker, dev) stopped at the end of the test."""

    def __init__(self, *args, env, cwd=ROOT, log_path=None, module="engine.cli"):
        """``module``: the entry module run with ``python -m`` (a test's variant of the CLI)."""
        self.log_path = log_path
        self._log = open(log_path, "wb") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", module, *args], env=env, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.log_path:
            self._log.close()

    def output(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""
