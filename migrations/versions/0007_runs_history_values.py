"""runs.history_values: what a workflow's history pseudo-states remember

Revision ID: 0007
Revises: 0006

python-statemachine keeps the states a compound state was in when it was left
(``history_values``) on the machine, not on its model; a run rebuilt at its stored
configuration had forgotten them, and re-entering through a history state failed.
Null for runs of workflows without history states.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('runs') as batch:
        batch.add_column(sa.Column('history_values', sa.JSON(), nullable=True))


def downgrade():
    with op.batch_alter_table('runs') as batch:
        batch.drop_column('history_values')
