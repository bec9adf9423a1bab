"""runs: index on created_at, for the created_after / created_before filters of GET /api/runs

Revision ID: 0005
Revises: 0004

With 10^6 runs a one-day range in the middle of the history walked the primary key past
~500,000 newer runs (~100-300 ms); with this index it reads that day's runs and sorts them
(~1 ms). bench/scale.py measures it.
"""
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_created_at'), ['created_at'], unique=False)


def downgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_created_at'))
