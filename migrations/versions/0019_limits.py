"""limit_slots, limit_waiters, rate_buckets, runs.priority: concurrency and rate limits, priorities

Revision ID: 0019
Revises: 0018

A step's concurrency limit is a row per slot (the task holding it); a task waiting for one has a
limit_waiters row (status ``limited``); a rate limit keeps when its next attempt may start, and
an attempt's reserved start (tasks.rate_at). A
run's priority orders the waiters (and RabbitMQ messages).
"""
import sqlalchemy as sa
from alembic import op

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('runs', sa.Column('priority', sa.Integer(), server_default='0', nullable=False))
    op.add_column('tasks', sa.Column('rate_at', sa.Double(), nullable=True))
    op.add_column('tasks', sa.Column('slot', sa.Integer(), nullable=True))
    op.create_table(
        'limit_slots',
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('slot', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('task_id', sa.String(32), nullable=True),
        sa.Column('acquired_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('name', 'key', 'slot', name='pk_limit_slots'),
    )
    op.create_index('ix_limit_slots_task_id', 'limit_slots', ['task_id'], unique=False)
    op.create_table(
        'limit_waiters',
        sa.Column('task_id', sa.String(32), nullable=False),
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('since', sa.Double(), nullable=False),
        sa.Column('time_limit', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('task_id', name='pk_limit_waiters'),
    )
    op.create_index('ix_limit_waiters_name_key_priority_since', 'limit_waiters',
                    ['name', 'key', 'priority', 'since'], unique=False)
    op.create_table(
        'rate_buckets',
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('next_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('name', 'key', name='pk_rate_buckets'),
    )


def downgrade():
    op.drop_table('rate_buckets')
    op.drop_index('ix_limit_waiters_name_key_priority_since', table_name='limit_waiters')
    op.drop_table('limit_waiters')
    op.drop_index('ix_limit_slots_task_id', table_name='limit_slots')
    op.drop_table('limit_slots')
    op.drop_column('tasks', 'slot')
    op.drop_column('tasks', 'rate_at')
    op.drop_column('runs', 'priority')
