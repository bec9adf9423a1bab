"""The application's own models drive workflows (engine/bindings.py): a row's insert starts its
run, an attribute change sends an event, a delete cancels it, all in the application's own
flush and transaction; the row's state column is the run's state after every change, whichever
process makes it. On SQLite and PostgreSQL (both brokers), and MariaDB."""

import pytest
from sqlalchemy import create_engine, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from engine import BindingError, DefinitionError, InvalidTransition, StateColumnWritten, bound_starts
from engine.bindings import Binding
from engine.config import Settings
from engine.db import Database
from engine.models import history, run_search, runs, tasks, timers
from engine.runtime import Interlock

from .binding_workflows import Base, Crate, Note, Parcel, Ticket
from .conftest import _runtime, require_server, wait_until
from .processes import Process, env_for
from .test_migrations import fresh_database

WORKFLOWS = "workflows,tests.binding_workflows"


def _tables(rt):
    Base.metadata.drop_all(rt.db.engine)
    Base.metadata.create_all(rt.db.engine)


@pytest.fixture
def rt(settings):
    """An engine on the parametrized backend, with the test models' tables in its database."""
    for engine in _runtime(settings.replace(workflows=WORKFLOWS)):
        _tables(engine)
        yield engine


@pytest.fixture
def app(rt):
    """The application's own engine: a plain one on PostgreSQL; on SQLite, Interlock's write
    engine (its transactions take the write lock when they begin, which a run's change needs)."""
    if rt.db.dialect == "sqlite":
        yield rt.db.write_engine
        return
    engine = create_engine(rt.settings.database_url)
    yield engine
    engine.dispose()


def stored(rt, model, pk):
    """The row as committed, read apart from any session."""
    with rt.db.read() as conn:
        return conn.execute(select(model.__table__).where(model.__table__.c.id == pk)).mappings().first()


def runs_of(rt, workflow="test_bound_tickets"):
    return rt.list_runs(workflow=workflow).runs


def transitions(rt, run_id, event=None):
    return [(h.event, h.source, h.target) for h in rt.history(run_id)
            if h.kind == "transition" and (event is None or h.event == event)]


def in_step(rt, ticket_id):
    """The row's state column equals its run's state (both as committed); the state."""
    [run] = runs_of(rt)
    assert stored(rt, Ticket, ticket_id)["stage"] == run.state
    return run.state


def inserted(app, ref="T-1") -> int:
    """A ticket inserted by plain session code, committed: its id."""
    with Session(app) as s:
        ticket = Ticket(ref=ref, total=5.0)
        s.add(ticket)
        s.commit()
        return ticket.id


def opened(rt, app):
    """A ticket whose run took its step: in ``open``."""
    ticket_id = inserted(app)
    with rt.worker(2):
        wait_until(lambda: runs_of(rt)[0].state == "open", message="the triage step")
    return ticket_id


# -- starting -----------------------------------------------------------------------------------

def test_an_insert_starts_exactly_one_run_in_the_same_commit(rt, app):
    with Session(app) as s:
        ticket = Ticket(ref="T-1", total=5.0)
        s.add(ticket)
        s.flush()
        s.flush()
        assert ticket.stage == "received" and ticket.workflow.state == "received"  # in the transaction
        s.commit()
        ticket_id = ticket.id
    [run] = runs_of(rt)
    assert (run.business_key, run.idempotency_key) == ("T-1", f"test_bound_tickets:{ticket_id}")
    assert run.data == {"id": ticket_id, "ref": "T-1", "total": 5.0}
    assert in_step(rt, ticket_id) == "received"
    with rt.db.read() as conn:
        assert conn.execute(select(func.count()).select_from(tasks)).scalar() == 1


def test_a_retried_flush_starts_no_second_run(rt, app):
    with Session(app) as s:
        s.add_all([Ticket(ref="T-1"), Ticket(ref="T-1")])  # the second INSERT fails the flush
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        assert runs_of(rt) == []
        ticket = Ticket(ref="T-1")  # the application tries again
        s.add(ticket)
        s.commit()
        ticket_id = ticket.id
    assert len(runs_of(rt)) == 1
    # The same row written again (deleted behind the ORM's back, inserted again): its run is found,
    # not started a second time, and the row gets its state.
    with rt.db.write() as conn:
        conn.execute(delete(Ticket.__table__))
    with Session(app) as s:
        s.add(Ticket(id=ticket_id, ref="T-1"))
        s.commit()
    assert len(runs_of(rt)) == 1 and in_step(rt, ticket_id) == "received"
    with Session(app) as s:  # a row with its own key, its flush failed and tried again
        note = Note(id="N-1")
        s.add_all([note, Ticket(ref="T-1")])  # the ticket's INSERT fails: T-1 exists
        with pytest.raises(IntegrityError):
            s.commit()
        s.rollback()
        assert runs_of(rt, "test_bound_notes") == []
        s.add(note)
        s.commit()
    assert len(runs_of(rt, "test_bound_notes")) == 1 and stored(rt, Note, "N-1")["state"] == "draft"


def test_a_rollback_leaves_no_run_no_event_and_no_task(rt, app):
    with Session(app) as s:
        s.add(Ticket(ref="T-9"))
        s.flush()
        assert len(s.execute(select(runs.c.id)).all()) == 1  # there, inside the transaction
        s.rollback()
    with rt.db.read() as conn:
        assert [conn.execute(select(func.count()).select_from(t)).scalar() for t in (runs, history, tasks)] == [0, 0, 0]
    ticket_id = opened(rt, app)
    with Session(app) as s:
        ticket = s.get(Ticket, ticket_id)
        ticket.total = 500.0
        s.flush()
        assert ticket.workflow.state == "escalated"
        s.rollback()
    [run] = runs_of(rt)
    assert transitions(rt, run.id, "escalate") == [] and in_step(rt, ticket_id) == "open"
    assert stored(rt, Ticket, ticket_id)["total"] == 5.0


def written(rt, model, prefix) -> dict:
    """Every row the starts of ``model`` rows with ids ``<prefix>-...`` wrote, ids and times
    made relative to their run (so two sets of rows started apart compare equal)."""
    table = model.__table__
    with rt.db.read() as conn:
        found = conn.execute(select(runs).where(runs.c.idempotency_key.like(f"{table.name}:{prefix}-%"))
                             .order_by(runs.c.idempotency_key)).mappings().all()
        out = {}
        for run in found:
            def same(row, *drop):
                kept = {k: v for k, v in row.items() if k not in drop}
                for k, v in kept.items():
                    if isinstance(v, float) and (k == "at" or k.endswith("_at")):
                        kept[k] = round(v - run["created_at"], 3)  # times, from the run's start
                return repr(kept).replace(run["id"], "<run>").replace(f"{prefix}-", "<prefix>-")

            def rows_of(t, *drop):
                return sorted(same(dict(r), *drop) for r in conn.execute(
                    select(t).where(t.c.run_id == run["id"])).mappings())

            pk = run["idempotency_key"].split(":", 1)[1]
            out[pk.replace(f"{prefix}-", "<prefix>-")] = {
                "run": same(dict(run), "id"), "history": rows_of(history),
                "tasks": rows_of(tasks, "id"), "timers": rows_of(timers, "id"),
                "search": rows_of(run_search),
                "row": same(dict(conn.execute(select(table).where(table.c.id == pk)).mappings().one())),
            }
    return out


@pytest.mark.parametrize("model", [Parcel, Crate])
def test_rows_started_together_write_what_rows_started_one_by_one_do(rt, app, model, monkeypatch):
    """One flush's rows start together (bound_starts.together: one statement per table, their
    earlier runs found by the unique key) and write the same runs, history, tasks, timers,
    search fields and state columns as each row started alone by transitions.apply."""
    def insert(prefix):
        with Session(app) as s:
            s.add_all([model(id=f"{prefix}-{i}", kind=f"k{i % 2}", **({"weight": i + 0.5} if model is Parcel else {}))
                       for i in range(3)])
            s.commit()

    together = []
    real = bound_starts.together
    monkeypatch.setattr(bound_starts, "together", lambda *a: together.append(real(*a)) or together[-1])
    insert("A")
    monkeypatch.setattr(bound_starts, "together", lambda *a: None)  # every row alone, as before
    insert("B")
    assert len(together) == 1 and len(together[0]) == 3
    fast, slow = written(rt, model, "A"), written(rt, model, "B")
    assert len(fast) == 3 and fast == slow
    assert all(len(rows["tasks"]) == len(rows["timers"]) == 1 and rows["search"] for rows in fast.values())
    if model is Crate:  # the callback's change is the run's, not the start's history entry
        some = next(iter(fast.values()))
        assert "'packed': True" in some["run"] and "'packed': True" not in some["history"][0]


def test_a_flush_whose_row_has_a_run_already_starts_the_others_and_finds_that_one(rt, app):
    with Session(app) as s:
        s.add(Parcel(id="P-1", weight=1.0))
        s.commit()
    with rt.db.write() as conn:
        conn.execute(delete(Parcel.__table__))
    with Session(app) as s:  # P-1's run is found (the batch rolled back to its savepoint), P-2's started
        s.add_all([Parcel(id="P-2"), Parcel(id="P-1")])
        s.commit()
    assert sorted(r.idempotency_key for r in runs_of(rt, "test_bound_parcels")) == [
        "test_bound_parcels:P-1", "test_bound_parcels:P-2"]
    assert stored(rt, Parcel, "P-1")["phase"] == stored(rt, Parcel, "P-2")["phase"] == "weighed"


def test_a_flush_of_many_rows_finds_an_earlier_run_among_them(rt, app):
    """More rows than one look-up takes (bound_starts.LOOKUP_CHUNK), the earlier run in the last."""
    count = bound_starts.LOOKUP_CHUNK + 44
    with Session(app) as s:
        s.add(Parcel(id=f"P-{count - 1}"))
        s.commit()
    with rt.db.write() as conn:
        conn.execute(delete(Parcel.__table__))
    with Session(app) as s:
        s.add_all([Parcel(id=f"P-{i}") for i in range(count)])
        s.commit()
    with rt.db.read() as conn:
        started = conn.execute(select(func.count()).select_from(runs).where(runs.c.workflow == "test_bound_parcels")).scalar()
        in_state = conn.execute(select(func.count()).select_from(Parcel.__table__)
                                .where(Parcel.__table__.c.phase == "weighed")).scalar()
    assert started == in_state == count


# -- events from attributes, and the state column after every change ---------------------------------

def test_the_state_column_follows_every_step_event_and_timer(rt, app):
    ticket_id = opened(rt, app)                                        # a step
    assert in_step(rt, ticket_id) == "open"
    [run] = runs_of(rt)
    with Session(app) as s:
        ticket = s.get(Ticket, ticket_id)
        ticket.total = 50.0                                            # the condition does not hold
        s.commit()
        assert transitions(rt, run.id, "escalate") == [] and in_step(rt, ticket_id) == "open"
        ticket.total = 500.0                                           # it holds: one event
        s.commit()
        assert ticket.stage == "escalated"
    assert transitions(rt, run.id, "escalate") == [("escalate", "open", "escalated")]
    assert in_step(rt, ticket_id) == "escalated"
    event = [h for h in rt.history(run.id) if h.event == "escalate"][0]
    assert (event.cause, event.data) == ("binding", {"field": "total", "old": 50.0, "new": 500.0})
    with rt.worker(2):                                                 # a timer
        wait_until(lambda: runs_of(rt)[0].status == "succeeded", message="the lapse timer")
    assert in_step(rt, ticket_id) == "closed"
    assert transitions(rt, run.id, "expire") == [("expire", "escalated", "closed")]


def test_the_state_column_follows_a_worker_in_another_process(rt, app, tmp_path):
    worker = Process("worker", "--threads", "2", env=env_for(rt.settings), log_path=tmp_path / "worker.log")
    try:
        ticket_id = inserted(app)

        def row_in(state):
            return lambda: stored(rt, Ticket, ticket_id)["stage"] == state

        wait_until(row_in("open"), timeout=30, message=f"the other process's step\n{worker.output()}")
        assert in_step(rt, ticket_id) == "open"
        with Session(app) as s:
            s.get(Ticket, ticket_id).total = 700.0
            s.commit()
        assert in_step(rt, ticket_id) == "escalated"
        wait_until(row_in("closed"), timeout=30, message=f"the other process's timer\n{worker.output()}")
        assert in_step(rt, ticket_id) == "closed" and runs_of(rt)[0].status == "succeeded"
    finally:
        worker.stop()


def test_an_event_the_run_refuses_fails_the_flush_and_rolls_the_change_back(rt, app):
    ticket_id = inserted(app)
    with Session(app) as s:
        ticket = s.get(Ticket, ticket_id)
        ticket.total = 900.0  # escalate: the run is still in ``received`` (no worker took the step)
        with pytest.raises(InvalidTransition) as refused:
            s.commit()
        assert refused.value.event == "escalate" and refused.value.states == ["received"]
        s.rollback()
    assert stored(rt, Ticket, ticket_id)["total"] == 5.0 and in_step(rt, ticket_id) == "received"


def test_with_on_refused_record_a_refused_event_is_recorded_and_skipped(rt, app):
    with Session(app) as s:
        note = Note(id="N-1")
        s.add(note)
        s.commit()
        note.total = 1.0      # go: draft -> sent
        s.commit()
        note.total = 2.0      # go again: refused in sent, recorded, the row's change kept
        s.commit()
        assert note.state == "sent"
    [run] = runs_of(rt, "test_bound_notes")
    assert transitions(rt, run.id) == [("go", "draft", "sent")]
    [ignored] = [h for h in rt.history(run.id) if h.kind == "ignored"]
    assert (ignored.event, ignored.cause, ignored.detail["error"]) == ("go", "binding", "invalid-transition")
    assert ignored.data == {"field": "total", "old": 1.0, "new": 2.0}
    assert stored(rt, Note, "N-1")["total"] == 2.0 and stored(rt, Note, "N-1")["state"] == "sent"


def test_the_application_writing_the_state_column_is_refused(rt, app):
    with Session(app) as s:
        with pytest.raises(StateColumnWritten):
            s.add(Ticket(ref="T-0", stage="open"))
            s.commit()
        s.rollback()
        ticket = Ticket(ref="T-1")
        s.add(ticket)
        s.commit()
        ticket_id = ticket.id
        ticket.stage = "closed"
        with pytest.raises(StateColumnWritten) as refused:
            s.commit()
        assert refused.value.column == "stage" and "only the run's transitions write it" in str(refused.value)
        s.rollback()
        with pytest.raises(StateColumnWritten):
            s.execute(update(Ticket).values(stage="closed"))
        s.rollback()
    assert in_step(rt, ticket_id) == "received" and len(runs_of(rt)) == 1


def test_deleting_the_row_cancels_its_run_when_bound_so(rt, app):
    ticket_id = opened(rt, app)
    with Session(app) as s:
        s.delete(s.get(Ticket, ticket_id))
        s.flush()
        s.rollback()  # not deleted after all: the run goes on
    assert runs_of(rt)[0].status == "waiting"
    with Session(app) as s:
        s.delete(s.get(Ticket, ticket_id))
        s.commit()
    [run] = runs_of(rt)
    assert run.status == "cancelled" and stored(rt, Ticket, ticket_id) is None
    assert [h.detail["reason"] for h in rt.history(run.id) if h.kind == "cancelled"] == [f"Ticket {ticket_id} was deleted"]
    with Session(app) as s:  # bound without cancel_on: the run stays
        s.add(Note(id="N-1"))
        s.commit()
        s.delete(s.get(Note, "N-1"))
        s.commit()
    assert runs_of(rt, "test_bound_notes")[0].status == "waiting"


# -- the row's run ------------------------------------------------------------------------------

def test_a_row_gives_its_run_and_sends_it_events_in_its_own_session(rt, app):
    ticket_id = opened(rt, app)
    with Session(app) as s:
        ticket = s.get(Ticket, ticket_id)
        run = ticket.workflow
        assert (run.state, run.status, run.allowed_events) == ("open", "waiting", ["escalate", "close"])
        assert "an event" in run.explain()["waiting_for"] or run.explain()["accepted_events"]
        run.send("close")
        assert ticket.stage == "closed" and run.allowed_events == []
        s.rollback()
        assert s.get(Ticket, ticket_id).workflow.state == "open"
        s.get(Ticket, ticket_id).workflow.send("close")
        s.commit()
    assert in_step(rt, ticket_id) == "closed"
    with Session(app) as s:
        entries = s.get(Ticket, ticket_id).workflow.history()
    assert [(h.kind, h.event) for h in entries][-1] == ("transition", "close")


# -- where bindings can work ----------------------------------------------------------------------------

def test_binding_a_table_outside_interlocks_database_is_refused_at_bind(sqlite_settings, tmp_path):
    class Other(DeclarativeBase):
        pass

    class Elsewhere(Other):
        __tablename__ = "elsewhere"
        id: Mapped[str] = mapped_column(primary_key=True)
        state: Mapped[str | None]

    for rt in _runtime(sqlite_settings.replace(workflows=WORKFLOWS)):
        with pytest.raises(BindingError, match="not in Interlock's database"):
            rt.bind(Elsewhere, workflow="cargo", state_column="state")
        Other.metadata.create_all(rt.db.engine)
        binding = rt.bind(Elsewhere, workflow="cargo", state_column="state")  # now it is there
        assert binding.workflow == "cargo" and rt.registry.bindings["cargo"] is binding
        _tables(rt)
        other = tmp_path / "app.db"  # the application's tables in a database of their own
        engine = create_engine(f"sqlite:///{other}")
        Base.metadata.create_all(engine)
        with Session(engine) as s, pytest.raises(BindingError, match="not to Interlock's database"):
            s.add(Note(id="N-1"))
            s.commit()
        plain = create_engine(rt.settings.database_url)  # SQLite, without the write lock up front
        with Session(plain) as s, pytest.raises(BindingError, match="interlock.session"):
            s.add(Note(id="N-1"))
            s.commit()
        assert runs_of(rt, "test_bound_notes") == []


def test_bindings_that_cannot_work_are_refused_when_declared():
    class Other(DeclarativeBase):
        pass

    class Pair(Other):
        __tablename__ = "pairs"
        a: Mapped[str] = mapped_column(primary_key=True)
        b: Mapped[str] = mapped_column(primary_key=True)

    class Row(Other):
        __tablename__ = "rows"
        id: Mapped[str] = mapped_column(primary_key=True)
        state: Mapped[str | None]

    with pytest.raises(DefinitionError, match="composite primary key"):
        Binding(Pair, workflow="x")
    with pytest.raises(DefinitionError, match="no such column"):
        Binding(Row, workflow="x", triggers={"missing": "go"})
    with pytest.raises(DefinitionError, match="no such column"):
        Binding(Row, workflow="x", state_column="status")
    with pytest.raises(DefinitionError, match="on_refused"):
        Binding(Row, workflow="x", on_refused="ignore")
    with pytest.raises(DefinitionError, match="bound twice"):
        Binding(Ticket, workflow="x")


def test_binding_works_on_mariadb(tmp_path):
    require_server("MariaDB", "127.0.0.1", 3306)
    with fresh_database("mariadb", tmp_path) as url:
        Database(url).upgrade()
        for rt in _runtime(Settings(database_url=url, workflows=WORKFLOWS, poll_interval=0.05)):
            _tables(rt)
            app = create_engine(url)
            ticket_id = opened(rt, app)
            with Session(app) as s:
                s.get(Ticket, ticket_id).total = 500.0
                s.commit()
            assert in_step(rt, ticket_id) == "escalated"
            with rt.worker(2):
                wait_until(lambda: runs_of(rt)[0].status == "succeeded", message="the lapse timer")
            assert in_step(rt, ticket_id) == "closed"
            with Session(app) as s:
                s.add(Ticket(ref="T-2"))
                s.commit()
                s.delete(s.get(Ticket, ticket_id + 1))
                s.commit()
            assert {r.status for r in runs_of(rt)} == {"succeeded", "cancelled"}
            app.dispose()
