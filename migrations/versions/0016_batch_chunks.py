"""batch_chunks: a batch's runs cut into id ranges, each leased to one reconciler

Revision ID: 0016
Revises: 0015

A batch is planned into chunks (a range of run ids each, newest first); each chunk is leased
apart, so several workers work one batch at once and a dead worker's chunk is taken over.
`batches.planned` is how far the planning went, `batches.planned_at` when it ended.
"""
import sqlalchemy as sa
from alembic import op

revision = '0016'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('batches', sa.Column('planned', sa.String(32), nullable=True))
    op.add_column('batches', sa.Column('planned_at', sa.Double(), nullable=True))
    op.create_table(
        'batch_chunks',
        sa.Column('batch_id', sa.String(32), nullable=False),
        sa.Column('hi', sa.String(32), nullable=False),
        sa.Column('lo', sa.String(32), nullable=False),
        sa.Column('runs', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('owner', sa.String(32), nullable=True),
        sa.Column('lease_until', sa.Double(), nullable=True),
        sa.Column('finished_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('batch_id', 'hi', name='pk_batch_chunks'),
    )
    op.create_index('ix_batch_chunks_batch_id_status_hi', 'batch_chunks', ['batch_id', 'status', 'hi'],
                    unique=False)


def downgrade():
    op.drop_index('ix_batch_chunks_batch_id_status_hi', table_name='batch_chunks')
    op.drop_table('batch_chunks')
    with op.batch_alter_table('batches') as batch:
        batch.drop_column('planned_at')
        batch.drop_column('planned')
