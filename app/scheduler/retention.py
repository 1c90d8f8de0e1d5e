"""How long the record of job runs is kept: every run is a row (the heartbeat and the health poll alone write
some 8,600 a day), so runs past `MPIM_JOB_RUNS_KEEP_DAYS` are deleted, a batch per transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, func, select
from sqlalchemy.orm import aliased

from app.database import utcnow
from app.extensions import db
from app.scheduler.models import CLI_HOLDER, JobRun

BATCH_SIZE = 1000


def prune_runs(keep_days: int | None = None, *, batch_size: int = BATCH_SIZE, now: datetime | None = None) -> str:
    """Scheduler job: delete the runs that started over `keep_days` (`MPIM_JOB_RUNS_KEEP_DAYS`) ago, at most
    `batch_size` rows per transaction, so the heartbeat's writes wait on none for long. Kept whatever their age:
    each job's last run written (`flask scheduler jobs` shows it; after a long pause it is still there), each job's
    last run written by a scheduler rather than by hand (`flask scheduler run-job`, holder `cli`), and a run without
    an end (one running, or one whose process died: `jobs` names it)."""
    keep_days = current_app.config["MPIM_JOB_RUNS_KEEP_DAYS"] if keep_days is None else keep_days
    cutoff = (now or utcnow()) - timedelta(days=keep_days)
    later = aliased(JobRun)
    # The last written: one dated latest may have been written while its host's clock ran ahead.
    newest = select(func.max(later.id)).where(later.job == JobRun.job).scalar_subquery()
    # A run by hand proves no scheduler runs (`liveness.stale_heartbeat` does not count one): kept as the only last
    # run, it let the prune delete the stopped scheduler's own last beat, and the banner went with it. 0: none.
    newest_scheduled = func.coalesce(select(func.max(later.id)).where(later.job == JobRun.job,
                                                                       later.holder != CLI_HOLDER).scalar_subquery(), 0)
    deleted = batches = last_id = 0
    while True:
        # From the last batch's end on: the runs kept, and those deleted but not yet vacuumed away, are not read
        # again by every batch.
        ids = list(db.session.scalars(
            select(JobRun.id).where(JobRun.id > last_id, JobRun.started_at < cutoff, JobRun.seconds.is_not(None),
                                    JobRun.id < newest, JobRun.id != newest_scheduled)
            .order_by(JobRun.id).limit(batch_size)))
        if not ids:
            break
        db.session.execute(delete(JobRun).where(JobRun.id.in_(ids)).execution_options(synchronize_session=False))
        db.session.commit()
        deleted, batches, last_id = deleted + len(ids), batches + 1, ids[-1]
        if len(ids) < batch_size:
            break
    db.session.commit()
    return f"deleted {deleted} job runs older than {keep_days} days in {batches} batch{'' if batches == 1 else 'es'}"
