"""Migration plans: which runs of one version of a workflow can move to another, and moving them.

``create`` judges every run the filter selects (running, waiting or failed, of the ``from``
version) with ``moving.judge``, once per situation (runs waiting the same way share a verdict,
its ``shape``), and writes the plan: the verdicts, a row per run with the history seq it was at,
the counts. ``dry_run`` reads the runs again and says what applying would do to each now.
``apply`` starts a batch (engine/batches.py, action ``migrate``) over the plan's runs: the
reconcilers move each through ``transitions.apply`` with ``operations.Migrate``, once, chunk by
chunk, resumable after a crash; a run that moved on since the plan is refused.
"""

import logging

from sqlalchemy import and_, func, insert, select, update

from . import batches, moving, queries
from .errors import InvalidData, PlanNotFound
from .ids import new_id
from .models import migration_plans, migration_runs, runs, tasks, timers
from .timeparse import iso

log = logging.getLogger(__name__)
PAGE = 1000  # runs judged per read
SAMPLE = 10  # run ids shown per outcome
FILTER_KEYS = ("status", "state", "business_key", "created_after", "created_before", "search", "run_ids")


def create(rt, workflow: str, from_version: int, to_version: int, *, mapping=None, filter=None) -> dict:
    """Judge the runs of ``workflow`` v``from_version`` (those ``filter`` selects) against
    v``to_version``; the plan, as ``shown``. Both versions must be loaded here."""
    old_cls, new_cls = _versions(rt, workflow, from_version, to_version)
    mapping = moving.check_mapping(old_cls, new_cls, mapping or {})
    stored = _check_filter(rt, workflow, from_version, filter or {})
    now = rt.clock.now()
    plan = {"id": new_id(now), "workflow": workflow, "from_version": from_version, "to_version": to_version,
            "mapping": mapping, "filter": stored, "shapes": [], "counts": dict.fromkeys(moving.OUTCOMES, 0),
            "status": "planning", "batch_id": None, "created_at": now, "updated_at": now}
    with rt.db.write() as conn:
        conn.execute(insert(migration_plans).values(**plan))
    shapes: dict = {}
    source, conditions = queries.run_filter(**batches.list_filters(rt, stored))
    conditions.append(runs.c.status.in_(moving.MOVABLE))
    below = None
    while True:
        with rt.db.read() as conn:
            page = conn.execute(select(runs).select_from(source).where(
                *conditions, *([runs.c.id < below] if below else [])).order_by(runs.c.id.desc())
                .limit(PAGE)).mappings().all()
            if not page:
                break
            ids = [r["id"] for r in page]
            task_rows, timer_rows = _rows_of(conn, ids)
        rows = []
        for run in page:
            sit = moving.situation(run, task_rows.get(run["id"], ()), timer_rows.get(run["id"], ()))
            if sit not in shapes:
                verdict = moving.judge(sit, old_cls, new_cls, mapping)
                shapes[sit] = (len(plan["shapes"]), verdict.outcome)
                plan["shapes"].append(verdict.shown())
            shape, outcome = shapes[sit]
            plan["counts"][outcome] += 1
            rows.append({"plan_id": plan["id"], "run_id": run["id"], "last_seq": run["last_seq"], "shape": shape,
                         "outcome": outcome})
        with rt.db.write() as conn:
            conn.execute(insert(migration_runs), rows)
        below = ids[-1]
        if len(page) < PAGE:
            break
    with rt.db.write() as conn:
        conn.execute(update(migration_plans).where(migration_plans.c.id == plan["id"]).values(
            shapes=plan["shapes"], counts=plan["counts"], status="ready", updated_at=rt.clock.now()))
    return get(rt, plan["id"])


def _versions(rt, workflow, from_version, to_version):
    for name, value in (("from", from_version), ("to", to_version)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidData(f"{name} must be a version number (an integer >= 1)", field=name)
    if from_version == to_version:
        raise InvalidData("from and to are the same version: nothing to move", field="to")
    return rt.registry.get(workflow, from_version), rt.registry.get(workflow, to_version)


def _check_filter(rt, workflow, version, given) -> dict:
    if not isinstance(given, dict):
        raise InvalidData("filter must be an object", field="filter")
    unknown = sorted(set(given) - set(FILTER_KEYS))
    if unknown:
        raise InvalidData(f"unknown filter key(s) {', '.join(unknown)} (known: {', '.join(FILTER_KEYS)})",
                          field="filter")
    return batches.check_filter(rt, {**given, "workflow": workflow, "version": version})


def _rows_of(conn, ids) -> tuple[dict, dict]:
    """The open (and failed) tasks and the armed or suspended timers of these runs, by run."""
    by_task, by_timer = {}, {}
    for row in conn.execute(select(tasks.c.run_id, tasks.c.state, tasks.c.name, tasks.c.kind, tasks.c.status,
                                   tasks.c.entry_seq).where(tasks.c.run_id.in_(ids),
                                                            tasks.c.status.in_((*moving.OPEN, "failed")))).mappings():
        by_task.setdefault(row["run_id"], []).append(row)
    for row in conn.execute(select(timers.c.run_id, timers.c.state, timers.c.name, timers.c.kind, timers.c.event,
                                   timers.c.status).where(timers.c.run_id.in_(ids),
                                                          timers.c.status.in_(("armed", "suspended")))).mappings():
        by_timer.setdefault(row["run_id"], []).append(row)
    return by_task, by_timer


def stored(rt, plan_id: str) -> dict:
    """The plan's row (PlanNotFound if there is none)."""
    with rt.db.read() as conn:
        row = conn.execute(select(migration_plans).where(migration_plans.c.id == plan_id)).mappings().first()
    if row is None:
        raise PlanNotFound(plan_id)
    return dict(row)


_READY: dict = {}  # plans ready to apply never change (but for their batch id): read once per process


def ready(rt, plan_id: str) -> dict:
    """The plan's row, once it is ready (a migrate batch's operation reads it for every run)."""
    plan = _READY.get(plan_id)
    if plan is None:
        plan = stored(rt, plan_id)
        if plan["status"] == "ready":
            if len(_READY) >= 64:
                _READY.clear()
            _READY[plan_id] = plan
    return plan


def get(rt, plan_id: str) -> dict:
    """The plan as the API shows it: its verdicts with how many runs each, samples per outcome,
    and the batch applying it, if started."""
    plan = stored(rt, plan_id)
    with rt.db.read() as conn:
        per_shape = dict(conn.execute(select(migration_runs.c.shape, func.count()).where(
            migration_runs.c.plan_id == plan_id).group_by(migration_runs.c.shape)).all())
        samples = {outcome: conn.execute(select(migration_runs.c.run_id).where(
            migration_runs.c.plan_id == plan_id, migration_runs.c.outcome == outcome)
            .order_by(migration_runs.c.run_id).limit(SAMPLE)).scalars().all() for outcome in moving.OUTCOMES}
    out = {k: plan[k] for k in ("id", "workflow", "from_version", "to_version", "mapping", "filter", "counts",
                                "status", "batch_id")}
    out["created_at"] = iso(plan["created_at"])
    out["shapes"] = [{**shape, "runs": per_shape.get(i, 0), "shape": i} for i, shape in enumerate(plan["shapes"])]
    out["samples"] = samples
    out["batch"] = batches.get(rt, plan["batch_id"]) if plan["batch_id"] else None
    return out


def plan_runs(rt, plan_id: str, *, outcome=None, after=None, limit=100) -> dict:
    """The runs a plan judged, by run id, each with its verdict (``after``: the previous ``next``)."""
    plan = stored(rt, plan_id)
    if outcome is not None and outcome not in moving.OUTCOMES:
        raise InvalidData(f"outcome must be one of {', '.join(moving.OUTCOMES)}", field="outcome")
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= batches.MAX_PAGE:
        raise InvalidData(f"limit must be between 1 and {batches.MAX_PAGE}", field="limit")
    query = select(migration_runs).where(migration_runs.c.plan_id == plan_id).order_by(migration_runs.c.run_id)
    if outcome is not None:
        query = query.where(migration_runs.c.outcome == outcome)
    if after is not None:
        query = query.where(migration_runs.c.run_id > after)
    with rt.db.read() as conn:
        rows = conn.execute(query.limit(limit + 1)).mappings().all()
    shown = [{"run_id": r["run_id"], "last_seq": r["last_seq"], **plan["shapes"][r["shape"]]} for r in rows[:limit]]
    return {"runs": shown, "next": shown[-1]["run_id"] if len(rows) > limit else None}


def dry_run(rt, plan_id: str) -> dict:
    """What applying the plan would do now, without writing: each run judged again as ``Migrate``
    judges it under its lock (counts by what would happen, and samples with the reasons)."""
    from .operations import Migrate
    from .transitions import Change
    plan = _ready(rt, plan_id)
    counts = {"applied": 0, "refused": 0, "skipped": 0}
    samples: dict = {k: [] for k in counts}
    after = None
    while True:
        with rt.db.read() as conn:
            ids = conn.execute(select(migration_runs.c.run_id).where(
                migration_runs.c.plan_id == plan_id, *([migration_runs.c.run_id > after] if after else []))
                .order_by(migration_runs.c.run_id).limit(PAGE)).scalars().all()
        if not ids:
            break
        for run_id in ids:
            with rt.db.read() as conn:
                found = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
                row = dict(found) if found else None
                if row is None:
                    outcome, why = "skipped", "the run is gone"
                else:
                    change = Change(rt, conn, row, rt.registry.get(row["workflow"], row["version"]), rt.clock.now())
                    checked = Migrate(plan).check(change)
                    outcome, why = checked if checked is not None else ("applied", None)
            counts[outcome] += 1
            if len(samples[outcome]) < SAMPLE:
                samples[outcome].append({"run_id": run_id, "reason": why})
        after = ids[-1]
    return {"dry_run": True, "plan": plan_id, "counts": counts, "samples": samples,
            "shapes": [{**shape, "shape": i} for i, shape in enumerate(plan["shapes"])]}


def _ready(rt, plan_id) -> dict:
    plan = stored(rt, plan_id)
    if plan["status"] != "ready":
        raise InvalidData(f"plan {plan_id} is still being made (or its maker stopped): make a new one",
                          field="plan")
    for version in (plan["from_version"], plan["to_version"]):
        rt.registry.get(plan["workflow"], version)  # WorkflowNotFound: this process cannot judge it
    return plan


def apply(rt, plan_id: str) -> dict:
    """Start moving the plan's runs: the batch (action ``migrate``) that does it, as
    ``batches.shown``. Applying a plan again returns the batch already started."""
    plan = _ready(rt, plan_id)
    if plan["batch_id"] is not None:
        return batches.get(rt, plan["batch_id"])
    with rt.db.read() as conn:
        total = conn.execute(select(func.count()).select_from(migration_runs).where(
            migration_runs.c.plan_id == plan_id, migration_runs.c.outcome != moving.IMPOSSIBLE)).scalar_one()

    def take(conn, batch_id) -> bool:
        # In the batch's own transaction: a batch exists only as its plan's (an apply at the
        # same moment, or one cut short by a crash, leaves no second batch to be worked).
        return bool(conn.execute(update(migration_plans).where(
            migration_plans.c.id == plan_id, migration_plans.c.batch_id.is_(None)).values(
            batch_id=batch_id, updated_at=rt.clock.now())).rowcount)

    batch = batches.create(rt, "migrate", {"workflow": plan["workflow"], "version": plan["from_version"]},
                           plan=plan_id, total=total, fence=take)
    if batch is None:  # applied at the same moment by someone else: theirs is the batch
        return batches.get(rt, stored(rt, plan_id)["batch_id"])
    return batch


def movable(plan_id: str) -> tuple:
    """The runs of a plan that can move, as (source, conditions) for a batch (engine/batch_work.py)."""
    source = runs.join(migration_runs, and_(migration_runs.c.run_id == runs.c.id, migration_runs.c.plan_id == plan_id,
                                            migration_runs.c.outcome != moving.IMPOSSIBLE))
    return source, []


def list_plans(rt, *, workflow=None, limit=50) -> list[dict]:
    query = select(migration_plans).order_by(migration_plans.c.id.desc()).limit(limit)
    if workflow is not None:
        query = query.where(migration_plans.c.workflow == workflow)
    with rt.db.read() as conn:
        rows = conn.execute(query).mappings().all()
    return [{k: r[k] for k in ("id", "workflow", "from_version", "to_version", "mapping", "counts", "status",
                               "batch_id")} | {"created_at": iso(r["created_at"])} for r in rows]

