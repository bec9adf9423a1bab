"""runs, history, tasks and timers

Revision ID: 0001
Revises: 
Create Date: 2026-11-26 07:31:18.381403
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('history',
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('at', sa.Double(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('event', sa.String(length=200), nullable=True),
    sa.Column('source', sa.String(length=500), nullable=True),
    sa.Column('target', sa.String(length=500), nullable=True),
    sa.Column('cause', sa.String(length=32), nullable=True),
    sa.Column('data', sa.JSON(), nullable=True),
    sa.Column('detail', sa.JSON(), nullable=True),
    sa.PrimaryKeyConstraint('run_id', 'seq', name=op.f('pk_history'))
    )
    op.create_table('runs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('workflow', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('state', sa.String(length=500), nullable=False),
    sa.Column('configuration', sa.JSON(), nullable=False),
    sa.Column('entries', sa.JSON(), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('business_key', sa.String(length=255), nullable=True),
    sa.Column('idempotency_key', sa.String(length=255), nullable=True),
    sa.Column('last_seq', sa.Integer(), nullable=False),
    sa.Column('open_tasks', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.Column('finished_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs')),
    sa.UniqueConstraint('workflow', 'idempotency_key', name=op.f('uq_runs_workflow_idempotency_key'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_runs_business_key'), ['business_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_status_id'), ['status', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_runs_workflow_id'), ['workflow', 'id'], unique=False)

    op.create_table('tasks',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=200), nullable=False),
    sa.Column('entry_seq', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('available_at', sa.Double(), nullable=False),
    sa.Column('sent_at', sa.Double(), nullable=True),
    sa.Column('claimed_at', sa.Double(), nullable=True),
    sa.Column('lease_until', sa.Double(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('updated_at', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks'))
    )
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tasks_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_status_available_at'), ['status', 'available_at'], unique=False)

    op.create_table('timers',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=200), nullable=False),
    sa.Column('entry_seq', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('event', sa.String(length=200), nullable=True),
    sa.Column('due_at', sa.Double(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Double(), nullable=False),
    sa.Column('fired_at', sa.Double(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_timers'))
    )
    with op.batch_alter_table('timers', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_timers_run_id'), ['run_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_timers_status_due_at'), ['status', 'due_at'], unique=False)



def downgrade():
    with op.batch_alter_table('timers', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_timers_status_due_at'))
        batch_op.drop_index(batch_op.f('ix_timers_run_id'))

    op.drop_table('timers')
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_status_available_at'))
        batch_op.drop_index(batch_op.f('ix_tasks_run_id'))

    op.drop_table('tasks')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_runs_workflow_id'))
        batch_op.drop_index(batch_op.f('ix_runs_status_id'))
        batch_op.drop_index(batch_op.f('ix_runs_state'))
        batch_op.drop_index(batch_op.f('ix_runs_business_key'))

    op.drop_table('runs')
    op.drop_table('history')
