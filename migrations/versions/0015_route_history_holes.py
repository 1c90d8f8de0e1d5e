"""route_changes: close the holes an earlier pruning rule left in the kept history (data only)

Until c10d770, changes were let go per version: a version at least 1,000 behind the head and issued over
7 days ago. A version published while the clock was behind lost its changes while earlier, younger-looking
ones stayed, and a delta folded from before it (oldest_delta_base looks only at the oldest kept change) left
out what that version changed, signed, disagreeing with the full table of the same version. Pruning now lets
go only a run of the oldest versions, so it makes no new holes, but it kept the old ones until the versions
below them aged out.

Every hole is at a version the old rule would let go today (the head and the clock only move on), so letting
go of every change up to the newest such version closes them all. Changes below it that were not in a hole go
too: a node whose `since` is that old gets the full table, which the protocol always allows. Nothing else
changes, and nothing the next publication would keep is let go: a history with no hole loses at most the
changes that publication would let go anyway.

Revision ID: 0015_route_history_holes
Revises: 0014_job_runs_job_id_index

"""
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0015_route_history_holes'
down_revision = '0014_job_runs_job_id_index'
branch_labels = None
depends_on = None

KEEP_VERSIONS = 1000  # the old rule's bounds, as app/routing/service.py `_prune` had them
KEEP_DAYS = 7

route_versions = sa.table('route_versions', sa.column('version', sa.Integer),
                          sa.column('issued_at', sa.DateTime(timezone=True)))
route_changes = sa.table('route_changes', sa.column('version', sa.Integer))


def upgrade():
    bind = op.get_bind()
    head = bind.scalar(sa.select(sa.func.max(route_versions.c.version)))
    if head is None:
        return
    cutoff = datetime.now(UTC) - timedelta(days=KEEP_DAYS)
    if bind.dialect.name == 'sqlite':  # the app keeps naive UTC there (app/database.py UTCDateTime)
        cutoff = cutoff.replace(tzinfo=None)
    last_let_go = bind.scalar(sa.select(sa.func.max(route_versions.c.version)).where(
        route_versions.c.version <= head - KEEP_VERSIONS, route_versions.c.issued_at < cutoff))
    if last_let_go is not None:
        bind.execute(sa.delete(route_changes).where(route_changes.c.version <= last_let_go))


def downgrade():
    pass  # the changes let go do not come back; the full table serves every `since` they covered
