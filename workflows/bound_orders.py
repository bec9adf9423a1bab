"""The orders example driven by the application's own ``Order`` model (engine/bindings.py).

The application only writes ``Order`` rows with its own SQLAlchemy session, no Interlock call:
inserting one starts its run, raising its total past the review limit sends ``total_changed``,
deleting it cancels the run. The run's state is the row's ``status`` column, written by the
run's transitions in their own transactions (a worker's too), so
``SELECT ... WHERE status = 'review'`` is always true to the runs.

The table is the application's, made by its own metadata (``Base.metadata.create_all(engine)``
on Interlock's database), not by Interlock's migrations.
"""

from datetime import timedelta

from sqlalchemy import Float, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from engine import State, Workflow, after, bind, step

from . import simulators
from .orders import REVIEW_LIMIT


class Base(DeclarativeBase):
    """The example application's own metadata."""


class Order(Base):
    __tablename__ = "bound_orders"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer: Mapped[str] = mapped_column(String(255), default="")
    total: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str | None] = mapped_column(String(255), index=True)  # the run's state


class BoundOrder(Workflow):
    """An order row from payment to delivery.

    It waits for the payment provider's ``paid`` (a week at most). A total raised over the
    review limit before that holds it for a person to approve or reject. Once paid it ships.
    """

    name, version = "bound_orders", 1
    search = {"customer": str}

    placed = State(initial=True)
    review = State()
    shipping = State()
    delivered = State(final=True)
    cancelled = State(final=True)

    paid = placed.to(shipping)
    total_changed = placed.to(review)
    approve = review.to(placed)
    reject = review.to(cancelled)
    expire = placed.to(cancelled)
    shipped = shipping.to(delivered)

    final_status = {"cancelled": "cancelled"}
    unpaid = after(timedelta(days=7), placed, send="expire")

    @step(shipping, retries=5, backoff=timedelta(seconds=0.2))
    def ship(self, run):
        return "shipped", {"tracking": simulators.reference("TRK", run.id)}

    demo_data = {"id": "B-1001", "customer": "ada@example.com", "total": 40.0}
    demo_events = {"placed": "paid"}


order_runs = bind(
    Order, workflow="bound_orders",
    key=lambda order: order.id,                  # the run's business key
    start_on="insert",                           # a new row starts its run
    triggers={"total": ("total_changed", lambda old, new: new is not None and new > REVIEW_LIMIT)},
    state_column="status",                       # written by the run's transitions only
    cancel_on="delete",                          # deleting the row cancels its run
    on_refused="record",                         # a total raised once paid is recorded, not refused
)
