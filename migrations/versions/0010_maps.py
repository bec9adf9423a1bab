"""maps and map_items: a state that runs a child workflow per item of a list

Revision ID: 0010
Revises: 0009

One `maps` row per parent state entry that fans out (its counters: what the fan-in reads
under the parent's lock instead of counting items), one `map_items` row per item (its child
run, its status and its result, read in item order when the map is done).
"""
import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'maps',
        sa.Column('parent_id', sa.String(32), nullable=False),
        sa.Column('entry_seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('state', sa.String(200), nullable=False),
        sa.Column('name', sa.String(200), nullable=False),
        sa.Column('total', sa.Integer(), nullable=False),
        sa.Column('running', sa.Integer(), nullable=False),
        sa.Column('succeeded', sa.Integer(), nullable=False),
        sa.Column('failed', sa.Integer(), nullable=False),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('created_at', sa.Double(), nullable=False),
        sa.Column('updated_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('parent_id', 'entry_seq', name='pk_maps'),
    )
    op.create_table(
        'map_items',
        sa.Column('parent_id', sa.String(32), nullable=False),
        sa.Column('entry_seq', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('idx', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('item', sa.JSON(), nullable=True),
        sa.Column('child_id', sa.String(32), nullable=True),
        sa.Column('status', sa.String(16), nullable=False),
        sa.Column('result', sa.JSON(), nullable=True),
        sa.Column('updated_at', sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint('parent_id', 'entry_seq', 'idx', name='pk_map_items'),
    )
    op.create_index('ix_map_items_child_id', 'map_items', ['child_id'], unique=False)
    op.create_index('ix_map_items_parent_id_entry_seq_status_idx', 'map_items',
                    ['parent_id', 'entry_seq', 'status', 'idx'], unique=False)


def downgrade():
    op.drop_index('ix_map_items_parent_id_entry_seq_status_idx', table_name='map_items')
    op.drop_index('ix_map_items_child_id', table_name='map_items')
    op.drop_table('map_items')
    op.drop_table('maps')
