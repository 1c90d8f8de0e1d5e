"""Is the scheduler alive? Read from its heartbeat's last run, the one rule the console's banner and
`flask scheduler jobs` both ask."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from app.database import utcnow
from app.extensions import db
from app.scheduler.models import CLI_HOLDER, JobRun

HEARTBEAT = "scheduler.heartbeat"
# A leader's failover (a lease of 30 s lapsing) or a slow database skips a beat or two; four missed beats, and at
# least a minute, are not that.
BEATS_MISSED = 4
MINIMUM_SECONDS = 60.0


@dataclass(frozen=True)
class StaleHeartbeat:
    """The heartbeat's newest run, which started `limit` or longer ago; `finished` False: it never ended."""

    last_started_at: datetime
    finished: bool
    limit: timedelta


def stale_after(interval_seconds: float) -> timedelta:
    """How long without a new heartbeat before the scheduler is taken for stopped."""
    return timedelta(seconds=max(MINIMUM_SECONDS, BEATS_MISSED * interval_seconds))


def stale_heartbeat(interval_seconds: float, now: datetime | None = None) -> StaleHeartbeat | None:
    """The heartbeat's newest run when it started `stale_after(interval_seconds)` or longer ago, else None.

    Its start, whether it ended or not: a heartbeat does nothing, so one still without an end minutes after it began
    is as much a sign of a stopped (or hung) scheduler as no heartbeat at all. None as well when no heartbeat was
    ever recorded: a fresh install, or a database no scheduler has run on (the test suite), is not a stopped
    scheduler. A heartbeat run by hand (`flask scheduler run-job`) proves no scheduler runs: not counted. A start
    dated the limit or more ahead of `now` (a scheduler host's clock ahead) is stale too. The newest run is the
    last written, not the one dated latest: a beat a host wrote while its clock ran a day ahead would otherwise be
    the newest, and the scheduler stopped, for that day after the clock was set right. One indexed query
    (`ix_job_runs_job_id`): the console asks on every page."""
    last = db.session.execute(select(JobRun.started_at, JobRun.seconds)
                              .where(JobRun.job == HEARTBEAT, JobRun.holder != CLI_HOLDER)
                              .order_by(JobRun.id.desc()).limit(1)).first()
    if last is None:
        return None
    limit = stale_after(interval_seconds)
    # A start dated past the limit ahead of this clock was written by a host whose clock runs ahead: it cannot
    # vouch for a scheduler running now, so it is stale as well.
    if -limit < (now or utcnow()) - last.started_at < limit:
        return None
    return StaleHeartbeat(last_started_at=last.started_at, finished=last.seconds is not None, limit=limit)
