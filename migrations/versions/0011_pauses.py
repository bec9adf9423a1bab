"""runs.paused_at and pauses: operators pause a run, or a whole workflow

Revision ID: 0011
Revises: 0010

A paused run keeps its state; its steps do not start and its timers do not fire until it is
resumed. A `pauses` row (version 0: every version) does the same for every run of a
workflow without touching their rows.
"""
import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('paused_at', sa.Double(), nullable=True))
    op.create_table(
        'pauses',
        sa.Column('workflow', sa.String(200), nullable=False),
        sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.Column('paused_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('workflow', 'version'),
    )


def downgrade():
    op.drop_table('pauses')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('paused_at')
