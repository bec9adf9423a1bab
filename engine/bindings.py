"""The application's own SQLAlchemy models driving workflows: ``bind(Order, workflow="orders", ...)``.

A binding is declared at module level in a workflows module, so every process that loads the
workflows (workers, the API, the application) knows the model, its table and its state column:

- **In the application's flush** (SQLAlchemy session events, on every ``Session``): a new row
  starts a run (``before_flush`` if its primary key is set, so its INSERT carries the state;
  else ``after_flush``, once the INSERT gave it), an attribute change that meets its condition
  sends an event and a deleted row cancels its run (``before_flush``: the run is locked before
  the flush writes the row, the order a worker's transition takes too). All of it is performed
  as ``transitions.apply`` performs it, with the application's session: it commits or rolls
  back with the application's own writes, and its tasks are dispatched after the commit. The
  starts of one flush's rows go together (engine/bound_starts.py).
- **The state column** is written by ``sync``, called from ``Change.finish``: an UPDATE of the
  row by its primary key in the transition's own transaction, whichever process makes it. The
  application setting it itself is refused (``StateColumnWritten``).
- **Which row is a run's**: the run's idempotency key is ``<table>:<primary key>``, so a
  retried flush finds the run it started instead of starting another; ``key`` gives the
  business key shown beside it.
"""

import functools
import os
import weakref
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import bindparam, event, inspect, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from . import hotsql
from .bound_runs import RunOf
from .db import WRITE
from .errors import (BindingError, DefinitionError, InvalidTransition, RunNotActive,
                     RunPaused, StateColumnWritten)
from .models import runs

# Refusals ``on_refused="record"`` records and skips; anything else (a callback that raised, bad
# data) always fails the flush.
REFUSALS = (InvalidTransition, RunNotActive, RunPaused)
_ERROR = "interlock_binding_error"  # session.info: an error of before_flush, raised in after_flush
_STATE_SET = "interlock_state_set"  # InstanceState.info: the state a flush gave a new row
_STARTED = "interlock_binding_started"  # session.info: rows whose runs before_flush started
_BY_MODEL: dict[type, "Binding"] = {}
_RUN_OF_ROW = hotsql.Statement(lambda _dialect, _keys: select(runs).where(
    runs.c.workflow == bindparam("b_workflow"), runs.c.idempotency_key == bindparam("b_key")))
_installed = False


class Binding:
    """``model``'s rows drive runs of ``workflow``.

    ``key(row)``: the run's business key (default: the primary key as text). ``data(row)``: the
    run's data at the start (default: the row's columns but the state column). ``start_on``:
    ``"insert"`` (a new row starts a run) or None. ``triggers``: ``{attribute: event}`` or
    ``{attribute: (event, when)}``, ``when(old, new)`` saying whether the change sends it.
    ``state_column``: the attribute the run's state is written to. ``cancel_on``: ``"delete"``
    (deleting the row cancels its run) or None. ``on_refused``: an event the run refuses fails
    the flush (``"raise"``) or is recorded in the run's history as ``ignored`` and skipped
    (``"record"``). ``attribute``: the name under which each row gives its run (``order.workflow``).
    """

    def __init__(self, model, *, workflow: str, key=None, data=None, start_on="insert", triggers=None,
                 state_column=None, cancel_on=None, on_refused="raise", attribute="workflow"):
        mapper = inspect(model, raiseerr=False)
        if mapper is None or not hasattr(mapper, "local_table"):
            raise DefinitionError(f"bind() takes a mapped SQLAlchemy model class, not {model!r}")
        self.model, self.mapper, self.name, self.workflow = model, mapper, model.__name__, workflow
        if model in _BY_MODEL:
            raise DefinitionError(f"{self.name} is bound twice (to {_BY_MODEL[model].workflow!r} and {workflow!r})")
        self.table = mapper.local_table
        if len(mapper.primary_key) != 1:
            raise DefinitionError(f"{self.name} has a composite primary key: a bound model needs one column")
        pk = mapper.primary_key[0]
        self.pk_attr = mapper.get_property_by_column(pk).key
        self.pk_type = _python_type(pk)
        if self.pk_type not in (str, int):
            raise DefinitionError(f"{self.name}'s primary key must be text or an integer to name its run")
        columns = {prop.key: prop.columns[0] for prop in mapper.column_attrs}
        if start_on not in ("insert", None):
            raise DefinitionError(f"start_on must be 'insert' or None, not {start_on!r}")
        if cancel_on not in ("delete", None):
            raise DefinitionError(f"cancel_on must be 'delete' or None, not {cancel_on!r}")
        if on_refused not in ("raise", "record"):
            raise DefinitionError(f"on_refused must be 'raise' or 'record', not {on_refused!r}")
        self.start_on, self.cancel_on, self.on_refused = start_on, cancel_on, on_refused
        self.triggers = {}
        for attr, spec in (triggers or {}).items():
            send, when = (spec, None) if isinstance(spec, str) else spec
            if attr not in columns:
                raise DefinitionError(f"trigger on {self.name}.{attr}: {self.name} has no such column attribute")
            if not isinstance(send, str) or not send or (when is not None and not callable(when)):
                raise DefinitionError(f"trigger on {self.name}.{attr}: give an event name, or (event, when(old, new))")
            self.triggers[attr] = (send, when)
        if state_column is not None and state_column not in columns:
            raise DefinitionError(f"state_column {state_column!r}: {self.name} has no such column attribute")
        if state_column in self.triggers or state_column == self.pk_attr:
            raise DefinitionError(f"state_column {state_column!r} cannot also be the key or a trigger")
        self.state_column = state_column
        self.key = key or (lambda row: str(getattr(row, self.pk_attr)))
        self.data = data or (lambda row: {k: _jsonable(getattr(row, k)) for k in columns if k != state_column})
        self.prefix = self.table.name + ":"
        if state_column is not None:
            self.update_state = update(self.table).where(pk == bindparam("b_pk", type_=pk.type)).values(
                {columns[state_column].name: bindparam("b_state")})
        if attribute is not None and hasattr(model, attribute):
            raise DefinitionError(f"{self.name} already has an attribute {attribute!r}: "
                                  "give bind(attribute=...) another name for its run")
        for attr in self.triggers:
            # The old value is loaded when the attribute is set, so the condition sees it.
            event.listen(getattr(model, attr), "set", _keep_old, active_history=True)
        self.attribute = attribute
        if attribute is not None:
            setattr(model, attribute, RunOf(self))
        self._runtimes: list = []  # weak references to the Interlocks attached, newest last
        self._last = None  # (the engine a session last wrote to, the Interlock found for it)
        _BY_MODEL[model] = self
        _install()

    def __repr__(self):
        return f"<Binding {self.name} -> {self.workflow}>"

    # -- runtimes ---------------------------------------------------------------------

    def attach(self, rt, strict: bool = False) -> None:
        """Let ``rt`` drive this binding's runs. ``strict``: the table must already be in its database."""
        if rt.db.dialect not in ("sqlite", "postgresql", "mysql", "mariadb"):
            raise BindingError(f"bound models work on SQLite, PostgreSQL and MariaDB, not {rt.db.dialect}")
        try:
            tables = inspect(rt.db.engine)
            exists = tables.has_table(self.table.name, schema=self.table.schema)
            found = {c["name"] for c in tables.get_columns(self.table.name, schema=self.table.schema)} if exists else set()
        except SQLAlchemyError:
            if strict:
                raise
            exists, found = False, set()  # the database is not reachable now: checked at the flush
        if exists:
            missing = [c.name for c in self.table.columns if c.name not in found]
            if missing:
                raise BindingError(f"table {self.table.name} in Interlock's database has no column "
                                   f"{', '.join(missing)} that {self.name} maps")
        elif strict:
            raise BindingError(
                f"{self.name}'s table {self.table.name!r} is not in Interlock's database ({rt.db.engine.url!r}): "
                "a bound model's table must be in the same database as the runs, which its flushes "
                "write in one transaction (create it there first)")
        self._runtimes = [ref for ref in self._runtimes if ref() is not None and ref() is not rt]
        self._runtimes.append(weakref.ref(rt))
        self._last = None

    def forget(self) -> None:
        """Undo the declaration (a binding refused when attached)."""
        if _BY_MODEL.get(self.model) is self:
            del _BY_MODEL[self.model]
            if isinstance(self.model.__dict__.get(self.attribute), RunOf):
                delattr(self.model, self.attribute)

    def detach(self, rt) -> None:
        self._runtimes = [ref for ref in self._runtimes if ref() is not None and ref() is not rt]
        self._last = None

    def runtime_for(self, session):
        """The attached Interlock on the database ``session`` writes this model to."""
        bind = session.get_bind(mapper=self.mapper)
        last = self._last  # attach and detach forget it
        if last is not None and last[0] is bind and last[1]() is not None:
            return last[1]()
        rt = self._resolve(bind)
        self._last = (bind, weakref.ref(rt))
        return rt

    def _resolve(self, bind):
        url = bind.engine.url
        live = [rt for rt in (ref() for ref in self._runtimes) if rt is not None]
        for rt in reversed(live):
            if _same_database(rt.db.engine.url, url):
                if rt.db.dialect == "sqlite" and not bind.get_execution_options().get(WRITE):
                    # A transaction that takes the write lock at its first write would read the
                    # run unlocked: a worker could change it in between.
                    raise BindingError(f"on SQLite, write {self.name} rows with interlock.session() (or a "
                                       "Session on interlock.db.write_engine): its transactions take the "
                                       "write lock when they begin, which the run's change needs")
                return rt
        if not live:
            raise BindingError(f"{self.name} is bound to workflow {self.workflow!r}, but no Interlock in this "
                               "process loads it: create the Interlock (INTERLOCK_WORKFLOWS naming the module "
                               f"that binds it) before writing {self.name} rows")
        raise BindingError(f"the session writes {self.name} to {url!r}, not to Interlock's database "
                           f"({live[-1].db.engine.url!r}): a bound model's table must be in the same database")

    # -- which run is a row's -----------------------------------------------------------

    def run_key(self, pk) -> str:
        return self.prefix + str(pk)

    def row_of(self, idempotency_key):
        """The primary key of the row whose run has this idempotency key, or None."""
        if not idempotency_key or not idempotency_key.startswith(self.prefix):
            return None
        text = idempotency_key[len(self.prefix):]
        try:
            return self.pk_type(text)
        except ValueError:
            return None

    def run_of(self, conn, pk) -> dict | None:
        """The row's run (its stored columns), or None."""
        found = hotsql.fetch(conn, _RUN_OF_ROW, {"b_workflow": self.workflow, "b_key": self.run_key(pk)})
        return found[0] if found else None

    def run_id(self, conn, pk) -> str | None:
        run = self.run_of(conn, pk)
        return None if run is None else run["id"]

    # -- the flush ------------------------------------------------------------------------

    def start_runs(self, session, rows, inserted: bool) -> None:
        """Start the rows' runs (or find those an earlier flush started for their primary keys),
        all together (engine/bound_starts.py), and give each row its state: before the INSERT,
        in the row itself (one statement fewer); after it (a primary key the database assigns),
        with one UPDATE for them all."""
        from . import bound_starts
        from . import operations as ops
        from .transitions import check_data

        rt = self.runtime_for(session)
        cls = rt.registry.get(self.workflow)
        items = []
        for row in rows:
            pk = getattr(row, self.pk_attr)
            start = ops.Start(cls, check_data(self.data(row)), _key_text(self.key(row)), self.run_key(pk))
            items.append(_StartRow(self, start, pk))
        outcomes = bound_starts.start_all(rt, session, items)
        if self.state_column is None:
            return
        states = [outcome.run["state"] for outcome in outcomes]
        if inserted:
            session.connection().execute(self.update_state, [
                {"b_pk": item.pk, "b_state": state} for item, state in zip(items, states)])
            for row, state in zip(rows, states):
                set_committed_value(row, self.state_column, state)
        else:
            for row, state in zip(rows, states):
                setattr(row, self.state_column, state)
                inspect(row).info[_STATE_SET] = state  # ours: a flush tried again does not refuse it

    def changed(self, session, row) -> None:
        """Before the UPDATE: refuse a state column the application set; send the triggers' events."""
        attrs = inspect(row).attrs
        if self.state_column is not None and attrs[self.state_column].history.has_changes():
            raise StateColumnWritten(self.name, self.state_column, getattr(row, self.pk_attr),
                                     getattr(row, self.state_column))
        due = []
        for attr, (send, when) in self.triggers.items():
            history = attrs[attr].history
            old = history.deleted[0] if history.deleted else None
            new = history.added[0] if history.added else None
            if history.added and old != new and (when is None or when(old, new)):
                due.append((send, {"field": attr, "old": _jsonable(old), "new": _jsonable(new)}))
        if not due:
            return
        rt = self.runtime_for(session)
        pk = getattr(row, self.pk_attr)
        run_id = self.run_id(session.connection(), pk)
        if run_id is None:  # a row from before the binding, or one no insert started
            return
        for send, data in due:
            self.send(rt, session, row, run_id, send, data)

    def send(self, rt, session, row, run_id, send, data):
        from . import operations as ops
        from .transitions import apply, check_data

        op = ops.SendEvent(send, check_data(data), cause="binding")
        if self.on_refused == "raise":
            outcome = apply(rt, run_id, op, session=session)
        else:
            savepoint = session.connection().begin_nested()
            try:
                outcome = apply(rt, run_id, op, session=session)
            except REFUSALS as exc:
                savepoint.rollback()
                outcome = apply(rt, run_id, Refused(send, data, exc, self.name), session=session)
            else:
                savepoint.commit()
        if self.state_column is not None:
            set_committed_value(row, self.state_column, outcome.run["state"])

    def deleted(self, session, row) -> None:
        from . import operations as ops
        from .transitions import ACTIVE, apply

        rt = self.runtime_for(session)
        run = self.run_of(session.connection(), getattr(row, self.pk_attr))
        if run is not None and run["status"] in ACTIVE:
            apply(rt, run["id"], ops.Cancel(f"{self.name} {getattr(row, self.pk_attr)} was deleted"), session=session)


class _StartRow:
    """``operations.Start`` for a row: finds an earlier run of the row with one prepared statement."""

    def __init__(self, binding, start, pk):
        self.binding, self.start, self.pk = binding, start, pk

    def existing(self, rt, conn):
        return self.binding.run_of(conn, self.pk)

    def begin(self, rt, conn, now, writes=None):
        return self.start.begin(rt, conn, now, writes)

    def perform(self, change):
        self.start.perform(change)


class Refused:
    """The operation that records an event the run refused, for ``on_refused="record"``."""

    def __init__(self, event, data, error, model):
        self.event, self.data, self.error, self.model = event, data, error, model

    def perform(self, change):
        change.record("ignored", event=self.event, cause="binding", data=self.data,
                      detail={"reason": str(self.error), "error": self.error.code, "model": self.model})


def bind(model, *, workflow: str, **options) -> Binding:
    """Declare, at module level in a workflows module, that ``model``'s rows drive ``workflow``
    (every process that loads the module finds it). See ``Binding`` for the options."""
    return Binding(model, workflow=workflow, **options)


# -- the transition function's hook -----------------------------------------------------------

def sync(change, state: str) -> None:
    """Write the run's state to its row's state column, in the transition's transaction, when it
    changed: an UPDATE by primary key, which locks the row. (A new run's row is given its state
    by the flush that inserts it: ``Binding.start_runs``.)"""
    binding = change.rt.registry.bindings.get(change.cls.workflow_name)
    if binding is None or binding.state_column is None or change.new or state == change.row["state"]:
        return
    pk = binding.row_of(change.row["idempotency_key"])
    if pk is not None:
        change.conn.execute(binding.update_state, {"b_pk": pk, "b_state": state})


# -- session events, on every Session ---------------------------------------------------------

def _install():
    global _installed
    if not _installed:
        event.listen(Session, "before_flush", _before_flush)
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "do_orm_execute", _orm_execute)
        _installed = True


def _bound(objects):
    for row in list(objects):
        binding = _BY_MODEL.get(type(row))
        if binding is not None:
            yield binding, row


def _before_flush(session, _context, _instances):
    """Starts of rows whose primary key is known, events and cancellations, before the flush
    writes the rows. An error is kept and raised in ``after_flush``: raised there, it rolls the
    whole transaction back, the rows' changes with it."""
    session.info.pop(_ERROR, None)
    try:
        starting: dict = {}  # binding -> its new rows with a primary key, started together
        for binding, row in _bound(session.new):
            if binding.state_column is not None and inspect(row).attrs[binding.state_column].history.added:
                value = getattr(row, binding.state_column)
                if value is not None and inspect(row).info.get(_STATE_SET) != value:
                    raise StateColumnWritten(binding.name, binding.state_column, getattr(row, binding.pk_attr), value)
            if binding.start_on == "insert" and getattr(row, binding.pk_attr) is not None:
                starting.setdefault(binding, []).append(row)
        for binding, rows in starting.items():
            binding.start_runs(session, rows, inserted=False)
        session.info[_STARTED] = {id(row) for rows in starting.values() for row in rows}
        for binding, row in _bound(session.dirty):
            if session.is_modified(row, include_collections=False):
                binding.changed(session, row)
        for binding, row in _bound(session.deleted):
            if binding.cancel_on == "delete":
                binding.deleted(session, row)
    except Exception as exc:
        session.info[_ERROR] = exc


def _after_flush(session, _context):
    """Raise what ``before_flush`` refused; start the runs of rows the INSERT gave a primary key."""
    error = session.info.pop(_ERROR, None)
    started = session.info.pop(_STARTED, ())
    if error is not None:
        raise error
    starting: dict = {}
    for binding, row in _bound(session.new):
        if binding.start_on == "insert" and id(row) not in started:
            starting.setdefault(binding, []).append(row)
    for binding, rows in starting.items():
        binding.start_runs(session, rows, inserted=True)


def _orm_execute(state):
    """``session.execute(update(Order).values(status=...))`` is refused as an attribute write is."""
    if not state.is_update or state.bind_mapper is None:
        return
    binding = _BY_MODEL.get(state.bind_mapper.class_)
    if binding is None or binding.state_column is None:
        return
    column = binding.table.c[inspect(binding.model).attrs[binding.state_column].columns[0].key]
    params = state.statement.compile().params
    if binding.state_column in params or column.name in params:
        raise StateColumnWritten(binding.name, binding.state_column, None, params.get(column.name))


def _keep_old(target, value, oldvalue, initiator):
    return value


# -- helpers ---------------------------------------------------------------------------------------

def _python_type(column):
    try:
        return column.type.python_type
    except NotImplementedError:
        return None


def _key_text(value) -> str | None:
    from .runtime import _check_key

    return None if value is None else _check_key(str(value), "business_key")


def _jsonable(value):
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return value


@functools.lru_cache(maxsize=256)
def _same_database(a, b) -> bool:
    """Whether two URLs name one database (the same file, for SQLite)."""
    if a.get_backend_name() != b.get_backend_name():
        return False
    if a.get_backend_name() == "sqlite":
        return bool(a.database) and os.path.realpath(a.database) == os.path.realpath(b.database or "")
    default = {"postgresql": 5432}.get(a.get_backend_name(), 3306)
    return ((a.host or "localhost", a.port or default, a.database)
            == (b.host or "localhost", b.port or default, b.database))


def attach_all(rt) -> None:
    """Attach the bindings ``rt``'s workflows modules declare (``Interlock`` does, at start)."""
    for binding in rt.registry.bindings.values():
        binding.attach(rt)


def detach_all(rt) -> None:
    for binding in rt.registry.bindings.values():
        binding.detach(rt)
