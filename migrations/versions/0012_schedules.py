"""schedules and schedule_ticks: workflows started on a cron expression or an interval

Revision ID: 0012
Revises: 0011

One `schedules` row per schedule (its definition, paused or not, the next tick to fire), one
`schedule_ticks` row per tick that fired: its primary key (schedule, fire time) is what makes
a second run for one tick impossible, however many reconcilers race.
"""
import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'schedules',
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('workflow', sa.String(200), nullable=False),
        sa.Column('version', sa.Integer(), nullable=True),
        sa.Column('cron', sa.String(200), nullable=True),
        sa.Column('every', sa.Double(), nullable=True),
        sa.Column('timezone', sa.String(64), nullable=False),
        sa.Column('data', sa.JSON(), nullable=False),
        sa.Column('overlap', sa.String(16), nullable=False),
        sa.Column('catchup', sa.String(8), nullable=False),
        sa.Column('catchup_window', sa.Double(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('origin', sa.String(8), nullable=False),
        sa.Column('next_fire_at', sa.Double(), nullable=True),
        sa.Column('last_fire_at', sa.Double(), nullable=True),
        sa.Column('last_run_id', sa.String(32), nullable=True),
        sa.Column('buffered_at', sa.Double(), nullable=True),
        sa.Column('missed', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('updated_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('name', name='pk_schedules'),
    )
    op.create_index('ix_schedules_status_next_fire_at', 'schedules', ['status', 'next_fire_at'], unique=False)
    op.create_table(
        'schedule_ticks',
        sa.Column('schedule', sa.String(200), nullable=False),
        sa.Column('fire_time', sa.Double(), autoincrement=False, nullable=False),
        sa.Column('cause', sa.String(16), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('run_id', sa.String(32), nullable=True),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('started_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('schedule', 'fire_time', name='pk_schedule_ticks'),
    )
    op.create_index('ix_schedule_ticks_run_id', 'schedule_ticks', ['run_id'], unique=False)


def downgrade():
    op.drop_index('ix_schedule_ticks_run_id', table_name='schedule_ticks')
    op.drop_table('schedule_ticks')
    op.drop_index('ix_schedules_status_next_fire_at', table_name='schedules')
    op.drop_table('schedules')
