"""runs: index on (state, id), and a partial index of the parallel runs, for GET /api/runs?state=

Revision ID: 0006
Revises: 0005

The state filter was `state = x OR state LIKE 'x,%' OR ...` (the comma-joined leaves of
parallel states), which no B-tree serves: with 10^6 runs a state held by no run scanned the
whole table (~90 ms). Now an exact match walks (state, id) newest first, and the parallel runs
are read apart, through an index of them alone (PostgreSQL and SQLite; MariaDB has no partial
index and gets a plain one). (state, id) replaces the index on state alone.
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

PARALLEL = "state LIKE '%,%'"


def upgrade():
    op.create_index('ix_runs_state_id', 'runs', ['state', 'id'], unique=False)
    op.drop_index('ix_runs_state', table_name='runs')
    op.create_index('ix_runs_parallel', 'runs', ['id'], unique=False,
                    sqlite_where=sa.text(PARALLEL), postgresql_where=sa.text(PARALLEL))


def downgrade():
    op.drop_index('ix_runs_parallel', table_name='runs')
    op.create_index('ix_runs_state', 'runs', ['state'], unique=False)
    op.drop_index('ix_runs_state_id', table_name='runs')
