"""Starting the runs of the rows one flush inserts, together (engine/bindings.py).

Each row's start is the ``operations.Start`` any run's start is, performed by ``Change`` as
``transitions.apply`` performs it; what differs is only how the rows reach the database: the
runs of a flush share one ``transitions.Writes`` (one statement per table for all of them, as a
group commit writes its changes), and no row's earlier run is looked up first. The runs table's
unique (workflow, idempotency key) finds it instead: the writes go in a SAVEPOINT and, when one
of them fails, are rolled back to it, and every row is started again alone, looking its earlier
run up, by ``transitions.apply``. On PostgreSQL the SAVEPOINT, the writes and its RELEASE are
one round trip (with the transaction's BEGIN, when the flush opened it).
"""

from sqlalchemy.exc import IntegrityError

from . import hotsql
from . import machine as m
from .transitions import Outcome, Writes, apply

SAVEPOINT = "interlock_bound_starts"


def start_all(rt, session, items) -> list[Outcome]:
    """Start the run of each of ``items`` (``bindings._StartRow``, one binding's) in ``session``'s
    transaction, or find the run an earlier insert of its row started. Their tasks are
    dispatched after the session's commit. The outcomes, in the order of ``items``."""
    outcomes = together(rt, session.connection(), items)
    if outcomes is None:  # a row's key has a run already (a row inserted again): one by one
        return [apply(rt, None, item, session=session) for item in items]
    for outcome in outcomes:
        rt.after_session_commit(session, outcome)
    return outcomes


def together(rt, conn, items) -> list[Outcome] | None:
    """The new runs of ``items``, written together; None if one of their keys is taken, with
    nothing written."""
    cls = items[0].start.cls
    # A plain workflow's start runs no callback and starts no child: nothing reaches the
    # database before the writes, so the SAVEPOINT can go out with them.
    quiet = m.is_plain(cls) and not cls._children
    taken = False
    if not quiet:
        hotsql.execute_sql(conn, f"SAVEPOINT {SAVEPOINT}")
        taken = True
    try:
        now = rt.clock.now()
        writes, outcomes = Writes(), []
        for item in items:
            change = item.begin(rt, conn, now, writes)
            item.perform(change)
            outcomes.append(change.finish())
        with hotsql.pipelined(conn):
            if quiet:
                hotsql.execute_sql(conn, f"SAVEPOINT {SAVEPOINT}")
                taken = True
            writes.write(conn)
            hotsql.execute_sql(conn, f"RELEASE SAVEPOINT {SAVEPOINT}")
    except Exception as exc:
        if taken:  # the transaction goes on without any of it (the flush fails, or starts each row)
            hotsql.execute_sql(conn, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
            hotsql.execute_sql(conn, f"RELEASE SAVEPOINT {SAVEPOINT}")
        if taken and isinstance(exc, IntegrityError):
            return None
        raise
    return outcomes
