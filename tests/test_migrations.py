"""The schema comes from Alembic alone, and the migrations match the models on every database."""

import os
from contextlib import contextmanager

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from engine.config import Settings
from engine.db import Database
from engine.errors import SchemaOutOfDate
from engine.models import metadata
from engine.runner import follow
from engine.runtime import Interlock

from .conftest import PG_ADMIN_URL, require_server

MARIADB_ADMIN_URL = "mysql+pymysql://root@127.0.0.1:3306/"


@contextmanager
def fresh_database(kind, tmp_path):
    """A URL of a database with no tables at all."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    if kind == "postgresql":
        require_server("PostgreSQL", "127.0.0.1", 5432)
        admin_url, quote = PG_ADMIN_URL, '"'
        base = PG_ADMIN_URL.rsplit("/", 1)[0] + "/"
    else:
        require_server("MariaDB", "127.0.0.1", 3306)
        admin_url, quote, base = MARIADB_ADMIN_URL, "`", MARIADB_ADMIN_URL
    # The pid too: two test runs at once (another checkout's) must not share a database.
    name = f"interlock_migrations_{os.getpid()}_{tmp_path.name[-20:]}".replace("-", "_").lower()
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
        conn.execute(text(f"CREATE DATABASE {quote}{name}{quote}"))
    yield base + name
    with admin.connect() as conn:
        if kind == "postgresql":
            conn.execute(text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"))
        conn.execute(text(f"DROP DATABASE IF EXISTS {quote}{name}{quote}"))
    admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def empty_database(request, tmp_path):
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def mariadb_database(tmp_path):
    with fresh_database("mariadb", tmp_path) as url:
        yield url


def test_upgrade_from_empty_to_head_matches_the_models(empty_database):
    db = Database(empty_database)
    db.upgrade()
    assert db.current_revision() == db.head_revision()
    with db.engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
    assert {"runs", "history", "tasks", "timers"} <= tables
    assert diff == []
    db.dispose()


def test_0006_downgrades_to_the_state_index_and_upgrades_again(empty_database):
    db = Database(empty_database)
    db.upgrade()

    def indexes():
        """{name: (columns, its WHERE as text, or None)} of the runs table's indexes."""
        with db.engine.connect() as conn:
            found = inspect(conn).get_indexes("runs")
        wheres = (ix.get("dialect_options", {}).get(f"{db.dialect}_where") for ix in found)
        return {ix["name"]: (ix["column_names"], None if where is None else str(where))
                for ix, where in zip(found, wheres)}

    head = indexes()
    assert head["ix_runs_state_id"][0] == ["state", "id"] and "ix_runs_state" not in head
    assert head["ix_runs_parallel"][0] == ["id"]
    where = head["ix_runs_parallel"][1]  # MariaDB has no partial index: a plain one there
    assert "'%,%'" in where if db.dialect in ("sqlite", "postgresql") else where is None, where
    command.downgrade(db.alembic_config(), "0005")
    assert db.current_revision() == "0005"
    down = indexes()
    assert down["ix_runs_state"][0] == ["state"] and not down.keys() & {"ix_runs_state_id", "ix_runs_parallel"}
    db.upgrade()
    assert indexes() == head
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata) == []
    db.dispose()


def _wheres(db, tables) -> dict:
    """{index name: its WHERE as the database gives it back, or None} of ``tables``."""
    with db.engine.connect() as conn:
        found = {ix["name"]: ix.get("dialect_options", {}).get(f"{db.dialect}_where")
                 for table in tables for ix in inspect(conn).get_indexes(table)}
    return {name: None if where is None else " ".join(str(where).split()) for name, where in found.items()}


def test_0021_indexes_rows_with_the_column_set_and_downgrades_to_full_indexes(empty_database):
    db = Database(empty_database)
    db.upgrade()
    tables = ("runs", "run_search", "tasks")
    partial = {ix.name: ix.dialect_options["sqlite"]["where"] for table in tables
               for ix in metadata.tables[table].indexes
               if ix.name != "ix_runs_parallel" and ix.dialect_options["sqlite"]["where"] is not None}
    head = _wheres(db, tables)
    if db.dialect not in ("sqlite", "postgresql"):  # MariaDB has no partial index: full ones, as before
        assert all(head[name] is None for name in head if name != "ix_runs_parallel")
    else:
        assert set(partial) == {"ix_runs_parent_id_id", "ix_runs_workflow_version_finished_at",
                                "ix_runs_finished_at_status", "ix_run_search_field_text_value_run_id",
                                "ix_run_search_field_num_value_run_id", "ix_tasks_token"}
        for name, where in partial.items():
            column = str(where).split()[0]
            assert column in head[name] and "NOT NULL" in head[name].upper(), (name, head[name])
    command.downgrade(db.alembic_config(), "0020")
    down = _wheres(db, tables)
    assert down.keys() == head.keys() and all(down[name] is None for name in partial)
    db.upgrade()
    assert _wheres(db, tables) == head
    db.dispose()


def test_engine_refuses_a_database_behind_head_and_says_what_to_run(tmp_path):
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'behind.db'}")
    with pytest.raises(SchemaOutOfDate, match="interlock db upgrade"):
        Interlock(settings)


def test_a_run_finishes_on_mariadb(mariadb_database):
    Database(mariadb_database).upgrade()
    rt = Interlock(Settings(database_url=mariadb_database, broker_url="memory://",
                            workflows="workflows", poll_interval=0.05))
    try:
        with rt.worker(2):
            run = rt.start("orders", rt.registry.get("orders").demo_data)
            final = follow(rt, run.id, timeout=20, events={"review": "approve"})
        assert final.status == "succeeded"
        assert [h.seq for h in rt.history(run.id)] == list(range(1, final.last_seq + 1))
    finally:
        rt.close()
