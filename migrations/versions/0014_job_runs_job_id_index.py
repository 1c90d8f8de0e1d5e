"""job_runs: a job's last run is its last written (highest id), not the one dated latest

Revision ID: 0014_job_runs_job_id_index
Revises: 0013_login_throttle_refused

"""
from alembic import op


# revision identifiers, used by Alembic.
revision = '0014_job_runs_job_id_index'
down_revision = '0013_login_throttle_refused'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.create_index('ix_job_runs_job_id', ['job', 'id'], unique=False)
        batch_op.drop_index('ix_job_runs_job_started')


def downgrade():
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.create_index('ix_job_runs_job_started', ['job', 'started_at'], unique=False)
        batch_op.drop_index('ix_job_runs_job_id')
