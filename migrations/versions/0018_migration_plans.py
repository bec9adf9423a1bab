"""migration_plans and migration_runs: moving runs between versions of a workflow

Revision ID: 0018
Revises: 0017

A plan classifies the runs of one version (clean, mapped, impossible) against another, with the
history seq each run was at; applying it (a batch, action "migrate") moves only runs still there.
"""
import sqlalchemy as sa
from alembic import op

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'migration_plans',
        sa.Column('id', sa.String(32), nullable=False),
        sa.Column('workflow', sa.String(200), nullable=False),
        sa.Column('from_version', sa.Integer(), nullable=False),
        sa.Column('to_version', sa.Integer(), nullable=False),
        sa.Column('mapping', sa.JSON(), nullable=False),
        sa.Column('filter', sa.JSON(), nullable=False),
        sa.Column('shapes', sa.JSON(), nullable=False),
        sa.Column('counts', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('batch_id', sa.String(32), nullable=True),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('updated_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('id', name='pk_migration_plans'),
    )
    op.create_table(
        'migration_runs',
        sa.Column('plan_id', sa.String(32), nullable=False),
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('last_seq', sa.Integer(), nullable=False),
        sa.Column('shape', sa.Integer(), nullable=False),
        sa.Column('outcome', sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint('plan_id', 'run_id', name='pk_migration_runs'),
    )
    op.create_index('ix_migration_runs_plan_id_outcome_run_id', 'migration_runs',
                    ['plan_id', 'outcome', 'run_id'], unique=False)


def downgrade():
    op.drop_index('ix_migration_runs_plan_id_outcome_run_id', table_name='migration_runs')
    op.drop_table('migration_runs')
    op.drop_table('migration_plans')
