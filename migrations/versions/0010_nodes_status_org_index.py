"""nodes: the list filtered by status and sorted by organisation pages in index order

Revision ID: 0010_nodes_status_org_index
Revises: 0009_password_history

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0010_nodes_status_org_index'
down_revision = '0009_password_history'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.create_index('ix_nodes_status_org_name', ['status', 'org_name', 'node_id'], unique=False)


def downgrade():
    with op.batch_alter_table('nodes', schema=None) as batch_op:
        batch_op.drop_index('ix_nodes_status_org_name')
