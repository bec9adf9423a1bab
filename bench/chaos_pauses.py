"""The chaos run's operator pauses (bench/chaos.py): some runs are paused a while and resumed
through the API, and the events sent to them meanwhile go with ``queue=True``.

Invariants, from each run's history:

10. ``no timer fired while paused``: no ``timer_fired`` row between a ``paused`` row and the
    next ``resumed`` (timers fire under the run's lock, and the due-timer query passes over
    paused runs; a step already running may still finish, so steps are not counted).
11. ``queued events applied once``: every ``event_queued`` row is answered by exactly one
    later row marked ``queued`` (its transition, a rejection, or ``ignored`` once the run had
    ended) or a ``signal_refused`` for it, and no such row exists without its queueing.
"""

import random

PAUSED_SHARE = 0.2
# Not the composed runs: their outcomes race deadlines on purpose, and a pause would decide the race.
PAUSABLE = ("cargo", "orders", "chaos_parcel")


def plan(chaos: dict, kind: str, i: int) -> None:
    """Add a pause to the plan (``chaos``: its ``data["chaos"]``) of some runs of ``kind``: half of
    them paused at once, while the script's first event for them is on its way (so it queues).
    Drawn from a generator of the run's own, so the other plans are the same with or without."""
    rng = random.Random(7919 * i + 17)
    if kind in PAUSABLE and rng.random() < PAUSED_SHARE:
        early = rng.random() < 0.5
        chaos["pause_after"] = 0.0 if early else round(rng.uniform(0.1, 4.0), 2)
        chaos["pause_for"] = round(rng.uniform(1.0, 4.0), 2)


def hold_events(chaos: dict, was_paused: bool) -> bool:
    """A run paused at once gets its events only once paused: they are queued."""
    return chaos.get("pause_after") == 0.0 and not was_paused


def due(chaos: dict, age: float, paused: bool, was_paused: bool) -> str | None:
    """What the script does now to a run ``age`` seconds after its start: pause, resume or nothing.
    A pause the API could not take in time (it was down) is made late rather than never: the
    run's events wait for it (``hold_events``)."""
    after = chaos.get("pause_after")
    if after is None:
        return None
    if not paused and not was_paused and age >= after:
        return "pause"
    if paused and age >= after + chaos["pause_for"]:
        return "resume"
    return None


def check(by_run: dict, invariant) -> list:
    timers = invariant("no timer fired while paused", checked_what="pauses")
    queued = invariant("queued events applied once", checked_what="queued events")
    pauses = events = 0
    for run_id, entries in by_run.items():
        paused, waiting, answered = False, 0, 0
        for h in entries:
            kind, detail = h["kind"], h["detail"] or {}
            if kind == "paused":
                paused, pauses = True, pauses + 1
            elif kind == "resumed":
                paused = False
            elif kind == "timer_fired" and paused:
                timers.fail("timer fired while paused", run_id, f"seq {h['seq']}")
            if kind == "event_queued":
                waiting += 1
            elif detail.get("queued") or (kind == "signal_refused" and detail.get("kind") == "event"):
                answered += 1
                if answered > waiting:
                    queued.fail("a queued event applied twice, or never queued", run_id, f"seq {h['seq']}")
        events += waiting
        if answered < waiting and entries and entries[-1]["kind"] != "paused":
            queued.fail("a queued event never applied", run_id, f"{waiting} queued, {answered} applied")
    timers.checked, queued.checked = pauses, events
    timers.notes.append(f"{pauses} pauses in {sum(any(h['kind'] == 'paused' for h in e) for e in by_run.values())} runs")
    return [timers, queued]
