"""admission_slots, admission_waiters, runs.admission_since: a workflow's max_active runs

Revision ID: 0022
Revises: 0020

A workflow declaring ``max_active`` has ``n`` slot rows per key (the run holding each, from its
admission until it ends); a run started while all are held waits in its initial state with an
admission_waiters row, and ``runs.admission_since`` says since when (engine/admission.py).
"""
import sqlalchemy as sa
from alembic import op

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('runs', sa.Column('admission_since', sa.Double(), nullable=True))
    op.create_table(
        'admission_slots',
        sa.Column('workflow', sa.String(200), nullable=False),
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('slot', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('run_id', sa.String(32), nullable=True),
        sa.Column('acquired_at', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('workflow', 'key', 'slot', name='pk_admission_slots'),
    )
    op.create_index('ix_admission_slots_run_id', 'admission_slots', ['run_id'], unique=False)
    op.create_table(
        'admission_waiters',
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('workflow', sa.String(200), nullable=False),
        sa.Column('key', sa.String(255), nullable=False),
        sa.Column('priority', sa.Integer(), nullable=False),
        sa.Column('since', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('run_id', name='pk_admission_waiters'),
    )
    op.create_index('ix_admission_waiters_workflow_key_priority_since', 'admission_waiters',
                    ['workflow', 'key', 'priority', 'since'], unique=False)


def downgrade():
    op.drop_index('ix_admission_waiters_workflow_key_priority_since', table_name='admission_waiters')
    op.drop_table('admission_waiters')
    op.drop_index('ix_admission_slots_run_id', table_name='admission_slots')
    op.drop_table('admission_slots')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('admission_since')
