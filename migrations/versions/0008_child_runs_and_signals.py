"""Child runs (runs.parent_id, parent_state, parent_seq) and the signals table

Revision ID: 0008
Revises: 0007

A state may start a child run of another workflow; the child's end reaches its parent as a
signal row written in the child's final transaction and applied by the parent's own
transition, exactly once (a stale one, for a state entry the parent has left, is recorded and
ignored). A parent leaving that state or cancelled tells its child the same way.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('parent_id', sa.String(32), nullable=True))
        batch.add_column(sa.Column('parent_state', sa.String(200), nullable=True))
        batch.add_column(sa.Column('parent_seq', sa.Integer(), nullable=True))
    op.create_index('ix_runs_parent_id_id', 'runs', ['parent_id', 'id'], unique=False)
    op.create_table(
        'signals',
        sa.Column('id', sa.String(32), nullable=False),
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('kind', sa.String(32), nullable=False),
        sa.Column('source_id', sa.String(32), nullable=False),
        sa.Column('state', sa.String(200), nullable=True),
        sa.Column('entry_seq', sa.Integer(), nullable=True),
        sa.Column('payload', sa.JSON(), nullable=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('applied_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_signals'),
    )
    op.create_index('ix_signals_status_created_at', 'signals', ['status', 'created_at'], unique=False)
    op.create_index('ix_signals_run_id_status', 'signals', ['run_id', 'status'], unique=False)


def downgrade():
    op.drop_index('ix_signals_run_id_status', table_name='signals')
    op.drop_index('ix_signals_status_created_at', table_name='signals')
    op.drop_table('signals')
    op.drop_index('ix_runs_parent_id_id', table_name='runs')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('parent_seq')
        batch.drop_column('parent_state')
        batch.drop_column('parent_id')
