"""trace context of runs and tasks (OpenTelemetry)

Revision ID: 0020
Revises: 0019

A run stores its start's span and a task the span of the change that created it, as W3C
``traceparent`` text (engine/tracing.py), so that every later change and step attempt joins the
run's trace, in whichever process and however late it runs. NULL where nothing was traced.
"""
import sqlalchemy as sa
from alembic import op

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('runs', sa.Column('trace_context', sa.String(length=64), nullable=True))
    op.add_column('tasks', sa.Column('trace_context', sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table('tasks') as batch:
        batch.drop_column('trace_context')
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('trace_context')
