"""run_search: the search fields workflows declare, one row per run and field

Revision ID: 0013
Revises: 0012

A workflow's `search = {"customer": str, "total": float}` is kept here by the transition
function, in the run's own transaction: text in `text_value` (compared by code point on every
database), numbers, booleans and times in `num_value`. Filters walk (field, value, run_id).
"""
import sqlalchemy as sa
from alembic import op

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None

TEXT = sa.String(255).with_variant(sa.String(255, collation="C"), "postgresql").with_variant(
    sa.String(255, collation="utf8mb4_nopad_bin"), "mysql", "mariadb")


def upgrade():
    op.create_table(
        'run_search',
        sa.Column('run_id', sa.String(32), nullable=False),
        sa.Column('field', sa.String(100), nullable=False),
        sa.Column('text_value', TEXT, nullable=True),
        sa.Column('num_value', sa.Double(), nullable=True),
        sa.PrimaryKeyConstraint('run_id', 'field', name='pk_run_search'),
    )
    op.create_index('ix_run_search_field_text_value_run_id', 'run_search',
                    ['field', 'text_value', 'run_id'], unique=False)
    op.create_index('ix_run_search_field_num_value_run_id', 'run_search',
                    ['field', 'num_value', 'run_id'], unique=False)


def downgrade():
    op.drop_index('ix_run_search_field_num_value_run_id', table_name='run_search')
    op.drop_index('ix_run_search_field_text_value_run_id', table_name='run_search')
    op.drop_table('run_search')
