"""Many callers changing one run at once on PostgreSQL: every change is serialized by the run's lock."""

import threading
from collections import Counter

import pytest
from sqlalchemy import func, select

from engine import InvalidTransition, RunNotActive
from engine.models import runs

pytestmark = pytest.mark.postgres

THREADS = 50


def run_together(count, action):
    """Call ``action(i)`` from ``count`` threads released at the same moment; return what each got."""
    barrier = threading.Barrier(count)
    results = [None] * count

    def worker(i):
        barrier.wait(10)
        try:
            results[i] = ("ok", action(i))
        except Exception as exc:
            results[i] = ("error", exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller never returned"
    return results


def test_fifty_callers_sending_events_to_one_run(pg_interlock):
    rt = pg_interlock
    run = rt.start("test_counter", {"count": 0})
    # Most callers add; a few try to close the counter while the adds are still coming in.
    events = ["close" if i % 16 == 15 else "add" for i in range(THREADS)]

    results = run_together(THREADS, lambda i: rt.send(run.id, events[i]))

    accepted = [(events[i], value) for i, (outcome, value) in enumerate(results) if outcome == "ok"]
    rejected = [(events[i], value) for i, (outcome, value) in enumerate(results) if outcome == "error"]
    unexpected = [exc for _, exc in rejected if not isinstance(exc, (RunNotActive, InvalidTransition))]
    assert unexpected == []
    assert len(accepted) + len(rejected) == THREADS

    accepted_events = Counter(event for event, _ in accepted)
    assert accepted_events["close"] == 1
    adds = accepted_events["add"]
    # Every rejection came after the close: the run had ended.
    assert all(isinstance(exc, RunNotActive) and exc.status_value == "succeeded" for _, exc in rejected)

    final = rt.get(run.id)
    assert (final.status, final.state) == ("succeeded", "closed")
    assert final.data == {"count": adds}

    entries = rt.history(run.id)
    assert [h.seq for h in entries] == list(range(1, final.last_seq + 1))
    assert [h.kind for h in entries] == ["started"] + ["transition"] * (adds + 1)
    assert [h.event for h in entries[1:]] == ["add"] * adds + ["close"]
    # Each accepted call saw its own transition committed: the seqs they were told are distinct.
    told = sorted(value.last_seq for _, value in accepted)
    assert told == [h.seq for h in entries[1:]]
    # And each add saw the count as of its own transition.
    assert sorted(value.data["count"] for event, value in accepted if event == "add") == list(range(1, adds + 1))


def test_concurrent_starts_with_one_idempotency_key_make_one_run(pg_interlock):
    rt = pg_interlock
    results = run_together(20, lambda i: rt.start("test_approval", {"caller": i},
                                                  idempotency_key="same-request"))

    errors = [value for outcome, value in results if outcome == "error"]
    assert errors == []
    ids = {value.id for _, value in results}
    assert len(ids) == 1
    [run_id] = ids
    with rt.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(runs)).scalar() == 1
    # The winner's data is what every caller got back.
    winner = rt.get(run_id).data
    assert all(value.data == winner for _, value in results)
    assert [h.kind for h in rt.history(run_id)] == ["started"]


def test_concurrent_data_updates_are_all_kept(pg_interlock):
    rt = pg_interlock
    run = rt.start("test_counter")
    results = run_together(THREADS, lambda i: rt.update_data(run.id, {f"k{i}": i}))

    assert [value for outcome, value in results if outcome == "error"] == []
    final = rt.get(run.id)
    assert final.data == {f"k{i}": i for i in range(THREADS)}
    assert [h.seq for h in rt.history(run.id)] == list(range(1, THREADS + 2))
