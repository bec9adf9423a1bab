"""Models bound to workflows, for tests/test_bindings.py (their tables are made by the tests, with
``Base.metadata``: the application's own metadata, not Interlock's migrations)."""

from datetime import timedelta

from sqlalchemy import Float, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine import State, Workflow, after, bind, step


class Base(DeclarativeBase):
    pass


class Ticket(Base):
    """An integer primary key the database assigns: the run starts once the INSERT gave it."""

    __tablename__ = "test_bound_tickets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    ref: Mapped[str] = mapped_column(String(64), unique=True)
    total: Mapped[float] = mapped_column(Float, default=0.0)
    stage: Mapped[str | None] = mapped_column(String(255))


class TicketFlow(Workflow):
    """A step, then an event from the row's total, then a timer."""

    name, version = "test_bound_tickets", 1

    received = State(initial=True)
    open = State()
    escalated = State()
    closed = State(final=True)

    triaged = received.to(open)
    escalate = open.to(escalated)
    close = open.to(closed) | escalated.to(closed)
    expire = escalated.to(closed)

    lapse = after(timedelta(seconds=0.3), escalated, send="expire")

    @step(received)
    def triage(self, run):
        return "triaged"

    demo_data = {"ref": "T-1", "total": 10.0}
    demo_events = {"open": "close"}


tickets = bind(Ticket, workflow="test_bound_tickets", key=lambda ticket: ticket.ref,
               triggers={"total": ("escalate", lambda old, new: new > 100)},
               state_column="stage", cancel_on="delete")


class Note(Base):
    """Refused events are recorded and skipped; deleting a row leaves its run alone."""

    __tablename__ = "test_bound_notes"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    total: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str | None] = mapped_column(String(255))


class NoteFlow(Workflow):
    name, version = "test_bound_notes", 1

    draft = State(initial=True)
    sent = State()
    done = State(final=True)

    go = draft.to(sent)
    finish = sent.to(done)

    demo_data = {"id": "N-1"}
    demo_events = {"draft": "go", "sent": "finish"}


notes = bind(Note, workflow="test_bound_notes", triggers={"total": "go"}, state_column="state",
             on_refused="record")


class Parcel(Base):
    """A start that writes every kind of row: a step's task, a timer, search fields."""

    __tablename__ = "test_bound_parcels"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), default="box")
    weight: Mapped[float] = mapped_column(Float, default=0.0)
    phase: Mapped[str | None] = mapped_column(String(255))


class ParcelFlow(Workflow):
    """No callback: its start takes no machine."""

    name, version = "test_bound_parcels", 1
    search = {"kind": str, "weight": float}

    weighed = State(initial=True)
    sent = State(final=True)

    ship = weighed.to(sent)
    lapse = after(timedelta(hours=1), weighed, send="ship")

    @step(weighed)
    def label(self, run):
        return "ship"


parcels = bind(Parcel, workflow="test_bound_parcels", state_column="phase")


class Crate(Base):
    """Its workflow's entry callback changes the run's data: its start runs the machine."""

    __tablename__ = "test_bound_crates"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), default="box")
    phase: Mapped[str | None] = mapped_column(String(255))


class CrateFlow(Workflow):
    name, version = "test_bound_crates", 1
    search = {"kind": str}

    packed = State(initial=True)
    gone = State(final=True)

    ship = packed.to(gone)
    lapse = after(timedelta(hours=1), packed, send="ship")

    def on_enter_packed(self, run):
        run.data["packed"] = True

    @step(packed)
    def load(self, run):
        return "ship"


crates = bind(Crate, workflow="test_bound_crates", state_column="phase")
