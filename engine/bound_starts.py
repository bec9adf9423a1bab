"""Starting the runs of the rows one flush inserts, together (engine/bindings.py).

Each row's start is the ``operations.Start`` any run's start is, performed by ``Change`` as
``transitions.apply`` performs it; what differs is only how the rows reach the database: the
runs of a flush share one ``transitions.Writes`` (one statement per table for all of them, as a
group commit writes its changes), and a row's earlier run (a row inserted again) is found for
all of them at once. If there is one, every row is started alone by ``transitions.apply``,
which looks its own up.

How the earlier runs are found: on PostgreSQL, by the runs table's unique (workflow,
idempotency key) itself: the writes go in a SAVEPOINT and, if one fails, are rolled back to
it. The SAVEPOINT, the writes and the RELEASE are one pipelined round trip, where a look-up
would be one more. Elsewhere (and on PostgreSQL when the start runs callbacks or starts
children, which write before the SAVEPOINT could go out with the rest) one SELECT for all the
rows' keys: a SAVEPOINT costs SQLite a sub-journal of every page the writes touch, and MariaDB
two round trips.
"""

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError

from . import hotsql, limits
from . import machine as m
from .models import runs
from .transitions import Outcome, Writes, apply

SAVEPOINT = "interlock_bound_starts"
# One bind per key (k0, k1, ...): compiled once per number of keys, which is a power of two up
# to this (the last key repeated), so a few compiled forms serve any flush.
LOOKUP_CHUNK = 256
_STARTED_KEYS = hotsql.Statement(lambda _dialect, keys: select(runs.c.idempotency_key).where(
    runs.c.workflow == bindparam("b_workflow"),
    runs.c.idempotency_key.in_([bindparam(k) for k in keys if k != "b_workflow"])))


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
    """The new runs of ``items``, written together; None if one of their keys has a run, with
    nothing written."""
    cls = items[0].start.cls
    # A plain workflow's start runs no callback and starts no child: nothing is written before
    # the writes, so on PostgreSQL the SAVEPOINT can go out with them.
    # (A workflow with max_active takes its slots before the writes: not in the SAVEPOINT.)
    in_savepoint = (conn.dialect.name == "postgresql" and m.is_plain(cls) and not cls._children
                    and cls._max_active is None)
    if not in_savepoint and _any_started(conn, cls.workflow_name, items):
        return None
    now = rt.clock.now()
    writes, outcomes = Writes(), []
    for item in items:
        change = item.begin(rt, conn, now, writes)
        item.perform(change)
        outcomes.append(change.finish())
    if not in_savepoint:
        writes.flush(conn)
        return outcomes
    if writes.slot_takes:  # slots of limited first steps (a start the SAVEPOINT undoes frees them: limits.reclaim)
        limits.flush(conn, writes)
    try:
        with hotsql.pipelined(conn):
            hotsql.execute_sql(conn, f"SAVEPOINT {SAVEPOINT}")
            writes.write(conn)
            hotsql.execute_sql(conn, f"RELEASE SAVEPOINT {SAVEPOINT}")
    except IntegrityError:
        # The transaction goes on without any of it; each row is started alone.
        hotsql.execute_sql(conn, f"ROLLBACK TO SAVEPOINT {SAVEPOINT}")
        hotsql.execute_sql(conn, f"RELEASE SAVEPOINT {SAVEPOINT}")
        return None
    return outcomes


def _any_started(conn, workflow, items) -> bool:
    keys = [item.start.idempotency_key for item in items]
    for at in range(0, len(keys), LOOKUP_CHUNK):
        chunk = keys[at:at + LOOKUP_CHUNK]
        size = 1 << (len(chunk) - 1).bit_length()
        chunk += chunk[-1:] * (size - len(chunk))
        if hotsql.fetch(conn, _STARTED_KEYS, {"b_workflow": workflow, **{f"k{i}": k for i, k in enumerate(chunk)}}):
            return True
    return False
