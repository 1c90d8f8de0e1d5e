"""login_checks: password checks under way, kept apart from confirmed failures so right passwords signed in
together do not lock their account or address

Revision ID: 0011_login_checks
Revises: 0010_nodes_status_org_index

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011_login_checks'
down_revision = '0010_nodes_status_org_index'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('login_checks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_login_checks'))
    )
    with op.batch_alter_table('login_checks', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_login_checks_key'), ['key'], unique=False)


def downgrade():
    with op.batch_alter_table('login_checks', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_login_checks_key'))

    op.drop_table('login_checks')
