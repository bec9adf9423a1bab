"""batches and batch_items: bulk actions on every run a filter selects

Revision ID: 0015
Revises: 0014

One `batches` row per bulk action (its filter, its cursor over run ids, its counters and the
lease of the reconciler working it), one `batch_items` row per run it handled, written in that
run's transaction: the primary key makes a batch act on a run once.
"""
import sqlalchemy as sa
from alembic import op

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'batches',
        sa.Column('id', sa.String(32), nullable=False),
        sa.Column('action', sa.String(16), nullable=False),
        sa.Column('filter', sa.JSON(), nullable=False),
        sa.Column('args', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('cursor', sa.String(32), nullable=True),
        sa.Column('total_estimate', sa.Integer(), nullable=False),
        sa.Column('done', sa.Integer(), nullable=False),
        sa.Column('refused', sa.Integer(), nullable=False),
        sa.Column('skipped', sa.Integer(), nullable=False),
        sa.Column('owner', sa.String(32), nullable=True),
        sa.Column('lease_until', sa.Double(), nullable=True),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('updated_at', sa.Double(), nullable=False),
        sa.Column('finished_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('id', name='pk_batches'),
    )
    op.create_index('ix_batches_status_created_at', 'batches', ['status', 'created_at'], unique=False)
    op.create_table(
        'batch_items',
        sa.Column('batch_id', sa.String(32), nullable=False),
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('batch_id', 'run_id', name='pk_batch_items'),
    )


def downgrade():
    op.drop_table('batch_items')
    op.drop_index('ix_batches_status_created_at', table_name='batches')
    op.drop_table('batches')
