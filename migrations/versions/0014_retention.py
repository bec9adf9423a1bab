"""indexes for retention: runs by (workflow, version, finished_at), signals by sender

Revision ID: 0014
Revises: 0013

The reconciler deletes a workflow version's runs finished before its retention's cutoff,
oldest first: an index range per version instead of a scan of every run. A deleted run's
signals are found by receiver (already indexed) and by sender (this index).
"""
from alembic import op

revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade():
    op.create_index('ix_runs_workflow_version_finished_at', 'runs', ['workflow', 'version', 'finished_at'],
                    unique=False)
    op.create_index('ix_signals_source_id', 'signals', ['source_id'], unique=False)


def downgrade():
    op.drop_index('ix_signals_source_id', table_name='signals')
    op.drop_index('ix_runs_workflow_version_finished_at', table_name='runs')
