"""certificates, applications: SHA-256 of the public key, so one key is certified for one node only

Revision ID: 0006_key_fingerprints
Revises: 0005_nodes_province_index

"""
import hashlib

from alembic import op
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import serialization


# revision identifiers, used by Alembic.
revision = '0006_key_fingerprints'
down_revision = '0005_nodes_province_index'
branch_labels = None
depends_on = None


def _spki_sha256(public_key) -> str:
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _backfill(table: str, key: str, pem_column: str, load) -> None:
    """Existing rows get their fingerprint from the PEM they already keep; an unreadable one stays NULL."""
    connection = op.get_bind()
    rows = connection.execute(sa.text(f"SELECT {key}, {pem_column} FROM {table} WHERE {pem_column} IS NOT NULL"))
    for row_key, pem in rows.all():
        try:
            fingerprint = _spki_sha256(load(pem.encode()).public_key())
        except ValueError:
            continue
        connection.execute(sa.text(f"UPDATE {table} SET key_sha256 = :fingerprint WHERE {key} = :key"),
                           {"fingerprint": fingerprint, "key": row_key})


def upgrade():
    with op.batch_alter_table('certificates', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_certificates_key_sha256'), ['key_sha256'], unique=False)
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.add_column(sa.Column('key_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f('ix_applications_key_sha256'), ['key_sha256'], unique=False)
    _backfill('certificates', 'serial', 'pem', x509.load_pem_x509_certificate)
    _backfill('applications', 'id', 'csr_pem', x509.load_pem_x509_csr)


def downgrade():
    with op.batch_alter_table('applications', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_applications_key_sha256'))
        batch_op.drop_column('key_sha256')
    with op.batch_alter_table('certificates', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_certificates_key_sha256'))
        batch_op.drop_column('key_sha256')
