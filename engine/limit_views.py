"""What the concurrency limits hold now (engine/limits.py), for explain, the run page, the API
and the CLI: read-only."""

from sqlalchemy import func, select

from .limits import AGING, effective_priority
from .models import limit_slots, limit_waiters


def in_use(conn, name: str, key: str) -> tuple[int, int]:
    """(slots held, waiters) of a limit's key, for explain and the run page."""
    held = conn.execute(select(func.count()).select_from(limit_slots).where(
        limit_slots.c.name == name, limit_slots.c.key == key, limit_slots.c.task_id.is_not(None))).scalar_one()
    waiting = conn.execute(select(func.count()).select_from(limit_waiters).where(
        limit_waiters.c.name == name, limit_waiters.c.key == key)).scalar_one()
    return held, waiting


def waiting_for(conn, task_id, now: float) -> dict | None:
    """The limit a ``limited`` task waits for: its name, key, waiters ahead."""
    row = conn.execute(select(limit_waiters).where(limit_waiters.c.task_id == task_id)).mappings().first()
    if row is None:
        return None
    held, waiting = in_use(conn, row["name"], row["key"])
    slots = conn.execute(select(func.count()).select_from(limit_slots).where(
        limit_slots.c.name == row["name"], limit_slots.c.key == row["key"])).scalar_one()
    ahead = conn.execute(select(func.count()).select_from(limit_waiters).where(
        limit_waiters.c.name == row["name"], limit_waiters.c.key == row["key"],
        limit_waiters.c.task_id != task_id,
        effective_priority(now) >= row["priority"] + (now - row["since"]) / AGING)).scalar_one()
    return {"limit": row["name"], "key": row["key"] or None, "in_use": held, "slots": slots, "waiters": waiting,
            "ahead": ahead, "since": row["since"]}


def describe_wait(limit: dict) -> str:
    """``a slot of lim_call.call (account A-17: 5 of 5 in use, 2 waiting ahead)``."""
    where = f"{limit['key']}: " if limit["key"] else ""
    return (f"a slot of {limit['limit']} ({where}{limit['in_use']} of {limit['slots']} in use, "
            f"{limit['ahead']} waiting ahead)")



def list_limits(rt, *, name=None, limit=100) -> list[dict]:
    """The limit keys with slots in use or waiters: name, key, slots, in use, waiting (busiest first)."""
    held = func.count(limit_slots.c.task_id)
    query = (select(limit_slots.c.name, limit_slots.c.key, func.count().label("slots"), held.label("in_use"))
             .group_by(limit_slots.c.name, limit_slots.c.key).order_by(held.desc(), limit_slots.c.name)
             .limit(limit))
    if name is not None:
        query = query.where(limit_slots.c.name == name)
    with rt.db.read() as conn:
        rows = conn.execute(query).all()
        waiting = dict(((n, k), c) for n, k, c in conn.execute(
            select(limit_waiters.c.name, limit_waiters.c.key, func.count())
            .group_by(limit_waiters.c.name, limit_waiters.c.key)).all())
    return [{"name": n, "key": k or None, "slots": slots, "in_use": used, "waiting": waiting.get((n, k), 0)}
            for n, k, slots, used in rows]
