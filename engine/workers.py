"""Worker processes in the database: a row each, with a heartbeat, and the broker server they see.

A task is sent again only when its message may really be lost (see the reconciler): when
the process that sent it (or ran it eagerly) died, which its stale heartbeat shows, or when
the broker restarted without the message, which a new broker server id shows. A worker that
stops cleanly has sent or finished everything it committed, so it is marked stopped, not
dead. Heartbeats go on the lease connection (on PostgreSQL without waiting for the WAL flush:
losing one only makes a worker look dead a little early).
"""

import logging
import os
import socket
import time

from sqlalchemy import and_, case, exists, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from .ids import new_id
from .models import brokers, runs, tasks, workers

log = logging.getLogger(__name__)
# Rows of workers dead this long are deleted: their tasks (if any still wait) count as sent
# by no live worker, which is what they are.
FORGET_AFTER = 86_400.0
PRUNE_EVERY = 3_600.0
# On Redis, a consumer that stops beating this long is dead to Dramatiq, which then puts its
# unacknowledged messages back on the queue (Dramatiq's default is 60 s). Each worker process
# also beats through the broker with its own heartbeat, so an idle one never looks dead.
REDIS_HEARTBEAT_TIMEOUT_MS = 15_000
# Per million Redis commands, how many also run that clean-up (Dramatiq's default: 1,000).
REDIS_MAINTENANCE_CHANCE = 20_000


def beat_interval(settings) -> float:
    return max(0.05, min(5.0, settings.lease_seconds / 3))


def sender_gone(now: float, lease_seconds: float, me: str | None):
    """The task's sender is a worker process that is gone: no row, or no heartbeat for two
    leases and not stopped cleanly (this process is never gone to itself). Two leases: a
    loop held up for one lease (a slow pass, a broker outage) is not taken for a death, whose
    re-send could run a second copy beside one still running unclaimed."""
    alive = exists().where(workers.c.id == tasks.c.sent_by, or_(
        workers.c.heartbeat_at >= now - 2 * lease_seconds, workers.c.stopped_at.is_not(None)))
    gone = and_(tasks.c.sent_by.is_not(None), ~alive)
    return and_(gone, tasks.c.sent_by != me) if me is not None else gone


class Presence:
    """This process's row in ``workers``: registered when its worker starts, beaten by its
    reconciler, marked stopped when it stops cleanly."""

    def __init__(self, rt):
        self.rt = rt
        self.id = new_id()
        self.beaten_at = 0.0
        self._pruned_at = 0.0
        self._server_id = None  # the broker server id this process last checked

    def register(self) -> None:
        now = self.rt.clock.now()
        loaded = {name: list(self.rt.registry.versions(name)) for name in self.rt.registry.names()}
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(insert(workers).values(id=self.id, host=socket.gethostname()[:255], pid=os.getpid(),
                                                started_at=now, heartbeat_at=now, workflows=loaded))
        self.beaten_at = now

    def beat(self) -> None:
        """Renew the heartbeat when due; look for a restarted broker."""
        now = self.rt.clock.now()
        if now - self.beaten_at < beat_interval(self.rt.settings):
            return
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(update(workers).where(workers.c.id == self.id).values(heartbeat_at=now))
            if now - self._pruned_at > PRUNE_EVERY:
                conn.execute(workers.delete().where(workers.c.heartbeat_at < now - FORGET_AFTER))
                self._pruned_at = now
        self.beaten_at = now
        self.rt.dispatcher.touch()
        self.check_broker()

    def stopped(self, clean: bool) -> None:
        """A clean stop: nothing this process committed is left unsent or half run."""
        if not clean:
            return
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            conn.execute(update(workers).where(workers.c.id == self.id).values(stopped_at=self.rt.clock.now()))

    def check_broker(self) -> int:
        """If the broker server is not the one recorded, record it and mark the tasks sent
        before it started unsent, so the reconciler sends them again (once: the process
        whose UPDATE replaces the old server id does it). How many were marked."""
        server = self.rt.dispatcher.server()
        if server is None or server[0] == self._server_id:
            return 0
        server_id, uptime = server
        started_at = self.rt.clock.now() - uptime
        name = self.rt.settings.queue
        with self.rt.db.write(self.rt.db.lease_engine) as conn:
            known = conn.execute(select(brokers.c.server_id).where(brokers.c.name == name)).scalar()
            if known is None:
                try:
                    with conn.begin_nested():
                        conn.execute(insert(brokers).values(name=name, server_id=server_id, started_at=started_at))
                except IntegrityError:
                    pass  # another process recorded it first
                marked = 0
            elif known == server_id:
                marked = 0
            else:
                replaced = conn.execute(update(brokers).where(brokers.c.name == name, brokers.c.server_id == known)
                                        .values(server_id=server_id, started_at=started_at)).rowcount
                marked = conn.execute(update(tasks).where(
                    tasks.c.status == "queued", tasks.c.kind == "step", tasks.c.sent_at < started_at,
                ).values(sent_at=None)).rowcount if replaced == 1 else 0
        self._server_id = server_id
        if marked:
            log.warning("the broker restarted (server %s): %d task(s) sent before it will be sent again",
                        server_id, marked)
        return marked


def unsent(rt, task_id: str) -> None:
    """A send that failed after its task was committed as sent: marked unsent (and the send
    not counted), so the reconciler sends it at once, as a first send."""
    try:
        with rt.db.write(rt.db.lease_engine) as conn:
            conn.execute(update(tasks).where(tasks.c.id == task_id, tasks.c.status == "queued",
                                             tasks.c.sent_at.is_not(None))
                         .values(sent_at=None, sends=case((tasks.c.sends > 0, tasks.c.sends - 1), else_=0)))
    except Exception:  # noqa: BLE001 - then it waits for the safety interval
        log.warning("could not mark task %s unsent", task_id, exc_info=True, extra={"task_id": task_id})


def loaded_by_live_workers(conn, now: float, lease_seconds: float) -> set:
    """(workflow, version) pairs some live worker process loads (a heartbeat within two leases)."""
    rows = conn.execute(select(workers.c.workflows).where(
        workers.c.stopped_at.is_(None), workers.c.heartbeat_at >= now - 2 * lease_seconds)).scalars()
    return {(name, version) for loaded in rows for name, versions in (loaded or {}).items() for version in versions}


def versions_nobody_loads(rt) -> list[dict]:
    """Workflow versions with active runs that no live worker loads: nothing moves those runs
    (no step, timer or lost task) until a worker loads the version again, or they are migrated."""
    now = rt.clock.now()
    with rt.db.read() as conn:
        loaded = loaded_by_live_workers(conn, now, rt.settings.lease_seconds)
        active = conn.execute(select(runs.c.workflow, runs.c.version, func.count()).where(
            runs.c.status.in_(("running", "waiting"))).group_by(runs.c.workflow, runs.c.version)).all()
    return [{"workflow": name, "version": version, "runs": count}
            for name, version, count in active if (name, version) not in loaded]


def warn_of_unloaded_versions(rt) -> None:
    """At a worker's start: one warning per version with active runs that no live worker loads."""
    for row in versions_nobody_loads(rt):
        others = [v for v in rt.registry.versions(row["workflow"]) if v != row["version"]]
        hint = (f"; or move them: interlock migrate plan {row['workflow']} --from {row['version']} --to {others[-1]}"
                if others else "")
        log.warning("workflow %s v%s has %d active run(s) and no live worker loads that version: they do "
                    "not move until one does%s", row["workflow"], row["version"], row["runs"], hint)
