"""Alembic environment: the URL comes from the caller or INTERLOCK_DATABASE_URL."""

import os

from alembic import context
from sqlalchemy import create_engine, pool

from engine.db import normalize_url
from engine.models import metadata

config = context.config
url = config.attributes.get("connection_url") or normalize_url(
    os.environ.get("INTERLOCK_DATABASE_URL", "sqlite:///interlock.db"))


def run_migrations_offline():
    context.configure(url=url, target_metadata=metadata, literal_binds=True,
                      render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    connectable = create_engine(url, poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata,
                          render_as_batch=connection.dialect.name == "sqlite",
                          compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
