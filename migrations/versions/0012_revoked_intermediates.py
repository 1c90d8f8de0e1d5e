"""revoked_intermediates: the issuing CAs the root revoked, which the root's CRL lists

Revision ID: 0012_revoked_intermediates
Revises: 0011_login_checks

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0012_revoked_intermediates'
down_revision = '0011_login_checks'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('revoked_intermediates',
    sa.Column('serial', sa.String(length=40), nullable=False),
    sa.Column('subject', sa.String(length=300), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_by', sa.String(length=64), nullable=False),
    sa.CheckConstraint("reason IN ('key_compromise', 'ca_compromise', 'affiliation_changed', 'superseded', 'cessation_of_operation')", name=op.f('ck_revoked_intermediates_reason_known')),
    sa.PrimaryKeyConstraint('serial', name=op.f('pk_revoked_intermediates')),
    sa.UniqueConstraint('sha256', name=op.f('uq_revoked_intermediates_sha256'))
    )


def downgrade():
    op.drop_table('revoked_intermediates')
