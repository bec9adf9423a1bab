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
