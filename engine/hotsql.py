"""The transition path's statements, run on the driver's cursor.

SQLAlchemy builds and compiles each statement once per dialect (so one definition serves
SQLite, PostgreSQL and MariaDB) and supplies the type conversions; running it on the
DBAPI cursor skips SQLAlchemy's per-execution work, which cost several times the
statement itself. Driver errors are raised as SQLAlchemy's (an IntegrityError is still
an IntegrityError), and a connection the server dropped is invalidated, as SQLAlchemy
does for its own statements, so ``Database.transaction`` retries it the same way.
"""

from contextlib import contextmanager
from dataclasses import dataclass
from operator import itemgetter

from sqlalchemy import JSON, Double, Integer, String, Text
from sqlalchemy.exc import DBAPIError


@dataclass
class _Compiled:
    sql: str
    names: list  # bind names in the order the driver takes them (None: by name)
    defaults: dict  # values fixed in the statement ("armed", ("queued", "running"), ...)
    processors: dict  # bind name -> the type's conversion to the driver's value
    columns: list  # result column names
    types: list  # and their types, as the dialect implements them
    results: list | None = None  # result column conversions, known once the driver described them
    ordered: object = None  # the values of ``names``, in order, from a dict of them (positional drivers)

    def __post_init__(self):
        if self.names is None:
            return
        if len(self.names) > 1:
            self.ordered = itemgetter(*self.names)
        else:  # itemgetter of one name gives the value, of none is an error
            self.ordered = lambda values, names=tuple(self.names): tuple(values[name] for name in names)


class Statement:
    """A statement compiled per dialect (and per set of keys given, for INSERTs)."""

    def __init__(self, build, arrays=None):
        """``build(dialect name, keys)``: the SQLAlchemy statement for rows with ``keys``;
        ``arrays(keys)``: its PostgreSQL form for many rows at once (see ``Arrays``)."""
        self.build, self.arrays = build, arrays
        self._compiled: dict = {}
        self._arrays: dict = {}

    def arrays_for(self, keys: tuple) -> "Arrays | None":
        if self.arrays is None:
            return None
        found = self._arrays.get(keys)
        if found is None:
            found = self._arrays[keys] = self.arrays(keys)
        return found

    def compiled(self, dialect, keys: tuple) -> _Compiled:
        found = self._compiled.get((dialect.name, keys))
        if found is None:
            found = self._compiled[(dialect.name, keys)] = _compile(self.build(dialect.name, keys), dialect)
        return found


def _compile(statement, dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    if compiled.post_compile_params:
        # An IN list is rendered per execution: spell it as one bind per item instead.
        raise ValueError(f"not a hot-path statement (it has an expanding IN): {compiled.string}")
    binds = compiled.binds
    names = list(compiled.positiontup) if compiled.positional else None
    defaults = {name: bind.effective_value for name, bind in binds.items() if not bind.required}
    processors = {}
    for name, bind in binds.items():
        processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if processor is not None:
            processors[name] = processor
    columns, types = [], []
    if statement.is_select or statement.is_dml:  # a SELECT's columns, or what an UPDATE ... RETURNING gives
        for column in (statement.selected_columns if statement.is_select else statement.exported_columns):
            columns.append(column.key)
            types.append(column.type.dialect_impl(dialect))
    return _Compiled(compiled.string, names, defaults, processors, columns, types)


def _bind(compiled: _Compiled, params: dict):
    values = {**compiled.defaults, **params} if compiled.defaults else params
    for name, processor in compiled.processors.items():
        values[name] = processor(values[name])
    if compiled.ordered is None:
        return values
    return compiled.ordered(values)


def execute_many(conn, statement: Statement, rows: list) -> None:
    """Run ``statement`` for each of ``rows`` (dicts with the same keys) in one call."""
    keys = tuple(rows[0])
    compiled = statement.compiled(conn.dialect, keys)
    values = [_bind(compiled, dict(row)) for row in rows]
    arrays = statement.arrays_for(keys) if len(rows) > 1 and conn.dialect.name == "postgresql" else None
    if arrays is not None:
        params = {name: [row[name] for row in values] for name in arrays.names}
        _on_cursor(conn, arrays.sql, params, lambda cursor: cursor.execute(arrays.sql, params))
        return
    _on_cursor(conn, compiled.sql, values, lambda cursor: cursor.executemany(compiled.sql, values))


class Arrays:
    """PostgreSQL: many rows as one statement over ``unnest()``ed arrays, one per bind name
    (``:name`` in ``sql``, rows as ``u.name``): the server parses, plans and starts one
    statement for the batch instead of one per row.

    The arrays are sent in binary (``%(name)b``): as text, psycopg quotes and escapes every
    element of an array literal with regular expressions, which for JSON columns cost several
    times the statement (a 200-element JSON array: 15 ms as text, 3 ms in binary)."""

    def __init__(self, sql: str, types: dict):
        """``types``: bind name -> the column whose PostgreSQL type its array has."""
        self.names = list(types)
        unnest = ", ".join(f"%({name})b::{_pg_type(column)}[]" for name, column in types.items())
        self.sql = sql.replace(":rows", f"unnest({unnest}) AS u({', '.join(self.names)})")

    @classmethod
    def insert(cls, table, keys) -> "Arrays":
        return cls(f"INSERT INTO {table.name} ({', '.join(keys)}) SELECT * FROM :rows",
                   {key: table.c[key] for key in keys})

    @classmethod
    def update(cls, table, values: dict, key: tuple) -> "Arrays":
        """``UPDATE table SET column = u.<bind>, ...`` for ``values`` (bind name -> column),
        matching rows by ``key``: a (bind name, column) pair, or a tuple of them for a composite
        key. The form of one Core UPDATE for a batch."""
        pairs = [key] if isinstance(key[0], str) else list(key)
        sets = ", ".join(f"{column.name} = u.{name}" for name, column in values.items())
        where = " AND ".join(f"{table.name}.{column.name} = u.{name}" for name, column in pairs)
        return cls(f"UPDATE {table.name} SET {sets} FROM :rows WHERE {where}", {**dict(pairs), **values})


def _pg_type(column) -> str:
    kind = column.type
    if isinstance(kind, JSON):
        return "json"
    if isinstance(kind, Double):
        return "float8"
    if isinstance(kind, Integer):
        return "int8"
    if isinstance(kind, (String, Text)):
        return "text"
    raise TypeError(f"no array type for column {column} ({kind})")


def fetch(conn, statement: Statement, params: dict) -> list[dict]:
    """The rows a SELECT returns, as dicts of converted values."""
    compiled = statement.compiled(conn.dialect, tuple(params))
    values = _bind(compiled, dict(params))
    raw = _on_cursor(conn, compiled.sql, values, lambda cursor: _all(cursor, compiled, values, conn.dialect))
    columns, results = compiled.columns, compiled.results
    return [{column: (value if convert is None or value is None else convert(value))
             for column, convert, value in zip(columns, results, row)} for row in raw]


def _all(cursor, compiled, values, dialect) -> list:
    cursor.execute(compiled.sql, values)
    if compiled.results is None:  # psycopg builds the description anew at each read: read it once
        compiled.results = [kind.result_processor(dialect, column[1])
                            for kind, column in zip(compiled.types, cursor.description)]
    return cursor.fetchall()


def execute_sql(conn, sql: str) -> None:
    """A statement without parameters (``SAVEPOINT x``) on the driver's cursor: inside
    ``pipelined``, it is sent with the statements around it."""
    _on_cursor(conn, sql, None, lambda cursor: cursor.execute(sql))


@contextmanager
def pipelined(conn):
    """On PostgreSQL, send the statements run inside without waiting for each one's answer:
    the batch's writes cost one round trip. Only for statements whose results nobody reads."""
    if conn.dialect.name != "postgresql":
        yield
        return
    with _translated(conn, "(pipeline)", None):
        with conn.connection.dbapi_connection.pipeline():
            yield


def _on_cursor(conn, sql, values, work):
    with _translated(conn, sql, values):
        cursor = conn.connection.cursor()
        try:
            return work(cursor)
        finally:
            cursor.close()


@contextmanager
def _translated(conn, sql, values):
    """Driver errors as SQLAlchemy's; a connection the server dropped is invalidated."""
    dbapi = conn.dialect.loaded_dbapi
    try:
        yield
    except dbapi.Error as exc:
        dropped = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        if dropped:
            conn.invalidate(exc)
        raise DBAPIError.instance(sql, values, exc, dbapi.Error, connection_invalidated=dropped) from exc
