"""users: a password someone else chose (a new account, an admin's reset) must be changed at sign-in

Revision ID: 0007_password_must_change
Revises: 0006_key_fingerprints

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007_password_must_change'
down_revision = '0006_key_fingerprints'
branch_labels = None
depends_on = None


def upgrade():
    # Existing accounts keep working as they are; the password-age rule still reaches them.
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.add_column(sa.Column('password_must_change', sa.Boolean(), server_default=sa.false(),
                                      nullable=False))


def downgrade():
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_column('password_must_change')
