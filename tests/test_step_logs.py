"""What a step logs through Python's logging is kept in its attempt's history entry, bounded,
without the records of other threads or of the engine itself."""

import logging
import threading

import pytest

from engine import step_logs
from engine.config import Settings
from engine.db import Database
from engine.runtime import Interlock
from tests.conftest import wait_until


@pytest.fixture
def rt(tmp_path):
    url = f"sqlite:///{tmp_path / 'logs.db'}"
    Database(url).upgrade()
    runtime = Interlock(Settings(database_url=url, broker_url="memory://", workflows="tests.web_workflows",
                                 queue="interlock_test", poll_interval=0.05))
    yield runtime
    runtime.close()


def logs_of(rt, run_id, kind):
    return [[r["message"] for r in (h.detail or {}).get("logs") or []]
            for h in rt.history(run_id) if h.kind == kind]


def test_each_attempt_keeps_the_lines_its_step_logged(rt):
    with rt.worker(2):
        ok = rt.start("test_settlement", {"customer": "ada", "card": "4242", "items": ["A", "B"]})
        bad = rt.start("test_settlement", {"customer": "bob", "card": "5555", "items": ["C"], "refuse": "x" * 40})
        wait_until(lambda: rt.get(ok.id).status == "succeeded" and rt.get(bad.id).status == "failed",
                   timeout=30, message="both runs to end")
    assert logs_of(rt, ok.id, "step_succeeded") == [["pricing 2 items for ada"], ["charging card 4242, attempt 1"]]
    assert logs_of(rt, bad.id, "step_failed") == [["charging card 5555, attempt 1"], ["charging card 5555, attempt 2"]]
    [entry] = [h for h in rt.history(ok.id) if h.kind == "step_succeeded"][:1]
    record = entry.detail["logs"][0]
    assert record["level"] == "WARNING" and record["logger"] == "tests.web_workflows" and record["at"] > 0


def test_only_this_threads_records_and_not_the_engines_are_captured():
    other = threading.Thread(target=lambda: logging.getLogger("elsewhere").warning("not mine"))
    with step_logs.capture() as captured:
        logging.getLogger("mine").warning("mine %s", 1)
        logging.getLogger("engine.steps").warning("the engine's own")
        other.start()
        other.join()
    logging.getLogger("mine").warning("after the attempt")
    assert [r["message"] for r in captured.result()] == ["mine 1"]


def test_captured_records_are_bounded():
    with step_logs.capture() as captured:
        for i in range(step_logs.MAX_RECORDS + 7):
            logging.getLogger("chatty").warning("line %d %s", i, "x" * (step_logs.MAX_MESSAGE + 50))
    kept = captured.result()
    assert len(kept) <= step_logs.MAX_RECORDS + 1
    assert all(len(r["message"]) <= step_logs.MAX_MESSAGE + 1 for r in kept)
    assert sum(len(r["message"]) for r in kept[:-1]) <= step_logs.MAX_CHARS
    assert kept[-1]["message"].endswith(f"(at most {step_logs.MAX_RECORDS} are kept)")
    assert step_logs.Captured().result() is None
