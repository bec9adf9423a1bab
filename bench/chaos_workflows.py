"""Workflows only the chaos run uses (``bench/chaos.py``): an activity, a long flaky step,
a step that breaks until an operator retries it, and timers read from the run's data.

Loaded with ``INTERLOCK_WORKFLOWS=workflows,bench.chaos_workflows``. Everything a step
does is decided by the run's data (and the clock, for ``broken_until``), so any worker
process gives the same answer and the chaos checks can tell, from the database alone,
which final states a run was allowed to reach.
"""

import time
from datetime import timedelta

from engine import Limit, State, Workflow, activity, after, at, child, map_, step


class StepBroken(Exception):
    """A simulated outage of the service a step calls."""


class ChaosParcel(Workflow):
    """A parcel: inspected by an outside worker, sorted, labelled, then picked up or returned.

    - ``received``: the ``chaos_inspect`` activity (ActivityPoller in the chaos script);
      its worker fails the first ``inspect_failures`` attempts.
    - ``sorting``: a step that takes ``work_seconds`` (long enough to be claimed, so a
      killed worker leaves a leased task behind) and fails its first ``sort_failures`` attempts.
    - ``labelling``: a step that fails while ``time.time() < broken_until`` and has one retry
      only, so the run fails and the operator (the chaos script) retries it; the
      ``label_deadline`` timer skips the label, and races the retry when it is due meanwhile.
    - ``awaiting_pickup``: the ``picked_up`` event from outside races the ``pickup_deadline`` timer.
    """

    name, version = "chaos_parcel", 1

    received = State(initial=True)
    sorting = State()
    labelling = State()
    awaiting_pickup = State()
    delivered = State(final=True)
    returned = State(final=True)

    inspected = received.to(sorting)
    reject = received.to(returned)
    binned = sorting.to(labelling)
    labelled = labelling.to(awaiting_pickup)
    skip_label = labelling.to(awaiting_pickup)
    picked_up = awaiting_pickup.to(delivered)
    expire = awaiting_pickup.to(returned)

    final_status = {"returned": "failed"}

    chaos_inspect = activity(received, retries=6, visibility_timeout=timedelta(seconds=4),
                             on_error="reject", default="inspected")
    label_timeout = at("label_deadline", labelling, send="skip_label")
    pickup_timeout = at("pickup_deadline", awaiting_pickup, send="expire")

    @step(sorting, retries=6, backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=20))
    def sort(self, run):
        time.sleep(run.data.get("work_seconds", 0))
        if run.attempt <= run.data.get("sort_failures", 0):
            raise StepBroken(f"sorter jammed (attempt {run.attempt})")
        return "binned", {"bin": f"B{len(run.id) % 7}"}

    @step(labelling, retries=1, backoff=timedelta(seconds=0.1))
    def label(self, run):
        if time.time() < run.data.get("broken_until", 0):
            raise StepBroken("label printer offline")
        return "labelled", {"label": f"L-{run.id[-6:]}"}


# -- composition: child runs and a Map (bench/chaos_composition.py plans and checks them) ----

class CrateBroken(Exception):
    """A crate its data marks as damaged: every packing attempt fails."""


class ChaosCrate(Workflow):
    """The child: a step packs the crate (``work_seconds``); a crate with ``fail`` set fails every
    attempt and ends ``damaged`` (failed), whatever the faults do."""

    name, version = "chaos_crate", 1

    packing = State(initial=True)
    packed = State(final=True)
    damaged = State(final=True)

    done = packing.to(packed)
    give_up = packing.to(damaged)
    final_status = {"damaged": "failed"}

    @step(packing, retries=3, backoff=timedelta(seconds=0.1), on_error="give_up")
    def pack(self, run):
        time.sleep(run.data.get("work_seconds", 0))
        if run.data.get("fail"):
            raise CrateBroken(f"crate {run.data['crate']} is damaged")
        return "done", {"packed_by": f"attempt-{run.attempt}"}


class ChaosShipment(Workflow):
    """A Map: a crate run per item, two at a time; one damaged crate is tolerated, a second one
    ends the map ``short`` (on_error) and cancels the crates still running."""

    name, version = "chaos_shipment", 1

    loading = State(initial=True)
    loaded = State(final=True)
    short = State(final=True)

    all_packed = loading.to(loaded)
    too_many_damaged = loading.to(short)
    final_status = {"short": "failed"}

    crates = map_(loading, items="crates", workflow="chaos_crate", max_concurrency=2, tolerated_failures=1,
                  business_key=lambda run, item: item["crate"], on_done="all_packed",
                  on_error="too_many_damaged", results="packed")


class ChaosDispatch(Workflow):
    """A child run: waits for one crate, unless ``crate_deadline`` passes first (the crate is then
    cancelled: ``parent_close="cancel"``)."""

    name, version = "chaos_dispatch", 1

    crating = State(initial=True)
    dispatched = State(final=True)
    undispatched = State(final=True)
    gave_up = State(final=True)

    crated = crating.to(dispatched)
    crate_failed = crating.to(undispatched)
    give_up = crating.to(gave_up)
    final_status = {"undispatched": "failed", "gave_up": "failed"}

    crate = child(crating, workflow="chaos_crate", data=lambda run: run.data["crate"], on_done="crated",
                  on_error="crate_failed", result="crate")
    deadline = at("crate_deadline", crating, send="give_up")


class ChaosLooseDispatch(ChaosDispatch):
    """The same, but a crate whose parent gave up goes on alone (``parent_close="abandon"``)."""

    name, version = "chaos_loose_dispatch", 1

    crate = child(ChaosDispatch.crating, workflow="chaos_crate", data=lambda run: run.data["crate"],
                  on_done="crated", on_error="crate_failed", result="crate", parent_close="abandon")


# -- retention: bench/chaos_retention.py checks what it deletes ------------------------------

class ChaosReceipt(Workflow):
    """A receipt a schedule issues every second: one quick step, and deleted (archived first)
    two seconds after it ends, while the faults go on."""

    name, version = "chaos_receipt", 1
    retention = timedelta(seconds=2)

    issuing = State(initial=True)
    issued = State(final=True)

    done = issuing.to(issued)

    @step(issuing, retries=3, backoff=timedelta(seconds=0.1))
    def issue(self, run):
        return "done", {"issued_by": f"attempt-{run.attempt}"}


# -- moving runs between versions: bench/chaos_migrations.py plans, migrates and checks them ---

class ChaosVoyageV1(Workflow):
    """A voyage: loaded by a step, then at sea (a timer armed), berthed, or held for inspection
    (its data's ``route``), waiting there for the chaos script's ``arrive`` (or ``release``).
    Runs start on this version and are moved to version 2 part way through the load."""

    name, version = "chaos_voyage", 1

    loading = State(initial=True)
    at_sea = State()
    berthed = State()
    held = State()
    arrived = State(final=True)
    lost = State(final=True)

    sail = loading.to(at_sea)
    berth = loading.to(berthed)
    detain = loading.to(held)
    release = held.to(at_sea)
    arrive = at_sea.to(arrived) | berthed.to(arrived)
    give_up = at_sea.to(lost)
    final_status = {"lost": "failed"}

    overdue = after(timedelta(hours=1), at_sea, send="give_up")

    @step(loading, retries=2, backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=20))
    def load(self, run):
        return _load(run, {"detain": "detain"}, 1)


class ChaosVoyageV2(Workflow):
    """Version 2: ``at_sea`` is ``sailing`` (its timer waits two hours, not one), a berthed run
    arms a demurrage timer, inspections are dropped (no ``held``: a run detained by version 1
    cannot move; loading sends it to sea instead), loading retries more, and the voyage ends
    ``moored``."""

    name, version = "chaos_voyage", 2

    loading = State(initial=True)
    sailing = State()
    berthed = State()
    moored = State(final=True)
    lost = State(final=True)

    sail = loading.to(sailing)
    berth = loading.to(berthed)
    arrive = sailing.to(moored) | berthed.to(moored)
    give_up = sailing.to(lost)
    final_status = {"lost": "failed"}

    overdue = after(timedelta(hours=2), sailing, send="give_up")
    demurrage = after(timedelta(hours=1), berthed, send="arrive")

    @step(loading, retries=4, backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=20))
    def load(self, run):
        return _load(run, {"detain": "sail"}, 2)


# -- a concurrency limit: bench/chaos_limits.py plans the runs and checks the limit ------------

class CallRefused(Exception):
    """The carrier said no (the run's data says how many times)."""


class ChaosCall(Workflow):
    """A call to a carrier that takes two calls at once per account."""

    name, version = "chaos_call", 1

    calling = State(initial=True)
    called = State(final=True)
    gave_up = State(final=True)

    answered = calling.to(called)
    refused = calling.to(gave_up)
    final_status = {"gave_up": "failed"}

    @step(calling, concurrency=Limit(2, key=lambda run: run.data["account"]), retries=3,
          backoff=timedelta(seconds=0.1), time_limit=timedelta(seconds=20), on_error="refused")
    def call(self, run):
        from bench import chaos_limits

        chaos_limits.probe(run, "start")
        try:
            time.sleep(run.data.get("work_seconds", 0))
            if run.attempt <= run.data.get("call_failures", 0):
                raise CallRefused(f"the carrier said no (attempt {run.attempt})")
        finally:
            chaos_limits.probe(run, "end")
        return "answered"


def _load(run, routes: dict, version: int):
    time.sleep(run.data.get("work_seconds", 0))
    if run.attempt <= run.data.get("load_failures", 0):
        raise StepBroken(f"crane stalled (attempt {run.attempt})")
    route = run.data.get("route", "sail")
    return routes.get(route, route), {"loaded_by": version}
