"""The scheduler against clocks that disagree: hosts whose clocks differ (the lease is decided by the database's
clock) and a host clock stepped while the scheduler runs (the watchdog wakes its jobs)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from app import database
from app.extensions import db
from app.scheduler import leader, liveness, runner
from app.scheduler.clock import ClockWatch
from app.scheduler.models import JobRun, SchedulerLease
from tests.test_scheduler import wait_for


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

    now = database.utcnow()
    run = JobRun(job=liveness.HEARTBEAT, holder="ahead:1:abcdef", started_at=now + timedelta(seconds=600),
                 seconds=0.001, ok=True, message="")
    db.session.add(run)
    db.session.commit()
    assert liveness.stale_heartbeat(15, now=now) is not None
    assert liveness.stale_heartbeat(15, now=run.started_at - timedelta(seconds=59)) is None


def test_the_clock_watch_names_a_step_and_takes_in_a_slew():
    """Wall and monotonic readings a second apart: a slew of half a millisecond, a step forward of 400 s, one back
    of 1000 s, and a reading late by half a second (both clocks move together: not a step)."""
    reading = [0.0, 0.0]
    watch = ClockWatch(lambda _: None, wall=lambda: reading[0], monotonic=lambda: reading[1])
    steps = []
    for reading[:] in [(1000.0, 10.0), (1001.0, 11.0), (1002.0005, 12.0), (1403.0, 13.0), (404.0, 14.0),
                       (405.0, 15.0), (405.5, 15.5)]:
        steps.append(watch.check())
    assert steps == [0.0, 0.0, 0.0, pytest.approx(400, abs=0.01), pytest.approx(-1000, abs=0.01), 0.0, 0.0]


@pytest.mark.parametrize("seconds, way", [(-600.0, "back"), (600.0, "forward")])
def test_after_the_host_clock_steps_the_jobs_run_on_and_one_line_says_so(app, caplog, monkeypatch, seconds, way):
    """The real scheduler in a thread of this process, its heartbeat every 0.3 s. The host's wall clock, as this
    process reads it (time.time, and the datetime.now APScheduler and the runner read), steps ten minutes. Back:
    every job was ten minutes away, lease renewal included, and nothing said so. Forward: APScheduler mostly wakes
    before the watch, runs the jobs it finds late and times their next runs by the new clock; moving those by the
    step too put every job ten minutes away."""
    import threading
    import time
    from datetime import datetime

    import apscheduler.executors.base
    import apscheduler.schedulers.base

    from app.scheduler import registry

    step = [0.0]
    real_time = time.time

    class WallClock(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime.now(tz) + timedelta(seconds=step[0])

    for module in (apscheduler.schedulers.base, apscheduler.executors.base, runner):
        monkeypatch.setattr(module, "datetime", WallClock)
    monkeypatch.setattr(time, "time", lambda: real_time() + step[0])
    beats = lambda: db.session.scalar(select(func.count()).where(JobRun.job == liveness.HEARTBEAT))  # noqa: E731
    monkeypatch.setattr(registry, "jobs", [registry.Job(liveness.HEARTBEAT, lambda: None, 0.3, log_runs=False)])
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    process = runner.SchedulerProcess(app, lease_seconds=3, stop_grace_seconds=5)
    thread = threading.Thread(target=lambda: process.start(handle_signals=False))
    thread.start()
    try:
        wait_for(lambda: beats() >= 3)
        step[0] = seconds
        before = beats()
        wait_for(lambda: beats() >= before + 10, timeout=15)
        assert process.leading()
    finally:
        process.stop()
        thread.join(30)
    lines = [r.getMessage() for r in caplog.records if "clock stepped" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith(f"the host's clock stepped {way} by 600")


@pytest.mark.parametrize("seconds", [600.0, -600.0])
def test_a_step_moves_a_next_run_timed_by_the_old_clock_and_keeps_one_timed_by_the_new_within_its_interval(
        app, seconds):
    """The two orders after a step of ten minutes, each way: the watch first (a next run still timed by the old
    clock: moved by the step, to the same second of its cadence) or APScheduler first (a next run it already timed
    by the new clock: within one interval from now, never past it; a step back puts it in the past: now, so the
    job runs at once)."""
    process = runner.SchedulerProcess(app)
    now = datetime.now(UTC)
    old_clock = now - timedelta(seconds=seconds) + timedelta(seconds=4)
    new_clock = now + timedelta(seconds=0.2)
    process.scheduler.add_job(print, "interval", seconds=10, id="old", next_run_time=old_clock)
    process.scheduler.add_job(print, "interval", seconds=1, id="new", next_run_time=new_clock)
    process.clock_stepped(seconds)
    after = datetime.now(UTC)
    assert process.scheduler.get_job("old").next_run_time == now + timedelta(seconds=4)
    if seconds > 0:
        assert process.scheduler.get_job("new").next_run_time <= after + timedelta(seconds=1)
    else:
        assert now <= process.scheduler.get_job("new").next_run_time <= after


def add_run(job: str, started_at: datetime, *, ok: bool = True, holder: str = "host:4242:abcdef") -> JobRun:
    run = JobRun(job=job, holder=holder, started_at=started_at, seconds=0.001, ok=ok, message="" if ok else "boom")
    db.session.add(run)
    db.session.commit()
    return run


def test_a_heartbeat_dated_a_day_ahead_does_not_outlast_the_clock_set_right(app, admin_console, runner):
    """A scheduler host's clock ran a day ahead for a minute, then was set right: its heartbeats of that minute
    were the newest by their start for the whole day, and a healthy scheduler was shown stopped (the banner, the
    STALE line). The last run is the last one written."""
    now = database.utcnow()
    add_run(liveness.HEARTBEAT, now + timedelta(days=1), holder="ahead:1:abcdef")
    add_run(liveness.HEARTBEAT, now - timedelta(seconds=2))
    assert liveness.stale_heartbeat(15, now=now) is None
    assert "STALE" not in runner.invoke(args=["scheduler", "jobs"]).output
    page = admin_console.client.get("/").get_data(as_text=True)
    assert "调度进程自 " not in page


def test_a_run_dated_a_day_ahead_does_not_show_a_failing_job_as_last_ok(app, runner):
    """`flask scheduler jobs` showed the run written while the clock was ahead (ok) as the last, for a day, while
    every run since failed."""
    now = database.utcnow()
    add_run("sessions.cleanup", now + timedelta(days=1), holder="ahead:1:abcdef")
    failed = add_run("sessions.cleanup", now - timedelta(seconds=5), ok=False)
    listed = [json.loads(line) for line in runner.invoke(args=["scheduler", "jobs", "--json"]).output.splitlines()]
    item = next(item for item in listed if item["job"] == "sessions.cleanup")
    assert (item["last_state"], item["last_ok"], item["last_started_at"]) == ("failed", False,
                                                                              failed.started_at.isoformat())
    line = next(line for line in runner.invoke(args=["scheduler", "jobs"]).output.splitlines()
                if line.startswith("sessions.cleanup"))
    assert f"last {failed.started_at.isoformat()} FAILED boom" in line, line


def test_the_last_run_of_a_job_is_found_by_the_job_and_id_index(app):
    """The console asks on every page, `jobs` once per job: an index walk, no sort of the job's runs."""
    from sqlalchemy import text

    from app.scheduler.models import CLI_HOLDER

    if db.engine.dialect.name != "sqlite":
        pytest.skip("SQLite's plan; PostgreSQL's planner chooses by its statistics")
    statement = (select(JobRun.started_at).where(JobRun.job == liveness.HEARTBEAT, JobRun.holder != CLI_HOLDER)
                 .order_by(JobRun.id.desc()).limit(1))
    compiled = statement.compile(db.engine, compile_kwargs={"literal_binds": True})
    plan = "\n".join(row[-1] for row in db.session.execute(text(f"EXPLAIN QUERY PLAN {compiled}")))
    assert "ix_job_runs_job_id" in plan and "TEMP B-TREE" not in plan, plan


def test_a_lease_dated_past_the_longest_lease_ahead_is_taken_over(app, runner):
    """The database's clock stepped back an hour after a leader took a lease and died: its lease read an hour and
    its length ahead, and every scheduler started meanwhile stood by for that hour. No lease can be taken for longer
    than `--lease-seconds` allows (3600 s): one dated twice that ahead is lapsed."""
    assert leader.try_acquire("dead", 30)
    lease = db.session.get(SchedulerLease, "scheduler")
    lease.expires_at = database.utcnow() + timedelta(seconds=leader.LAPSED_AHEAD_SECONDS + 30)
    db.session.commit()
    assert leader.current_leader() is None
    assert leader.try_acquire("standby", 30)
    assert leader.current_leader().holder == "standby"


def test_a_lease_as_long_as_the_longest_allowed_is_kept(app):
    assert leader.try_acquire("long", leader.LONGEST_LEASE_SECONDS)
    assert not leader.try_acquire("standby", 30)
    assert leader.current_leader().holder == "long"
    assert leader.try_acquire("long", leader.LONGEST_LEASE_SECONDS)


def test_a_lease_as_long_as_the_longest_allowed_is_kept_across_a_small_step_back(app):
    """With the lapse bound at the longest lease itself, a leader holding a lease that long lost it to a standby
    at a step back of the database's clock of one second, while it still trusted the lease for 48 minutes."""
    assert leader.try_acquire("long", leader.LONGEST_LEASE_SECONDS)
    lease = db.session.get(SchedulerLease, "scheduler")
    lease.expires_at = lease.expires_at + timedelta(seconds=60)  # the database's clock stepped back a minute
    db.session.commit()
    assert not leader.try_acquire("standby", 30)
    assert leader.current_leader().holder == "long"


def test_a_stale_heartbeat_under_a_held_lease_names_its_holder_and_expiry(app, runner):
    """The STALE line told to start `flask scheduler run` while one ran, standing by for a lease another held: the
    holder and its expiry say why nothing runs."""
    add_run(liveness.HEARTBEAT, database.utcnow() - timedelta(seconds=300))
    assert leader.try_acquire("hung:7:abcdef", 600)
    expires = db.session.get(SchedulerLease, "scheduler").expires_at
    output = runner.invoke(args=["scheduler", "jobs"]).output
    assert (f"the lease is held by hung:7:abcdef until {expires.isoformat()} (the database's clock): a scheduler "
            "started now stands by until then") in output, output
    leader.release("hung:7:abcdef")
    output = runner.invoke(args=["scheduler", "jobs"]).output
    assert "STALE" in output and "the lease is held" not in output
