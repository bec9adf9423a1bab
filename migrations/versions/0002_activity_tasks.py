"""activity tasks: receipt token and visibility timeout

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('visibility_timeout', sa.Double(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tasks_token'), ['token'], unique=False)
        batch_op.create_index(batch_op.f('ix_tasks_kind_name_status'), ['kind', 'name', 'status'], unique=False)


def downgrade():
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tasks_kind_name_status'))
        batch_op.drop_index(batch_op.f('ix_tasks_token'))
        batch_op.drop_column('visibility_timeout')
        batch_op.drop_column('token')
