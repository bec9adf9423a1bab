"""The chaos run's pause invariants (bench/chaos_pauses.py) catch what they are about."""

from bench.chaos_checks import Invariant
from bench.chaos_pauses import check


def rows(*kinds):
    out = []
    for seq, item in enumerate(kinds, 1):
        kind, detail = item if isinstance(item, tuple) else (item, None)
        out.append({"seq": seq, "kind": kind, "detail": detail})
    return out


def problems(**by_run):
    return {i.name: dict(i.problems) for i in check(by_run, Invariant)}


def test_a_clean_pause_with_a_queued_event_passes():
    found = problems(r1=rows("started", "paused", ("event_queued", None), "resumed",
                             ("transition", {"queued": True}), "timer_fired"))
    assert found == {"no timer fired while paused": {}, "queued events applied once": {}}


def test_a_timer_fired_while_paused_is_caught():
    found = problems(r1=rows("started", "paused", "timer_fired", "resumed"))
    assert found["no timer fired while paused"] == {"timer fired while paused": 1}


def test_a_queued_event_lost_or_applied_twice_is_caught():
    lost = problems(r1=rows("started", "paused", "event_queued", "resumed", "cancelled"))
    twice = problems(r1=rows("paused", "event_queued", "resumed", ("transition", {"queued": True}),
                             ("event_rejected", {"queued": True})))
    assert lost["queued events applied once"] == {"a queued event never applied": 1}
    assert twice["queued events applied once"] == {"a queued event applied twice, or never queued": 1}
