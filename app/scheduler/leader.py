"""Leader election by a lease row with an expiry: portable to SQLite and PostgreSQL.

A process is leader while it holds an unexpired lease; it renews the lease well before expiry. If
it dies, another process takes over once the lease expires. Acquire and renew are one conditional
UPDATE each, so two processes can never both believe they hold the lease.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError

from app.database import utcnow
from app.extensions import db
from app.scheduler.models import SchedulerLease

LEASE_NAME = "scheduler"


def make_holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def try_acquire(holder: str, ttl_seconds: float, name: str = LEASE_NAME) -> bool:
    """Take or renew the lease; True if `holder` holds it afterwards. Commits."""
    now = utcnow()
    expires = now + timedelta(seconds=ttl_seconds)
    result = db.session.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name, or_(SchedulerLease.holder == holder, SchedulerLease.expires_at < now))
        .values(holder=holder, expires_at=expires)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        db.session.commit()
        return True
    db.session.commit()
    if db.session.get(SchedulerLease, name) is not None:
        return False
    try:
        db.session.add(SchedulerLease(name=name, holder=holder, expires_at=expires))
        db.session.commit()
        return True
    except IntegrityError:  # another process created it first
        db.session.rollback()
        return False


def release(holder: str, name: str = LEASE_NAME) -> None:
    db.session.execute(update(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.holder == holder)
                       .values(expires_at=utcnow()).execution_options(synchronize_session=False))
    db.session.commit()


def current_leader(name: str = LEASE_NAME) -> SchedulerLease | None:
    lease = db.session.get(SchedulerLease, name)
    return lease if lease and lease.expires_at > utcnow() else None
