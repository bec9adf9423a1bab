"""Reading runs and their history (reads never go through the transition function)."""

import math
from dataclasses import asdict, dataclass

from sqlalchemy import and_, bindparam, false, func, or_, select, text

from . import search as search_fields
from .errors import InvalidData, RunNotFound
from .ids import ID_SLACK, id_at
from .models import PARALLEL, history, runs
from .timeparse import iso

MAX_PAGE = 500
# LIKE's escape character, named explicitly: without an ESCAPE clause MariaDB reads a backslash
# as one and the others read none.
ESCAPE = "/"


@dataclass(frozen=True)
class Run:
    id: str
    workflow: str
    version: int
    status: str
    state: str
    configuration: list
    data: dict
    business_key: str | None
    idempotency_key: str | None
    last_seq: int
    created_at: float
    updated_at: float
    finished_at: float | None
    parent_id: str | None = None  # a child run's parent
    parent_state: str | None = None  # the parent's state that started it
    paused_at: float | None = None  # paused by an operator: no step starts, no timer fires
    priority: int = 0  # higher first where steps wait for a slot (engine/limits.py)
    admission_since: float | None = None  # waiting for a slot of its workflow's max_active (engine/admission.py)

    @classmethod
    def from_row(cls, row) -> "Run":
        out = {name: row[name] for name in cls.__dataclass_fields__ if name not in ("priority", "admission_since")}
        return cls(**out, priority=row.get("priority") or 0, admission_since=row.get("admission_since"))

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("created_at", "updated_at", "finished_at", "paused_at", "admission_since"):
            out[name] = iso(out[name])
        return out


@dataclass(frozen=True)
class HistoryEntry:
    seq: int
    at: float
    kind: str
    event: str | None
    source: str | None
    target: str | None
    cause: str | None
    data: dict | None
    detail: dict | None

    @classmethod
    def from_row(cls, row) -> "HistoryEntry":
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})

    def to_dict(self) -> dict:
        out = asdict(self)
        out["at"] = iso(self.at)
        return out


@dataclass(frozen=True)
class Page:
    runs: list
    next: str | None


def get_run(conn, run_id) -> Run:
    row = conn.execute(select(runs).where(runs.c.id == run_id)).mappings().first()
    if row is None:
        raise RunNotFound(run_id)
    return Run.from_row(row)


def get_history(conn, run_id, after: int = 0, limit: int | None = None) -> list[HistoryEntry]:
    query = (select(history).where(history.c.run_id == run_id, history.c.seq > after)
             .order_by(history.c.seq))
    if limit is not None:
        query = query.limit(limit)
    return [HistoryEntry.from_row(r) for r in conn.execute(query).mappings()]


def list_runs(conn, *, workflow=None, version=None, status=None, state=None, business_key=None,
              created_after=None, created_before=None, cursor=None, limit=50, search=None,
              id_prefix=None, business_key_nocase=None, ids=None) -> Page:
    """Newest first; ``cursor`` is the ``next`` of the previous page (a run id: ids sort by time).

    ``search``: conditions on search fields (``engine.search.conditions``), each a join;
    ``id_prefix``: runs whose id starts with it (lowercase hex), a range of the primary key;
    ``business_key_nocase``: the business key, ignoring case as the database's ``lower()`` does
    (SQLite: ASCII letters only). No index serves it: the walk filters runs newest first;
    ``ids``: only these runs (a selection)."""
    _check_limit(limit)
    source, conditions = run_filter(workflow=workflow, version=version, status=status,
                                    business_key=business_key, created_after=created_after,
                                    created_before=created_before, search=search, id_prefix=id_prefix,
                                    business_key_nocase=business_key_nocase, ids=ids)
    conditions += _after_cursor(cursor)
    if state is None:
        rows = _newest(conn, conditions, limit + 1, source)
    else:
        # No index serves an OR of LIKEs: two index walks instead, the runs in exactly this state
        # and the parallel runs (few, indexed apart) with it among their leaves. They never overlap.
        rows = _newest(conn, [*conditions, runs.c.state == state], limit + 1, source)
        rows += _newest(conn, [*conditions, _parallel(), _among_leaves(state)], limit + 1, source)
        rows = sorted(rows, key=lambda run: run.id, reverse=True)[:limit + 1]
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(runs=rows, next=rows[-1].id if more else None)


def run_filter(*, workflow=None, version=None, status=None, business_key=None, created_after=None,
               created_before=None, search=None, id_prefix=None, business_key_nocase=None, ids=None,
               state=None) -> tuple:
    """The runs ``list_runs`` filters by, as (the runs table joined to the search fields'
    rows, conditions): what ``list_runs``, ``count_runs`` and bulk actions select with. ``state``
    here is one condition (an OR over the leaves); ``list_runs`` walks its two halves apart."""
    source = search_fields.joins(runs, search) if search else runs
    conditions = _equal((runs.c.workflow, workflow), (runs.c.version, version),
                        (runs.c.status, status), (runs.c.business_key, business_key))
    conditions += created_between(created_after, created_before)
    conditions += with_id_prefix(id_prefix)
    if business_key_nocase is not None:
        conditions.append(key_ignoring_case(business_key_nocase))
    if ids is not None:
        conditions.append(runs.c.id.in_(list(ids)))
    if state is not None:
        conditions.append(in_state(state))
    return source, conditions


def count_runs(conn, **filters) -> int:
    """How many runs ``run_filter(**filters)`` selects."""
    source, conditions = run_filter(**filters)
    return conn.execute(select(func.count()).select_from(source).where(*conditions)).scalar_one()


def list_children(conn, parent_id, *, status=None, workflow=None, state=None, cursor=None,
                  limit=50) -> Page:
    """The child runs of ``parent_id``, newest first, paged like ``list_runs``; ``state`` is the
    parent's state that started them. Walks ix_runs_parent_id_id; RunNotFound for no such parent."""
    _check_limit(limit)
    get_run(conn, parent_id)
    conditions = [runs.c.parent_id == parent_id, *_after_cursor(cursor)]
    conditions += _equal((runs.c.status, status), (runs.c.workflow, workflow), (runs.c.parent_state, state))
    rows = _newest(conn, conditions, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return Page(runs=rows, next=rows[-1].id if more else None)


def _check_limit(limit) -> None:
    if not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise InvalidData(f"limit must be between 1 and {MAX_PAGE}", field="limit")


def _equal(*pairs) -> list:
    return [column == value for column, value in pairs if value is not None]


def _after_cursor(cursor) -> list:
    if cursor is None:
        return []
    if not isinstance(cursor, str) or len(cursor) != 32 or not _is_hex(cursor):
        raise InvalidData("cursor is not a value returned as `next`", field="cursor")
    return [runs.c.id < cursor]


def key_ignoring_case(key: str):
    return func.lower(runs.c.business_key) == func.lower(bindparam(None, key, type_=runs.c.business_key.type))


def with_id_prefix(prefix) -> list:
    """Ids starting with ``prefix``: the range of the primary key from it to it padded with f's."""
    if prefix is None:
        return []
    if not isinstance(prefix, str) or not 1 <= len(prefix) <= 32 or not _is_hex(prefix) or prefix != prefix.lower():
        raise InvalidData("id_prefix must be 1-32 lowercase hex digits", field="id_prefix")
    return [runs.c.id >= prefix, runs.c.id <= prefix + "f" * (32 - len(prefix))]


def _newest(conn, conditions, limit, source=runs) -> list[Run]:
    query = select(runs).select_from(source).where(*conditions).order_by(runs.c.id.desc()).limit(limit)
    return [Run.from_row(r) for r in conn.execute(query).mappings()]


def created_between(after: float | None, before: float | None) -> list:
    """``after <= created_at < before``, and the id range that holds those runs: newest first,
    the planner then walks the primary key from the range's end, not past every newer run."""
    conditions = []
    if after is not None:
        conditions.append(runs.c.created_at >= after)
        if math.isfinite(after):
            conditions.append(runs.c.id >= id_at(after - ID_SLACK, "0"))
    if before is not None:
        conditions.append(runs.c.created_at < before)
        if math.isfinite(before):
            conditions.append(runs.c.id <= id_at(before + ID_SLACK, "f"))
    return conditions


def of_loaded_workflows(registry):
    """Runs whose (workflow, version) ``registry`` has loaded: one (name AND versions) per name."""
    return or_(false(), *(and_(runs.c.workflow == name, runs.c.version.in_(registry.versions(name)))
                          for name in registry.names()))


def in_state(state: str):
    """Runs with ``state`` among their leaves (``runs.state`` holds them comma-joined)."""
    return or_(runs.c.state == state, and_(_parallel(), _among_leaves(state)))


def _parallel():
    # Spelled as the partial index's predicate, as SQL text: planners match it literally.
    return text(PARALLEL)


def _among_leaves(state: str):
    leaf, column = _like_literal(state), runs.c.state
    return or_(column.like(f"{leaf},%", escape=ESCAPE), column.like(f"%,{leaf}", escape=ESCAPE),
               column.like(f"%,{leaf},%", escape=ESCAPE))


def _like_literal(text: str) -> str:
    """``text`` as a LIKE pattern matching only itself (with ``ESCAPE ESCAPE``)."""
    return text.replace(ESCAPE, ESCAPE * 2).replace("%", ESCAPE + "%").replace("_", ESCAPE + "_")


def _is_hex(value: str) -> bool:
    try:
        int(value, 16)
        return True
    except ValueError:
        return False
