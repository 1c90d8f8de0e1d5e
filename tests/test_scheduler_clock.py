"""The scheduler against clocks that disagree: hosts whose clocks differ (the lease is decided by the database's
clock) and a host clock stepped while the scheduler runs (the watchdog wakes its jobs)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app import database
from app.extensions import db
from app.scheduler import leader, liveness, runner
from app.scheduler.models import SchedulerLease


def clock_ahead(monkeypatch, seconds: float) -> None:
    """This process's wall clock `seconds` ahead of the database's (another host's clock, for what the test does
    next), wherever the scheduler's modules read it."""
    skewed = lambda: database.datetime.now(database.UTC) + timedelta(seconds=seconds)  # noqa: E731
    for module in (database, leader, liveness, runner):
        monkeypatch.setattr(module, "utcnow", skewed, raising=False)


def test_a_host_whose_clock_runs_ahead_does_not_steal_the_lease_from_a_healthy_leader(app, monkeypatch):
    assert leader.try_acquire("healthy", 30)
    with monkeypatch.context() as ahead:
        clock_ahead(ahead, 600)
        assert not leader.try_acquire("ahead", 30)
        assert leader.current_leader().holder == "healthy"
    assert leader.try_acquire("healthy", 30)
    assert leader.current_leader().holder == "healthy"


def test_a_lease_released_by_a_host_whose_clock_runs_ahead_is_free_at_once(app, monkeypatch):
    with monkeypatch.context() as ahead:
        clock_ahead(ahead, 600)
        assert leader.try_acquire("ahead", 30)
        leader.release("ahead")
    assert leader.current_leader() is None
    assert leader.try_acquire("standby", 30)
    assert leader.current_leader().holder == "standby"


def test_a_lease_taken_by_a_host_whose_clock_runs_ahead_lapses_after_its_length(app, monkeypatch):
    """A leader that died with its clock ahead held the lease for its length plus the skew."""
    with monkeypatch.context() as ahead:
        clock_ahead(ahead, 600)
        assert leader.try_acquire("ahead", 30)
    lease = db.session.get(SchedulerLease, "scheduler")
    assert lease.expires_at - database.utcnow() < timedelta(seconds=31)
    lease.expires_at = database.utcnow() - timedelta(seconds=1)  # its 30 s gone
    db.session.commit()
    assert leader.try_acquire("standby", 30)


@pytest.mark.parametrize("ttl", [0.5, 2, 30])
def test_the_lease_length_is_kept_to_the_fraction_of_a_second(app, ttl):
    """The database's clock and the column's stored form agree (SQLite keeps text: a lease computed there compares
    with one written from Python)."""
    before = database.utcnow()
    assert leader.try_acquire("a", ttl)
    db.session.expire_all()
    expires = db.session.get(SchedulerLease, "scheduler").expires_at
    assert before + timedelta(seconds=ttl - 0.5) < expires < database.utcnow() + timedelta(seconds=ttl + 0.5)
    assert expires.tzinfo is not None
    assert not leader.try_acquire("b", ttl)


def test_a_heartbeat_dated_in_the_future_does_not_keep_the_scheduler_healthy(app):
    """A heartbeat written by a host whose clock ran ahead was newer than any other for as long as the skew: a
    scheduler that then stopped was taken for running. Past the limit ahead of this clock, it is stale too."""
    from app.scheduler.models import JobRun

    now = database.utcnow()
    run = JobRun(job=liveness.HEARTBEAT, holder="ahead:1:abcdef", started_at=now + timedelta(seconds=600),
                 seconds=0.001, ok=True, message="")
    db.session.add(run)
    db.session.commit()
    assert liveness.stale_heartbeat(15, now=now) is not None
    assert liveness.stale_heartbeat(15, now=run.started_at - timedelta(seconds=59)) is None
