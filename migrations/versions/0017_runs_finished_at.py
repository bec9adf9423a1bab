"""index for the dashboard: runs by (finished_at, status)

Revision ID: 0017
Revises: 0016

The web dashboard counts the runs that finished in each hour of the last day, per status: an
index range over the last day (read from the index alone) instead of a scan of every run. A
run's entry is written once, when it ends (and again if a retried run ends again).
"""
from alembic import op

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_runs_finished_at_status', 'runs', ['finished_at', 'status'], unique=False)


def downgrade():
    op.drop_index('ix_runs_finished_at_status', table_name='runs')
