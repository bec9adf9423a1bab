"""Child runs: a state that starts a run of another workflow and waits for it to end.

Entering the state starts the child in the parent's own transaction (so both exist or
neither). The child's end reaches the parent as a signal row written in the child's final
transaction; the parent applies it with its own transition, under its own lock, exactly once:
a signal for a state entry the parent has left, or for a parent that ended, is recorded as
``ignored`` and changes nothing else. A parent that leaves the state (or is cancelled) tells
its child the same way, unless the child's ``parent_close`` policy is ``abandon``.

``transitions.Change`` calls ``entered``, ``leaving`` and ``finishing``; signals are delivered
right after the commit that wrote them (``deliver``) and by every reconciler (``deliver_pending``),
so a crash between the two loses nothing.
"""

import logging
from dataclasses import dataclass

from sqlalchemy import and_, or_, select, update

from . import admission, maps
from .errors import CallbackError, InterlockError, InvalidTransition
from .ids import new_id
from .models import runs, signals
from .queries import of_loaded_workflows

log = logging.getLogger(__name__)
ACTIVE = ("running", "waiting")
BATCH = 200
# The after-commit delivery usually applies a signal at once; the reconciler takes those left.
RECONCILE_AFTER = 1.0


# -- hooks of the transition function ------------------------------------------------------

def entered(change, spec, seq) -> None:
    """Start the child run (or, for a map, the runs per item) of ``spec`` for the parent's
    state entry ``seq``, in the parent's transaction."""
    if spec.kind == "map":
        maps.entered(change, spec, seq)
        return
    key = spec.business_key(change.ctx) if spec.business_key is not None else None
    start_run(change, spec, seq, spec.data_for(change.ctx), key)


def start_run(change, spec, seq, data, business_key, detail=None) -> str:
    """Start a run of ``spec.workflow`` as a child of the parent's state entry ``seq``; its id."""
    from .operations import Start
    from .transitions import check_data

    cls = change.rt.registry.get(spec.workflow, spec.version)
    data = check_data(data, f"{spec.kind} {spec.name} data")
    op = Start(cls, data, None if business_key is None else str(business_key),
               parent=(change.row["id"], spec.state_id, seq))
    child = op.begin(change.rt, change.conn, change.now, writes=change.writes)
    op.perform(child)
    change.related.append(child.finish())
    change.record("child_started", cause="child", target=spec.state_id,
                  detail={"child": child.row["id"], "name": spec.name, "workflow": cls.workflow_name,
                          "version": cls.version, "business_key": child.row["business_key"], **(detail or {})})
    return child.row["id"]


def leaving(change, states, reason: str) -> None:
    """The parent leaves ``states``: their maps stop, their children (policy ``cancel``) are told."""
    specs = {state: change.cls.child_for(state) for state in states}
    for state, spec in specs.items():
        if spec is not None and spec.kind == "map" and state in change.entries:
            maps.leaving(change, spec, change.entries[state])
    cancel_children(change, [s for s, spec in specs.items() if spec is not None and spec.parent_close == "cancel"],
                    reason)


def cancel_children(change, states, reason: str, seq=None) -> None:
    """Signal ``parent_left`` to the active children started by ``states`` (of entry ``seq``)."""
    if not states:
        return
    targets = [o.run["id"] for o in change.related if o.run.get("parent_state") in states
               and o.run["status"] in ACTIVE and (seq is None or o.run.get("parent_seq") == seq)]
    query = select(runs.c.id).where(runs.c.parent_id == change.row["id"], runs.c.parent_state.in_(states),
                                    runs.c.status.in_(ACTIVE))
    if seq is not None:
        query = query.where(runs.c.parent_seq == seq)
    change.writes.flush_pending(change.conn)
    stored = change.conn.execute(query).scalars().all()
    for child_id in dict.fromkeys([*stored, *targets]):
        change.signal(child_id, "parent_left", {"reason": reason})


def finishing(change) -> None:
    """A child that ends (or fails) tells its parent, in its own final transaction."""
    if change.row.get("parent_id") is None:
        return
    change.signal(change.row["parent_id"], "child_ended",
                  {"status": change.status, "state": change.leaves(), "data": change.ctx.data},
                  state=change.row["parent_state"], entry_seq=change.row["parent_seq"])


# -- the receiver's operation --------------------------------------------------------------

@dataclass
class ApplySignals:
    """Apply the run's pending signals (up to ``limit``), in the order they were written: many
    children ending together cost their parent one lock and one transaction."""

    limit: int = BATCH

    def perform(self, change) -> None:
        # The receiver's lock is held: no other transaction applies these signals meanwhile.
        query = select(signals).where(signals.c.run_id == change.row["id"], signals.c.status == "pending")
        waiting = change.admission_since is not None
        # A paused run is still cancelled with its parent (and admitted); a run waiting for a slot
        # takes only those too: what was queued meanwhile is applied once it is admitted.
        if change.paused_at is not None or waiting:
            found = self._read(change, query.where(signals.c.kind.in_(("parent_left", admission.ADMITTED))))
        else:
            found = self._read(change, query)
        fanin = maps.Fanin(change, found)
        done = {"applied": [], "stale": []}
        self._apply(change, found, fanin, done)
        if waiting and change.admission_since is None and change.paused_at is None:
            # Admitted just now: what it queued while it waited, in order, before anything else.
            taken = [signal_id for ids in done.values() for signal_id in ids]
            self._apply(change, self._read(change, query.where(signals.c.id.not_in(taken))), fanin, done)
        fanin.settle()
        for status, ids in done.items():
            if ids:
                change.conn.execute(update(signals).where(signals.c.id.in_(ids)).values(
                    status=status, applied_at=change.now))

    def _read(self, change, query) -> list:
        return change.conn.execute(query.order_by(signals.c.created_at, signals.c.id).limit(self.limit)
                                   ).mappings().all()

    @staticmethod
    def _apply(change, found, fanin, done) -> None:
        for signal in found:
            try:
                if signal["kind"] == "parent_left":
                    applied = _parent_left(change, signal)
                elif signal["kind"] == admission.ADMITTED:
                    applied = admission.admitted(change, signal)
                elif signal["kind"] == admission.QUEUED_DATA:
                    applied = admission.queued_data(change, signal)
                elif signal["kind"] == "event":
                    applied = _queued_event(change, signal)
                else:
                    applied = _for_state_entry(change, signal, fanin)
            except CallbackError as exc:  # this transaction is lost: the signal is refused alone
                raise SignalRefused(signal["id"], exc) from exc
            done["applied" if applied else "stale"].append(signal["id"])


def _for_state_entry(change, signal, fanin) -> bool:
    """A signal for one of the run's state entries: a child's end, an empty map's."""
    payload = signal["payload"] or {}
    detail = {"child": signal["source_id"], "status": payload.get("status"), "state": payload.get("state")}
    if signal["kind"] == "map_done":
        detail = {"map": signal["state"]}
    spec = change.cls.child_for(signal["state"])
    is_map = spec is not None and spec.kind == "map"
    # A failed map still records its items' ends: retry re-runs only what did not succeed.
    listening = change.status in ACTIVE or (is_map and change.status == "failed")
    reason = None
    if not listening or change.entries.get(signal["state"]) != signal["entry_seq"]:
        reason = (f"run is {change.status}" if not listening
                  else f"run left state {signal['state']!r} before the child ended")
    if is_map and signal["kind"] == "child_ended":
        # Its item records the child's end even after the map ended (a child it cancelled).
        return maps.child_ended(change, spec, signal, fanin, reason)
    if reason is not None:
        change.record("ignored", cause="child", detail={**detail, "reason": reason})
        return False
    if is_map:
        maps.done_empty(change, spec, signal)
        return True
    return _child_ended(change, signal, spec, detail)


def _child_ended(change, signal, spec, detail) -> bool:
    payload, child_id = signal["payload"], signal["source_id"]
    change.record("child_ended", cause="child", source=signal["state"], detail=detail)
    if spec is None:
        return True
    if spec.result is not None:
        change.update_data({spec.result: payload["data"]}, "child", record=False)
    event = spec.on_done if payload["status"] == "succeeded" else spec.on_error
    if event is not None:
        try:
            change.send(event, payload["data"], "child", detail={"child": child_id})
        except InvalidTransition as exc:
            change.record("event_rejected", cause="child", event=event, detail={"child": child_id, "error": str(exc)})
    return True


def _queued_event(change, signal) -> bool:
    """An event sent with ``queue=True`` while the run was paused, applied after it resumed."""
    payload = signal["payload"]
    if change.status not in ACTIVE:
        change.record("ignored", cause=payload["cause"], event=payload["event"], data=payload["data"],
                      detail={"reason": f"run is {change.status}", "queued": True})
        return False
    try:
        change.send(payload["event"], payload["data"], payload["cause"], detail={"queued": True})
    except InvalidTransition as exc:
        change.record("event_rejected", cause=payload["cause"], event=payload["event"],
                      detail={"error": str(exc), "queued": True})
    return True


class SignalRefused(Exception):
    """Applying a signal raised in a workflow callback: the batch is rolled back, and the signal
    is marked ``refused`` on its own (``RefuseSignal``), so the others still apply."""

    def __init__(self, signal_id, error: CallbackError):
        super().__init__(str(error))
        self.signal_id, self.error = signal_id, error


@dataclass
class RefuseSignal:
    signal_id: str
    error: str

    def perform(self, change) -> None:
        found = change.conn.execute(select(signals.c.kind, signals.c.source_id, signals.c.payload).where(
            signals.c.id == self.signal_id, signals.c.status == "pending")).first()
        if found is None:
            return
        change.conn.execute(update(signals).where(signals.c.id == self.signal_id).values(
            status="refused", applied_at=change.now))
        event = (found.payload or {}).get("event") if found.kind == "event" else None
        change.record("signal_refused", cause="child" if found.kind == "child_ended" else "event", event=event,
                      detail={"signal": self.signal_id, "kind": found.kind, "from": found.source_id,
                              "error": self.error})
        if found.kind == admission.ADMITTED:  # its states could not be entered
            admission.refused(change, self.error)


def _parent_left(change, signal) -> bool:
    from .operations import Cancel

    if change.status not in ACTIVE:
        change.record("ignored", cause="parent", detail={"parent": signal["source_id"],
                                                         "reason": f"run is {change.status}"})
        return False
    Cancel(f"parent run {signal['source_id']} {signal['payload']['reason']}").perform(change)
    return True


# -- delivery --------------------------------------------------------------------------------

def deliver(rt, pending: list) -> None:
    """Apply the signals just committed ((signal id, receiver) pairs) and any others pending for
    their receivers. A receiver another transaction holds is passed over: whoever holds it
    looks for pending signals again after its commit, and so applies ours (committed before we
    found it held). One that fails waits for the reconciler (its workflow not loaded here...)."""
    for run_id in dict.fromkeys(run_id for _signal_id, run_id in pending):
        try:
            drain(rt, run_id)
        except InterlockError as exc:
            log.info("signals to run %s left for the reconciler: %s", run_id, exc, extra={"run_id": run_id})


def drain(rt, run_id) -> None:
    """Apply the run's pending signals until none is left, unless another transaction holds it."""
    from .transitions import apply

    while True:
        try:
            if apply(rt, run_id, ApplySignals(), unless_held=True) is None:
                return
        except SignalRefused as refused:
            log.warning("a signal to run %s is refused: %s", run_id, refused, extra={"run_id": run_id})
            apply(rt, run_id, RefuseSignal(refused.signal_id, str(refused.error)))
        with rt.db.read() as conn:
            more = conn.execute(select(signals.c.id).join(runs, runs.c.id == signals.c.run_id).where(
                signals.c.run_id == run_id, signals.c.status == "pending", _applicable()).limit(1)).first()
        if more is None:
            return


def _applicable():
    """A pending signal its receiver applies now: a paused run takes only ``parent_left`` (and its
    admission); one waiting for a slot only those (engine/admission.py)."""
    return and_(or_(runs.c.paused_at.is_(None), signals.c.kind.in_(("parent_left", admission.ADMITTED))),
                admission.applicable_clause())


def deliver_pending(rt) -> int:
    """The reconciler's duty: apply the signals still pending (receivers of workflows loaded here)."""
    now = rt.clock.now()
    with rt.db.read() as conn:
        pending = conn.execute(
            select(signals.c.id, signals.c.run_id).join(runs, runs.c.id == signals.c.run_id)
            .where(signals.c.status == "pending", signals.c.created_at <= now - RECONCILE_AFTER,
                   of_loaded_workflows(rt.registry), _applicable())
            .order_by(signals.c.created_at).limit(BATCH)).all()
    deliver(rt, [tuple(row) for row in pending])
    return len(pending)


def new_signal(change, run_id, kind, payload, state=None, entry_seq=None) -> dict:
    return {"id": new_id(change.now), "run_id": run_id, "kind": kind, "source_id": change.row["id"],
            "state": state, "entry_seq": entry_seq, "payload": payload, "status": "pending",
            "created_at": change.now, "applied_at": None}
