"""A bound row's run (engine/bindings.py): ``order.workflow``, read and sent events through the
row's own session."""

from sqlalchemy import inspect
from sqlalchemy.orm import object_session
from sqlalchemy.orm.attributes import set_committed_value

from .errors import BindingError


class RunOf:
    """``order.workflow``: the row's run, read and sent events in the row's own session."""

    def __init__(self, binding):
        self.binding = binding

    def __get__(self, row, owner=None):
        return self if row is None else BoundRun(self.binding, row)


class BoundRun:
    """The run a row drives. Reads and ``send`` go through the row's session (its uncommitted
    changes, the run's with them); a row outside any session reads what is committed."""

    def __init__(self, binding, row):
        self.binding, self.row = binding, row
        self.session = object_session(row)
        self.rt = None

    def _runtime(self):
        if self.rt is None:
            if self.session is not None:
                self.rt = self.binding.runtime_for(self.session)
            else:
                live = [rt for rt in (ref() for ref in self.binding._runtimes) if rt is not None]
                if not live:
                    raise BindingError(f"no Interlock in this process loads {self.binding.workflow!r}")
                self.rt = live[-1]
        return self.rt

    def _read(self, work):
        if self.session is not None:
            if self.session.autoflush and inspect(self.row).pending:
                self.session.flush()  # as a query would: the new row's run starts now
            return work(self.session.connection())
        return self._runtime().db.query(work)

    @property
    def id(self) -> str | None:
        self._runtime()
        return self._read(lambda conn: self.binding.run_id(conn, getattr(self.row, self.binding.pk_attr)))

    def get(self):
        """The run (``engine.queries.Run``), or None if the row has none."""
        from .queries import get_run

        run_id = self.id
        return None if run_id is None else self._read(lambda conn: get_run(conn, run_id))

    @property
    def state(self) -> str | None:
        run = self.get()
        return None if run is None else run.state

    @property
    def status(self) -> str | None:
        run = self.get()
        return None if run is None else run.status

    @property
    def allowed_events(self) -> list[str]:
        """Events the run accepts now (before guards); none once it has ended."""
        from . import machine as m
        from .transitions import ACTIVE

        run = self.get()
        if run is None or run.status not in ACTIVE:
            return []
        cls = self._runtime().registry.get(run.workflow, run.version)
        ctx = m.RunContext(id=run.id, workflow=run.workflow, version=run.version, data=dict(run.data),
                           business_key=run.business_key, status=run.status)
        return m.accepted_events(m.restore(cls, ctx, list(run.configuration)))

    def history(self) -> list:
        from .queries import get_history

        run_id = self.id
        return [] if run_id is None else self._read(lambda conn: get_history(conn, run_id))

    def explain(self) -> dict:
        """What the run waits for, as ``GET /api/runs/<id>/explain`` says (its committed state)."""
        from .explain import explain

        return explain(self._runtime(), self._required_id())

    def send(self, event: str, data=None, **options):
        """Send the run an event in the row's session (committed with it); the row's state
        attribute follows."""
        rt, run_id = self._runtime(), self._required_id()
        run = rt.send(run_id, event, data, session=self.session, **options)
        if self.binding.state_column is not None:
            set_committed_value(self.row, self.binding.state_column, run.state)
        return run

    def _required_id(self) -> str:
        run_id = self.id
        if run_id is None:
            raise BindingError(f"{self.binding.name} {getattr(self.row, self.binding.pk_attr)!r} has no run")
        return run_id

    def __repr__(self):
        run = self.get()
        return f"<run of {self.binding.name}: {run.id} {run.status} in {run.state}>" if run else "<no run>"
