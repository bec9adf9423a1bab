"""workers, brokers, tasks.sent_by and tasks.sends: re-send a task only when it may be lost

Revision ID: 0009
Revises: 0008

A queued task used to be sent again whenever it had waited longer than the re-send
interval, so a task waiting behind a backlog ran twice. Now each worker process keeps a
row in ``workers`` with a heartbeat, each task names the worker that sent it
(``sent_by``) and counts its sends (``sends``), and ``brokers`` records the identity of
the broker server (Redis's run id) seen last: a task is sent again when its sender died,
the broker restarted, or a long safety interval passed.
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'workers',
        sa.Column('id', sa.String(32), nullable=False),
        sa.Column('host', sa.String(255), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.Double(), nullable=False),
        sa.Column('heartbeat_at', sa.Double(), nullable=False),
        sa.Column('stopped_at', sa.Double(), nullable=True),
        sa.Column('workflows', sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_workers')),
    )
    op.create_table(
        'brokers',
        sa.Column('name', sa.String(255), nullable=False),
        sa.Column('server_id', sa.String(64), nullable=False),
        sa.Column('started_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_brokers')),
    )
    with op.batch_alter_table('tasks') as batch:
        batch.add_column(sa.Column('sent_by', sa.String(32), nullable=True))
        batch.add_column(sa.Column('sends', sa.Integer(), nullable=False, server_default='0'))


def downgrade():
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('sends')
        batch.drop_column('sent_by')
    op.drop_table('brokers')
    op.drop_table('workers')
