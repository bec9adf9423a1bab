"""runs.open_timers: how many timers of the run are armed or suspended

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('open_timers', sa.Integer(), server_default='0', nullable=False))
    # Runs in flight keep their count right.
    op.execute("UPDATE runs SET open_timers = (SELECT count(*) FROM timers WHERE timers.run_id = runs.id "
               "AND timers.status IN ('armed', 'suspended'))")


def downgrade():
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('open_timers')
