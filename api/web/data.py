"""What the pages read: filtered runs, counts per status and per state, a run's path, its children,
its timeline.

Reads only; every change goes through ``Interlock`` (and so ``transitions.apply``).
"""

import json
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import and_, func, or_, select

from engine import queries, search
from engine.errors import InvalidData
from engine.models import history, runs

from .diagram import edge_key

STATUSES = ("running", "waiting", "succeeded", "failed", "cancelled")
PAGE = 50
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RUN_ID_PREFIX = re.compile(r"^[0-9a-f]{1,32}$")
TIMELINE_LIMIT = 1000
CHILDREN_PAGE = 50
# A run page watches its children while one of them may still change (a failed run can be retried).
UNSETTLED = ("running", "waiting", "failed")


@dataclass
class Filters:
    workflow: str | None = None
    status: str | None = None
    state: str | None = None
    since: date | None = None   # created on or after this day (UTC)
    until: date | None = None   # created on or before this day (UTC)
    q: str | None = None        # search-field terms, a business key or the start of a run id
    cursor: str | None = None

    @classmethod
    def from_args(cls, args) -> "Filters":
        def text(name, size=255):
            value = (args.get(name) or "").strip()
            if len(value) > size:
                raise InvalidData(f"{name} is longer than {size} characters", field=name)
            return value or None

        status = text("status")
        if status is not None and status not in STATUSES:
            raise InvalidData(f"status must be one of {', '.join(STATUSES)}", field="status")
        cursor = text("cursor")
        if cursor is not None and not RUN_ID.match(cursor):
            raise InvalidData("cursor is not a value this page links to", field="cursor")
        return cls(workflow=text("workflow", 200), status=status, state=text("state", 200),
                   since=_day(text("from"), "from"), until=_day(text("to"), "to"), q=text("q"), cursor=cursor)

    def args(self, **changes) -> dict:
        """Query arguments for a link to this view with ``changes`` (None drops one)."""
        values = {"workflow": self.workflow, "status": self.status, "state": self.state,
                  "from": self.since.isoformat() if self.since else None,
                  "to": self.until.isoformat() if self.until else None, "q": self.q, "cursor": self.cursor}
        values.update(changes)
        return {k: v for k, v in values.items() if v not in (None, "")}

    @property
    def window(self) -> tuple[float | None, float | None]:
        after = _epoch(self.since) if self.since else None
        before = _epoch(self.until + timedelta(days=1)) if self.until else None
        return after, before


def _day(value, name):
    if value is None:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        raise InvalidData(f"{name} must be a date (YYYY-MM-DD)", field=name) from None


def _epoch(day: date) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()


def search_of(rt, f: Filters) -> tuple[list, str | None]:
    """The search box's text as search-field conditions and the rest (a business key or a run id
    prefix); InvalidSearch for a term the loaded workflows cannot answer."""
    if not f.q:
        return [], None
    terms, rest = search.parse_terms(f.q, known=search.field_types(rt.registry))
    return rt.search_conditions(terms, f.workflow) if terms else [], rest or None


def id_prefix_of(text: str | None) -> str | None:
    """The start of a run id in the search box's text; a shortened id as the pages show it
    ("01a2c3…", copied with its ellipsis) counts too."""
    value = (text or "").lower().removesuffix("…").removesuffix("...")
    return value if RUN_ID_PREFIX.match(value) else None


def list_runs(rt, f: Filters, limit: int = PAGE) -> queries.Page:
    """Newest first, keyset-paginated by id. ``q`` holds search-field terms (``customer:ACME
    total>=10``) and text matching a business key (ignoring case) or the start of a run id."""
    after, before = f.window
    conds, text = search_of(rt, f)
    # Never None: the walk starts past every id, and the query has a condition.
    cursor = f.cursor or "f" * 32
    common = dict(workflow=f.workflow, status=f.status, state=f.state, created_after=after,
                  created_before=before, search=conds or None, cursor=cursor, limit=limit)
    if text is None:
        return _list(rt, common)
    # Two walks, each keyset-paged from the same cursor: the runs with that business key and
    # those whose id starts with the text. Their newest ``limit`` together is this page.
    pages = [_list(rt, {**common, "business_key_nocase": text})]
    prefix = id_prefix_of(text)
    if prefix is not None:
        pages.append(_list(rt, {**common, "id_prefix": prefix}))
    found = {r.id: r for page in pages for r in page.runs}
    rows = sorted(found.values(), key=lambda r: r.id, reverse=True)
    more = len(rows) > limit or any(page.next is not None for page in pages)
    rows = rows[:limit]
    return queries.Page(runs=rows, next=rows[-1].id if more and rows else None)


def _list(rt, filters) -> queries.Page:
    """``Interlock.list_runs`` with conditions already checked (``search_of``)."""
    with rt.db.read() as conn:
        return queries.list_runs(conn, **filters)


def status_counts(rt, f: Filters) -> dict:
    """Runs per status under the page's filters except the status itself."""
    after, before = f.window
    conds, text = search_of(rt, f)
    query = select(runs.c.status, func.count()).group_by(runs.c.status)
    if conds:
        query = query.select_from(search.joins(runs, conds))
    if f.workflow:
        query = query.where(runs.c.workflow == f.workflow)
    if f.state:
        query = query.where(queries.in_state(f.state))
    query = query.where(*queries.created_between(after, before))
    if text is not None:
        prefix = id_prefix_of(text)
        by_key = queries.key_ignoring_case(text)
        query = query.where(or_(by_key, and_(*queries.with_id_prefix(prefix))) if prefix else by_key)
    with rt.db.read() as conn:
        found = dict(conn.execute(query).all())
    return {status: found.get(status, 0) for status in STATUSES}


def state_counts(rt, workflow: str) -> dict:
    """{version: {state: runs in it now}} for one workflow."""
    query = (select(runs.c.version, runs.c.state, func.count()).where(runs.c.workflow == workflow)
             .group_by(runs.c.version, runs.c.state))
    out: dict = {}
    with rt.db.read() as conn:
        for version, state, n in conn.execute(query):
            per = out.setdefault(version, {})
            for leaf in state.split(","):
                per[leaf] = per.get(leaf, 0) + n
    return out


def path_of(rt, run_id: str) -> tuple[set, set]:
    """States the run has been in and transitions it took (edge keys), from its history."""
    query = (select(history.c.kind, history.c.event, history.c.source, history.c.target)
             .where(history.c.run_id == run_id, history.c.kind.in_(("started", "transition")))
             .order_by(history.c.seq))
    visited, taken = set(), set()
    with rt.db.read() as conn:
        for kind, event, source, target in conn.execute(query):
            sources = (source or "").split(",") if source else []
            targets = (target or "").split(",") if target else []
            visited.update(sources)
            visited.update(targets)
            if kind == "transition" and event:
                taken.update(edge_key(s, event, t) for s in sources for t in targets)
    return visited, taken


@dataclass
class Children:
    """A page of a run's children (newest first) and how many it has per status."""

    page: queries.Page
    counts: dict
    cursor: str | None  # the page shown: None for the newest

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def unsettled(self) -> bool:
        return any(self.counts.get(status) for status in UNSETTLED)


def children(rt, run_id: str, cursor: str | None = None, limit: int = CHILDREN_PAGE) -> Children:
    if cursor is not None and not RUN_ID.match(cursor):
        cursor = None  # not a link this page made: the newest children instead
    page = rt.children(run_id, cursor=cursor, limit=limit)
    query = select(runs.c.status, func.count()).where(runs.c.parent_id == run_id).group_by(runs.c.status)
    with rt.db.read() as conn:
        counts = dict(conn.execute(query).all())
    return Children(page=page, counts={status: counts[status] for status in STATUSES if counts.get(status)},
                    cursor=cursor)


# Entries whose data is merged into the run's data (a step's result, a data update); the data
# an event is sent with is the event's own, and what callbacks change is not in the history.
MERGING = ("started", "step_succeeded", "step_rechecked", "data_updated")
DIFF_VALUE = 200   # characters of a value shown in a data diff


def timeline(rt, run_id: str, after: int = 0, limit: int = TIMELINE_LIMIT) -> tuple[list, float | None, bool]:
    """History entries after ``after`` (the newest ``limit`` of them) as dicts for the template,
    the time of the entry just before them (for "time since previous") and whether older ones were cut."""
    with rt.db.read() as conn:
        newest = conn.execute(select(func.max(history.c.seq)).where(history.c.run_id == run_id)).scalar() or 0
        start = max(after, newest - limit)
        entries = queries.get_history(conn, run_id, start, limit)
        before = None
        if start > 0:
            before = conn.execute(select(history.c.at).where(
                history.c.run_id == run_id, history.c.seq == start)).scalar()
            # The run's data as the history knows it before these entries: its start data and the
            # results merged since (what callbacks change is not recorded).
            merged = conn.execute(select(history.c.data).where(
                history.c.run_id == run_id, history.c.seq <= start, history.c.kind.in_(MERGING))
                .order_by(history.c.seq)).scalars().all()
        else:
            merged = []
    known: dict = {}
    for patch in merged:
        known.update(patch or {})
    rows, previous = [], before
    for e in entries:
        row = describe_entry(e, previous)
        if e.kind in MERGING and e.data:
            if e.kind != "started":
                row["diff"] = data_diff(known, e.data)
            known.update(e.data)
        rows.append(row)
        previous = e.at
    return rows, before, start > after


def _shown(value) -> str:
    text = json.dumps(value, sort_keys=True, ensure_ascii=False)
    return text if len(text) <= DIFF_VALUE else text[:DIFF_VALUE] + "…"


def data_diff(before: dict, patch: dict) -> list[dict]:
    """What merging ``patch`` changes in ``before``: [{key, op (added/changed), old, new}],
    keys whose value stays the same left out."""
    out = []
    for key in sorted(patch):
        if key not in before:
            out.append({"key": key, "op": "added", "old": None, "new": _shown(patch[key])})
        elif before[key] != patch[key]:
            out.append({"key": key, "op": "changed", "old": _shown(before[key]), "new": _shown(patch[key])})
    return out


GANTT_ENTRIES = 2000


def gantt(rt, run, now: float) -> dict | None:
    """The run's time line for a Gantt chart: a lane per state (its stays), a lane per step (its
    attempts and the waits before retries) and one for timers (when they fired), each bar with
    its start, end and a description; times from the newest ``GANTT_ENTRIES`` history entries."""
    query = (select(history.c.seq, history.c.at, history.c.kind, history.c.event, history.c.source,
                    history.c.target, history.c.detail)
             .where(history.c.run_id == run.id).order_by(history.c.seq.desc()).limit(GANTT_ENTRIES))
    with rt.db.read() as conn:
        entries = list(reversed(conn.execute(query).mappings().all()))
    if not entries:
        return None
    end = run.finished_at or now
    lanes: dict = {}

    def bar(lane, kind, start, stop, title):
        lanes.setdefault(lane, {"name": lane[1], "kind": lane[0], "bars": []})["bars"].append(
            {"start": start, "end": max(stop, start), "kind": kind, "title": title})

    entered: dict = {}
    waiting: dict = {}   # step: when its failed attempt ended (a retry waits from then)
    began: dict = {}     # step: its attempt's start (the step_started entry)
    version = {"number": run.version, "since": entries[0]["at"], "moved": False}  # the versions lane
    for e in entries:
        detail = e["detail"] or {}
        if e["kind"] == "started":
            version["number"] = detail.get("version", version["number"])
        if e["kind"] == "migrated":
            bar(("version", "version"), "version", version["since"], e["at"], f"on v{detail.get('from_version')} for {{d}}")
            bar(("version", "version"), "migrated", e["at"], e["at"],
                f"migrated v{detail.get('from_version')} → v{detail.get('to_version')}: {e['source']} → {e['target']}")
            version.update(number=detail.get("to_version"), since=e["at"], moved=True)
        if e["kind"] in ("started", "transition", "migrated"):
            at = e["at"]
            for state in (e["source"] or "").split(",") if e["kind"] != "started" else []:
                if state in entered and state not in (e["target"] or "").split(","):
                    since = entered.pop(state)
                    bar(("state", state), "dwell", since, at, f"in {state} for {{d}}")
            for state in (e["target"] or "").split(","):
                if state and state not in entered:
                    entered[state] = at
        elif e["kind"] == "step_started":
            began[detail.get("step") or "step"] = e["at"]
        elif e["kind"] in ("step_succeeded", "step_failed", "step_rechecked"):
            step = detail.get("step") or "step"
            duration = float(detail.get("duration") or 0.0)
            started = began.pop(step, e["at"] - duration)
            if step in waiting:
                since = waiting.pop(step)
                if started > since:
                    bar(("step", step), "wait", since, started, f"{step}: waited {{d}} before attempt {detail.get('attempt')}")
            outcome = {"step_succeeded": "succeeded", "step_failed": "failed", "step_rechecked": "not yet"}[e["kind"]]
            bar(("step", step), "failed" if e["kind"] == "step_failed" else "attempt", started, started + duration,
                f"{step} attempt {detail.get('attempt')}: {outcome} in {{d}}")
            if e["kind"] == "step_succeeded" or detail.get("final"):
                waiting.pop(step, None)
            else:  # the next attempt (a retry, or a recheck) waits from here
                waiting[step] = started + duration
        elif e["kind"] == "timer_fired":
            due = detail.get("due_at")
            bar(("timer", f"{detail.get('timer') or '?'} (timer)"), "timer", e["at"], e["at"],
                f"timer {detail.get('timer')} fired" + (f", {detail.get('lag'):.3f} s after it was due" if due else ""))
    for state, since in entered.items():
        bar(("state", state), "dwell current" if run.status in ("running", "waiting") else "dwell",
            since, end, f"in {state} for {{d}}" + (" (so far)" if run.status in ("running", "waiting") else ""))
    if version["moved"]:
        bar(("version", "version"), "version", version["since"], end, f"on v{version['number']} for {{d}}")
    for step, since in waiting.items():
        if run.status in ("running", "waiting") and end > since:
            bar(("step", step), "wait", since, end, f"{step}: waiting {{d}} for the next attempt")
    begin = min([entries[0]["at"]] + [b["start"] for lane in lanes.values() for b in lane["bars"]])
    span = max(end - begin, 1e-3)
    order = {"version": -1, "state": 0, "step": 1, "timer": 2}
    out = []
    for lane in sorted(lanes.values(), key=lambda l: (order[l["kind"]], min(b["start"] for b in l["bars"]))):
        for b in lane["bars"]:
            b["x"] = round(100 * (b["start"] - begin) / span, 3)
            b["w"] = round(max(100 * (b["end"] - b["start"]) / span, 0.4), 3)
            b["x"] = min(b["x"], 100 - b["w"])
            b["title"] = b["title"].replace("{d}", _duration(b["end"] - b["start"]))
        out.append(lane)
    return {"lanes": out, "begin": begin, "end": end, "span": span}


def _duration(seconds) -> str:
    from . import duration

    return duration(seconds)


def describe_entry(e, previous_at) -> dict:
    detail = e.detail or {}
    what, note = "", ""
    if e.kind == "started":
        what = f"→ {e.target}"
    elif e.kind == "transition":
        what = f"{e.event}: {e.source or '∅'} → {e.target}"
    elif e.kind.startswith("step_"):
        what = f"{detail.get('step')} attempt {detail.get('attempt')}"
        if e.kind == "step_failed":
            note = str(detail.get("error") or "")
            note += " (final)" if detail.get("final") else \
                f" (retry in {_duration(detail.get('retry_in'))})" if detail.get("retry_in") is not None else ""
        elif e.kind == "step_rechecked":
            note = f"not yet, again in {_duration(detail.get('recheck_in'))}"
        elif e.kind == "step_succeeded":
            note = f"→ {e.event}" if e.event else "done"
    elif e.kind == "timer_fired":
        what = f"{detail.get('timer')} ({detail.get('kind')})"
        if e.event:
            what += f" → {e.event}"
    elif e.kind == "child_started":
        what = f"{detail.get('name')}: {detail.get('workflow')} v{detail.get('version')}"
        note = f"key {detail['business_key']}" if detail.get("business_key") else ""
    elif e.kind == "child_ended":
        what = f"{detail.get('status')} in {detail.get('state')}"
    elif e.kind == "migrated":
        what = f"v{detail.get('from_version')} → v{detail.get('to_version')}: {e.source} → {e.target}"
        note = "; ".join(str(c) for c in detail.get("changes") or []) or "nothing else changed"
    else:
        what = e.event or ""
        note = ", ".join(f"{k}={v}" for k, v in detail.items()
                         if v is not None and k not in ("traceback", "child"))
        if e.kind in ("cancelled", "failed") and e.source:
            what = f"in {e.source}" + (f" ({what})" if what else "")
    return {
        "seq": e.seq, "at": e.at, "kind": e.kind, "what": what, "note": note, "cause": e.cause,
        "since_previous": None if previous_at is None else e.at - previous_at,
        "traceback": detail.get("traceback"),
        # The child run an entry is about (started, ended, its end ignored, the event it sent).
        "child": child if isinstance(child := detail.get("child"), str) and RUN_ID.match(child) else None,
        "data": json.dumps(e.data, indent=2, sort_keys=True) if e.data and e.kind != "started" else None,
        "logs": [r for r in detail.get("logs") or [] if isinstance(r, dict)],
        "diff": None,
    }
