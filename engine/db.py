"""Database engines, transactions and the migration check."""

import logging
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError

from .errors import SchemaOutOfDate

ROOT = Path(__file__).resolve().parent.parent
WRITE = "interlock_write"
WAL_CHECKPOINT_PAGES = 4000

# Importing alembic logs one INFO line per built-in plugin ("setup plugin ..."): noise at every
# start of any program logging at INFO. Unless the application chose a level for that logger.
_ALEMBIC_PLUGINS_LOG = logging.getLogger("alembic.runtime.plugins")
if _ALEMBIC_PLUGINS_LOG.level == logging.NOTSET:
    _ALEMBIC_PLUGINS_LOG.setLevel(logging.WARNING)


def normalize_url(url: str) -> str:
    """Pick the drivers we ship for the URLs people usually write."""
    for plain, driver in (("postgres://", "postgresql+psycopg://"),
                          ("postgresql://", "postgresql+psycopg://"),
                          ("mysql://", "mysql+pymysql://"),
                          ("mariadb://", "mariadb+pymysql://")):
        if url.startswith(plain):
            return driver + url[len(plain):]
    return url


class Database:
    """The engines of one database: ``engine`` for durable work, ``lease_engine`` for leases.

    Lease claims and renewals may be lost in a crash without harm (the task is simply
    retried), so on PostgreSQL they commit without waiting for the WAL flush.
    """

    def __init__(self, url: str, **engine_kwargs):
        self.url = normalize_url(url)
        self.dialect = make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            self.engine = _sqlite_engine(self.url, **engine_kwargs)
            self.lease_engine = self.engine
        else:
            # No pre-ping (a round trip per checkout): a dropped connection fails its first
            # statement instead, and `transaction` retries such a failure once.
            kwargs = {"pool_size": 10, "max_overflow": 20, "pool_recycle": 3600, **engine_kwargs}
            self.engine = create_engine(self.url, **kwargs)
            if self.dialect == "postgresql":
                self.lease_engine = create_engine(
                    self.url, connect_args={"options": "-c synchronous_commit=off"}, **kwargs)
            else:
                self.lease_engine = self.engine
        self._write_engine = self.engine.execution_options(**{WRITE: True})
        # Reads outside a transaction: no BEGIN/ROLLBACK round trips (SQLite keeps its own).
        self._read_engine = (self.engine if self.dialect == "sqlite"
                             else self.engine.execution_options(isolation_level="AUTOCOMMIT"))
        self.locks_rows = self.dialect in ("postgresql", "mysql", "mariadb")

    def transaction(self, work, engine: Engine | None = None):
        """``work(conn)`` in a write transaction, committed; returns what ``work`` returned.

        A connection found dropped before the commit (the server restarted, or killed our
        backend) is retried once on a fresh one; nothing was written by the failed try.
        """
        engine = engine or self._write_engine
        if engine is self.lease_engine and self.dialect == "sqlite":
            engine = self._write_engine
        for last_try in (False, True):
            with engine.connect() as conn:
                tx = conn.begin()
                try:
                    result = work(conn)
                except DBAPIError as exc:
                    tx.rollback()
                    if exc.connection_invalidated and not last_try:
                        continue
                    raise
                except BaseException:
                    tx.rollback()
                    raise
                tx.commit()
                return result

    @contextmanager
    def write(self, engine: Engine | None = None):
        """A transaction that will write: takes SQLite's write lock up front (no upgrade deadlocks)."""
        engine = engine or self._write_engine
        if engine is self.lease_engine and self.dialect == "sqlite":
            engine = self._write_engine
        with engine.begin() as conn:
            yield conn

    @property
    def write_engine(self) -> Engine:
        """The engine whose transactions take SQLite's write lock at BEGIN (same as ``engine`` elsewhere)."""
        return self._write_engine

    @contextmanager
    def read(self):
        with self._read_engine.connect() as conn:
            yield conn

    def query(self, work):
        """``work(conn)`` on a read connection, retried once if the connection was found dropped."""
        for last_try in (False, True):
            try:
                with self.read() as conn:
                    return work(conn)
            except DBAPIError as exc:
                if not exc.connection_invalidated or last_try:
                    raise

    def dispose(self):
        self.engine.dispose()
        if self.lease_engine is not self.engine:
            self.lease_engine.dispose()

    # -- migrations -------------------------------------------------------------

    def alembic_config(self):
        from alembic.config import Config

        cfg = Config(str(ROOT / "alembic.ini"))
        cfg.set_main_option("script_location", str(ROOT / "migrations"))
        cfg.attributes["connection_url"] = self.url
        return cfg

    def head_revision(self) -> str:
        from alembic.script import ScriptDirectory

        return ScriptDirectory.from_config(self.alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def upgrade(self, revision: str = "head"):
        from alembic import command

        command.upgrade(self.alembic_config(), revision)

    def check_schema(self):
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise SchemaOutOfDate(current, head)


def _sqlite_engine(url: str, **kwargs) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        # Let SQLAlchemy's "begin" event below emit BEGIN, so writers can take the lock up front.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL: a process crash loses nothing; an OS crash may lose the last commits.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        # A checkpoint (two fsyncs) every 4,000 WAL pages instead of SQLite's 1,000: a run's
        # start writes some 23 pages, so one came every ~40 commits. The WAL grows to ~16 MB;
        # one that a long reader let grow past 64 MB is cut back to that when it restarts.
        cur.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
        cur.execute(f"PRAGMA journal_size_limit={64 * 1024 * 1024}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(WRITE) else "BEGIN")

    return engine


def ping(db: Database) -> None:
    with db.read() as conn:
        conn.execute(text("SELECT 1"))
