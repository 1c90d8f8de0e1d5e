"""login_throttles: the sign-ins refused during a lock, counted rather than each audited

Revision ID: 0013_login_throttle_refused
Revises: 0012_revoked_intermediates

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0013_login_throttle_refused'
down_revision = '0012_revoked_intermediates'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('login_throttles', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refused', sa.Integer(), server_default='0', nullable=False))


def downgrade():
    with op.batch_alter_table('login_throttles', schema=None) as batch_op:
        batch_op.drop_column('refused')
