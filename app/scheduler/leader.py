"""Leader election by a lease row with an expiry: portable to SQLite and PostgreSQL.

A process is leader while it holds an unexpired lease; it renews the lease well before expiry. If
it dies, another process takes over once the lease expires. Acquire and renew are one conditional
UPDATE each, so two processes can never both believe they hold the lease. Every expiry is computed and
compared by the database's clock, never a process's: hosts whose clocks differ (one ten minutes ahead) would
otherwise steal a healthy leader's lease, or keep theirs for the skew after release or death. A lease dated more
than `LAPSED_AHEAD_SECONDS` (twice the longest lease) ahead is lapsed: the database's clock stepped back since it
was taken, by more than any lease's length.
"""

from __future__ import annotations

import os
import socket
import uuid

from sqlalchemy import Float, cast, func, insert, literal, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from app.extensions import db
from app.scheduler.models import SchedulerLease

LEASE_NAME = "scheduler"
# The longest lease `flask scheduler run --lease-seconds` takes. A lease dated further ahead than this was not
# taken by the database's clock as it reads now (it stepped back since): it is held as lapsed, or a dead leader's
# lease would keep every other scheduler standing by for the length of the step.
LONGEST_LEASE_SECONDS = 3600.0
# A lease dated further ahead than this is lapsed. Not the longest lease itself: a leader holding one that long
# would lose it to a standby at any step back of the database's clock, however small, while it still led.
LAPSED_AHEAD_SECONDS = 2 * LONGEST_LEASE_SECONDS


def make_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def database_now(seconds: float = 0.0) -> ColumnElement:
    """The database's clock plus `seconds`, in the lease column's stored form: SQLite keeps text, compared as
    text, so its value is written as SQLAlchemy writes one (microseconds, six digits)."""
    if db.session.get_bind().dialect.name == "sqlite":
        return func.strftime("%Y-%m-%d %H:%M:%f", "now", f"{seconds:+.6f} seconds").concat("000")
    return func.statement_timestamp() + cast(literal(seconds), Float) * literal_column("interval '1 second'")


def lapsed() -> ColumnElement[bool]:
    """The lease expired, or is dated further ahead than any lease can be taken for, with room for a step back."""
    return or_(SchedulerLease.expires_at < database_now(),
               SchedulerLease.expires_at > database_now(LAPSED_AHEAD_SECONDS))


def try_acquire(holder: str, ttl_seconds: float, name: str = LEASE_NAME) -> bool:
    """Take or renew the lease; True if `holder` holds it afterwards. Commits."""
    result = db.session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name,
               or_(SchedulerLease.holder == holder, lapsed()))
        .values(holder=holder, expires_at=database_now(ttl_seconds))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.commit()
        return True
    db.session.commit()
    if db.session.get(SchedulerLease, name) is not None:
        return False
    try:
        db.session.execute(insert(SchedulerLease).values(name=name, holder=holder,
                                                         expires_at=database_now(ttl_seconds)))
        db.session.commit()
        return True
    except IntegrityError:  # another process created it first
        db.session.rollback()
        return False


def release(holder: str, name: str = LEASE_NAME) -> None:
    db.session.execute(update(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.holder == holder)
                       .values(expires_at=database_now()).execution_options(synchronize_session=False))
    db.session.commit()


def current_leader(name: str = LEASE_NAME) -> SchedulerLease | None:
    """The lease while it is held: unexpired, and not lapsed by being dated too far ahead (`lapsed`)."""
    return db.session.scalar(select(SchedulerLease).where(
        SchedulerLease.name == name, SchedulerLease.expires_at > database_now(),
        SchedulerLease.expires_at <= database_now(LAPSED_AHEAD_SECONDS)))
