"""The leader lease and the record of job runs."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Index, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime
from app.extensions import db


class SchedulerLease(db.Model):
    """One row per lease name; whoever holds an unexpired lease is the leader."""

    __tablename__ = "scheduler_leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


# The holder of a run `flask scheduler run-job` makes by hand, outside any leader's lease.
CLI_HOLDER = "cli"


class JobRun(db.Model):
    __tablename__ = "job_runs"
    # A job's last run is its highest id (the last written; a start is dated by its host's clock, which may run
    # ahead), and the retention keeps it: both found by this index.
    __table_args__ = (Index("ix_job_runs_job_id", "job", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job: Mapped[str] = mapped_column(String(64), nullable=False)
    holder: Mapped[str] = mapped_column(String(128), nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    seconds: Mapped[float | None] = mapped_column(Float)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    message: Mapped[str] = mapped_column(String(500), nullable=False, default="")
