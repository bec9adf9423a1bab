"""Search fields: top-level fields of a run's data a workflow declares for filtering runs.

    class Order(Workflow):
        search = {"customer": str, "total": float, "country": str}

Each declared field of a run's data is one ``run_search`` row (run, field, text or number),
written by the transition function in the run's own transaction (``sync``, called from
``Change.finish``): only the fields whose value changed, so a change that leaves them alone
writes nothing. ``conditions`` turns filters (``{"customer": "ACME", "total": (">=", 10)}``)
into joins that ``queries.list_runs`` adds to its other filters.

What is indexed, by declared type (anything else is not indexed, and never an error: the run's
data is the user's, and a transition is not refused for it):

- ``str``: a string of at most 255 characters without NUL, compared by code point (case-sensitive);
- ``int``: an integer (not a bool), or a float with no fractional part (JSON has one number type);
- ``float``: any number (not a bool);
- ``bool``: true or false;
- ``datetime``: an ISO 8601 time (UTC unless it has an offset) or epoch seconds, as timers read them.

A field missing from the data, or null, has no row. Numbers are stored as doubles: integers
beyond 2**53 are compared approximately.
"""

import math
import re
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import and_, bindparam, delete, insert, select

from . import hotsql
from .errors import DefinitionError, InvalidSearch
from .models import run_search, runs
from .timeparse import parse_time

TYPES = {str: "str", int: "int", float: "float", bool: "bool", datetime: "datetime"}
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")
MAX_TEXT = 255
# Operators by their spellings: the Python API's symbols and the query string's names.
OPERATORS = {"=": "eq", "==": "eq", "eq": "eq", ">": "gt", "gt": "gt", ">=": "gte", "gte": "gte",
             "<": "lt", "lt": "lt", "<=": "lte", "lte": "lte", "prefix": "prefix"}
_ALLOWED = {"str": ("eq", "prefix"), "int": ("eq", "gt", "gte", "lt", "lte"),
            "float": ("eq", "gt", "gte", "lt", "lte"), "bool": ("eq",),
            "datetime": ("eq", "gt", "gte", "lt", "lte")}


# -- the declaration ----------------------------------------------------------------------

def declared(cls, class_name) -> dict | None:
    """``{field: type name}`` from the class's ``search``, or None; DefinitionError if malformed."""
    value = getattr(cls, "search", None)
    if value is None or value == {} or type(value).__module__.startswith("statemachine"):
        return None  # none declared (or a state or event named "search")
    if not isinstance(value, dict):
        raise DefinitionError(f"{class_name}: search must be a dict of data field names to types, "
                              f"like {{\"customer\": str, \"total\": float}}; got {type(value).__name__}")
    out = {}
    for name, kind in value.items():
        if not isinstance(name, str) or not FIELD_NAME.fullmatch(name):
            raise DefinitionError(f"{class_name}: search field {name!r} must be a name of letters, digits "
                                  "and _ (not starting with a digit, at most 100 characters)")
        if kind not in TYPES or isinstance(kind, bool):
            raise DefinitionError(f"{class_name}: search field {name!r} has type {kind!r}; use one of "
                                  "str, int, float, bool, datetime")
        out[name] = TYPES[kind]
    return out


# -- values --------------------------------------------------------------------------------

def indexed(kind: str, value):
    """(text, number) stored for ``value`` of a field of type ``kind``, or None: not indexed."""
    if value is None:
        return None
    if kind == "str":
        if isinstance(value, str) and len(value) <= MAX_TEXT and "\x00" not in value:
            return value, None
        return None
    if kind == "bool":
        return (None, 1.0 if value else 0.0) if isinstance(value, bool) else None
    if isinstance(value, bool):
        return None
    if kind == "datetime":
        number = parse_time(value)
    elif kind == "int":
        number = float(value) if isinstance(value, int) or (isinstance(value, float) and value.is_integer()) \
            else None
    else:
        number = float(value) if isinstance(value, (int, float)) else None
    if number is None or not math.isfinite(number):
        return None
    return None, number


def values(fields: dict, data: dict) -> dict:
    """``{field: (text, number)}`` for the declared fields ``data`` holds indexable values in."""
    out = {}
    for name, kind in fields.items():
        found = indexed(kind, data.get(name))
        if found is not None:
            out[name] = found
    return out


# -- keeping the table equal to the data ----------------------------------------------------

_b = bindparam
INSERT = hotsql.Statement(lambda _dialect, keys: insert(run_search).values({k: _b(k) for k in keys}),
                          lambda keys: hotsql.Arrays.insert(run_search, keys))
DELETE = hotsql.Statement(
    lambda _dialect, _keys: delete(run_search).where(run_search.c.run_id == _b("b_run"),
                                                     run_search.c.field == _b("b_field")),
    lambda _keys: hotsql.Arrays(
        "DELETE FROM run_search USING :rows WHERE run_search.run_id = u.b_run AND run_search.field = u.b_field",
        {"b_run": run_search.c.run_id, "b_field": run_search.c.field}))


def sync(change) -> None:
    """Queue the writes that make the run's rows equal its data after ``change``: a delete and an
    insert for each field whose value changed, nothing for the others."""
    fields = change.cls._search
    after = values(fields, change.ctx.data)
    before = {} if change.new else change.search_before
    if after == before:
        return
    run_id, writes = change.row["id"], change.writes
    for name in fields:
        old, new = before.get(name), after.get(name)
        if old == new:
            continue
        if not change.new:
            writes.search_deletes.append({"b_run": run_id, "b_field": name})
        if new is not None:
            writes.search_inserts.append({"run_id": run_id, "field": name,
                                          "text_value": new[0], "num_value": new[1]})


def flush(conn, writes) -> None:
    """Deletes before inserts: a changed field is one of each."""
    for statement, rows in ((DELETE, writes.search_deletes), (INSERT, writes.search_inserts)):
        if rows:
            hotsql.execute_many(conn, statement, rows)
            rows.clear()


def reindex(conn, cls, run_ids) -> None:
    """Write the rows of runs of ``cls`` from their stored data (for runs started before the
    workflow declared its fields): off the transition path, for maintenance."""
    fields = cls._search or {}
    for run_id, data in conn.execute(select(runs.c.id, runs.c.data).where(runs.c.id.in_(list(run_ids)))):
        conn.execute(delete(run_search).where(run_search.c.run_id == run_id))
        rows = [{"run_id": run_id, "field": name, "text_value": t, "num_value": n}
                for name, (t, n) in values(fields, data).items()]
        if rows:
            conn.execute(insert(run_search), rows)


# -- filters ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Condition:
    field: str
    op: str          # eq, gt, gte, lt, lte, prefix
    value: object    # text (str fields) or a number (the others)
    numeric: bool


def field_types(registry, workflow=None) -> dict:
    """``{field: {type name: [workflow names]}}`` over the loaded workflows (or ``workflow``'s)."""
    out: dict = {}
    for cls in registry.all():
        if workflow is not None and cls.workflow_name != workflow:
            continue
        for name, kind in (cls._search or {}).items():
            out.setdefault(name, {}).setdefault(kind, [])
            if cls.workflow_name not in out[name][kind]:
                out[name][kind].append(cls.workflow_name)
    return out


def conditions(registry, search: dict, workflow=None) -> list[Condition]:
    """Filters as conditions, checked against the loaded workflows' declarations.

    ``search``: ``{field: value}`` (equality), ``{field: (op, value)}``, or a list of such
    pairs (``[(">=", 10), ("<", 100)]``). A value may be text, as a query string gives it.
    InvalidSearch (nothing read) for a field no loaded workflow declares, an operator its type
    has not, or a value that is not of its type."""
    if not search:
        return []
    if not isinstance(search, dict):
        raise InvalidSearch("search must map field names to values or (operator, value) pairs")
    types = field_types(registry, workflow)
    out = []
    for name, spec in search.items():
        kinds = types.get(name)
        if not kinds:
            raise InvalidSearch(f"no loaded workflow declares search field {name!r}" if workflow is None
                                else f"workflow {workflow!r} declares no search field {name!r}", field=name)
        if len(kinds) > 1:
            said = "; ".join(f"{kind} in {', '.join(names)}" for kind, names in sorted(kinds.items()))
            raise InvalidSearch(f"search field {name!r} has different types ({said}): filter by workflow too",
                                field=name)
        [kind] = kinds
        pairs = spec if isinstance(spec, list) else [spec]
        for pair in pairs:
            op, value = pair if isinstance(pair, tuple) else ("eq", pair)
            out.append(_condition(name, kind, op, value))
    return out


def _condition(name, kind, op, value) -> Condition:
    code = OPERATORS.get(op) if isinstance(op, str) else None
    if code is None:
        raise InvalidSearch(f"unknown operator {op!r} for search field {name!r}; use one of "
                            "eq, gt, gte, lt, lte, prefix", field=name)
    if code not in _ALLOWED[kind]:
        raise InvalidSearch(f"search field {name!r} is a {kind}: it takes {', '.join(_ALLOWED[kind])}, "
                            f"not {code}", field=name)
    parsed = _parse(kind, value)
    if parsed is None:
        raise InvalidSearch(f"search field {name!r} is a {kind}: {value!r} is not one{_HINT[kind]}", field=name)
    text, number = parsed
    return Condition(name, code, number if text is None else text, text is None)


_HINT = {"str": " (text of at most 255 characters, no NUL)", "int": " (an integer)", "float": " (a number)",
         "bool": " (true or false)", "datetime": " (an ISO 8601 time, like 2026-01-31T12:00:00Z)"}


def _parse(kind, value):
    """A filter's value as stored: query strings give text, the Python API typed values."""
    if kind == "bool" and isinstance(value, str):
        value = {"true": True, "false": False, "1": True, "0": False}.get(value.lower(), value)
    elif kind in ("int", "float") and isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        value = int(number) if kind == "int" and number.is_integer() else number
        if kind == "int" and not isinstance(value, int):
            return None
    elif kind == "datetime" and isinstance(value, datetime):
        value = (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    elif kind == "datetime" and isinstance(value, str) and not re.match(r"\d{4}-\d{2}-\d{2}", value):
        return None  # epoch seconds as text would pass for a time: the document says ISO 8601
    return indexed(kind, value)


def joins(source, conds: list[Condition]):
    """``source`` (the runs table) joined to one ``run_search`` alias per filtered field: each
    condition on the field narrows its rows, so ``total >= 10 AND total < 100`` is one index range."""
    by_field: dict = {}
    for cond in conds:
        by_field.setdefault(cond.field, []).append(cond)
    for i, (name, group) in enumerate(by_field.items()):
        alias = run_search.alias(f"search_{i}")
        clauses = [alias.c.run_id == runs.c.id, alias.c.field == name]
        for cond in group:
            clauses.extend(_compare(alias, cond))
        source = source.join(alias, and_(*clauses))
    return source


def _compare(alias, cond: Condition) -> list:
    column = alias.c.num_value if cond.numeric else alias.c.text_value
    if cond.op == "eq":
        return [column == cond.value]
    if cond.op == "prefix":
        # A range, not LIKE: the column compares by code point on every database, and a range
        # walks the index where LIKE would not (PostgreSQL) or would fold case (SQLite).
        upper = _after_prefix(cond.value)
        return [column >= cond.value] + ([column < upper] if upper is not None else [])
    return [{"gt": column > cond.value, "gte": column >= cond.value,
             "lt": column < cond.value, "lte": column <= cond.value}[cond.op]]


def _after_prefix(prefix: str) -> str | None:
    """The least string greater than every string starting with ``prefix`` (None: no bound)."""
    chars = list(prefix)
    while chars:
        code = ord(chars[-1]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        if code <= 0x10FFFF:
            chars[-1] = chr(code)
            return "".join(chars)
        chars.pop()
    return None


def parse_query_args(args) -> dict:
    """``search.<field>[.<op>]`` query arguments (a MultiDict) as ``conditions`` takes them."""
    out: dict = {}
    for key in args:
        if not key.startswith("search."):
            continue
        name, _, op = key[len("search."):].partition(".")
        if not name:
            raise InvalidSearch(f"query argument {key!r} names no field: use search.<field>[.<op>]", field=key)
        for value in args.getlist(key):
            out.setdefault(name, []).append((op or "eq", value))
    return out


# -- terms typed in a search box (the runs page, the CLI) ----------------------------------------

_TERM = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>>=|<=|:|=|>|<)(?P<value>.*)", re.S)
_TERM_OPS = {":": "eq", "=": "eq", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def parse_terms(text: str, known=None) -> tuple[dict, str]:
    """``customer:ACME total>=10 country:N*`` as ``conditions`` takes it, and the rest of the text.

    A term is ``field:value`` or ``field=value`` (``value*``: a prefix), ``field>value``,
    ``>=``, ``<``, ``<=``; quote a value with spaces (``customer:"ACME Corp"``). With ``known``
    (field names), a word that names no known field stays text: a business key may hold a colon."""
    try:
        words = shlex.split(text)
    except ValueError:  # an unbalanced quote: plain words
        words = text.split()
    terms: dict = {}
    rest = []
    for word in words:
        found = _TERM.fullmatch(word)
        if found is None or (known is not None and found["name"] not in known):
            rest.append(word)
            continue
        op, value = _TERM_OPS[found["op"]], found["value"]
        if op == "eq" and value.endswith("*"):
            op, value = "prefix", value[:-1]
        terms.setdefault(found["name"], []).append((op, value))
    if not terms:
        return {}, text.strip()
    return terms, " ".join(rest)
