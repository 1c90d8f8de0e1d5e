"""The scheduler's leader lease: one leader among many processes, and failover when it dies."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select, update

from app.database import utcnow
from app.extensions import db
from app.scheduler import leader
from app.scheduler.models import JobRun, SchedulerLease
from app.scheduler.runner import SchedulerProcess
from tests.conftest import stop_process
from tests.test_outages import database_away

ROOT = Path(__file__).resolve().parent.parent


def test_lease_is_exclusive_until_it_expires(app):
    assert leader.try_acquire("a", 30)
    assert not leader.try_acquire("b", 30)
    assert leader.try_acquire("a", 30)  # renewal
    db.session.get(SchedulerLease, "scheduler").expires_at = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert leader.try_acquire("b", 30)
    assert not leader.try_acquire("a", 30)
    assert leader.current_leader().holder == "b"


def wait_for(condition, timeout: float = 30.0, step: float = 0.1):
    """Poll a database condition until it holds (the processes share nothing else with us)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.session.rollback()
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("condition not reached in time")


def start_scheduler(app, stderr=subprocess.DEVNULL, env: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, "FLASK_APP": "wsgi.py", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
           "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"], "SECRET_KEY": "test",
           "MPIM_HEARTBEAT_SECONDS": "0.3", **(env or {})}
    return subprocess.Popen([str(Path(sys.executable).with_name("flask")), "scheduler", "run", "--lease-seconds",
                             "2"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def heartbeat_holders() -> list[str]:
    return list(db.session.scalars(select(JobRun.holder).where(JobRun.job == "scheduler.heartbeat")
                                   .order_by(JobRun.id)))


def test_two_scheduler_processes_run_each_job_on_one_leader_only(app):
    processes = [start_scheduler(app), start_scheduler(app)]
    try:
        wait_for(lambda: len(heartbeat_holders()) >= 6)
        holders = heartbeat_holders()
        assert len(set(holders)) == 1, holders
        first_leader = holders[0]
        pid = int(first_leader.split(":")[1])
        victim = next(p for p in processes if p.pid == pid)
        victim.send_signal(signal.SIGKILL)  # no clean release: the lease must expire on its own
        victim.wait(timeout=30)
        before = len(heartbeat_holders())
        wait_for(lambda: len(set(heartbeat_holders()[before:])) == 1 and len(heartbeat_holders()) >= before + 3)
        successors = set(heartbeat_holders()[before:])
        assert first_leader not in successors
    finally:
        for process in processes:
            stop_process(process)


def test_the_scheduler_log_names_each_job_run_and_nothing_else_repeats(app, tmp_path):
    """One line per job run, naming the job; not APScheduler's two lines per run (and per lease
    renewal) naming an anonymous wrapper, some 35,000 a day."""
    log_path = tmp_path / "scheduler.log"
    with open(log_path, "wb") as log_file:
        process = start_scheduler(app, stderr=log_file)
        try:
            wait_for(lambda: len(heartbeat_holders()) >= 3)
        finally:
            stop_process(process)
    log = log_path.read_text()
    assert "sessions.cleanup ok in" in log and "stopped (lease released)" in log, log
    assert "scheduler.heartbeat ok in" not in log  # every 15 s the same news: recorded (`jobs`), not logged
    assert "Running job" not in log and "executed successfully" not in log and "<locals>" not in log, log


def test_a_lease_renewal_answered_slowly_is_trusted_from_when_it_was_asked(app, monkeypatch):
    """The database dates a lease from its UPDATE; the leader trusted it for 0.8 of its length from when the
    answer came back. An answer 3 s late on a 4 s lease left the leader "leading" after the lease had lapsed and
    another scheduler had taken it: both ran jobs. The clock here is the test's, moved by the slow answer."""
    from app.scheduler import runner

    clock = [1000.0]
    monkeypatch.setattr(runner.time, "monotonic", lambda: clock[0])
    real = leader.try_acquire

    def answered_late(holder, ttl, name=leader.LEASE_NAME):
        held = real(holder, ttl, name)
        clock[0] += 3.0  # the answer comes back 3 s after the UPDATE that dated the lease
        return held

    monkeypatch.setattr(leader, "try_acquire", answered_late)
    first = SchedulerProcess(app, lease_seconds=4)
    assert first.renew()
    assert first.lease_valid_until == 1000.0 + 4 * 0.8  # from when it asked, not 1003 + 3.2
    clock[0] = 1000.0 + 4.3  # past the lease: another scheduler may hold it now
    assert not first.leading()


def test_a_lease_renewal_in_a_database_outage_logs_one_line_and_the_recovery_one(app, caplog):
    """Renewals come a third of the lease apart: a database restart of a few minutes was a screenful
    of identical tracebacks per renewal. Each failure is one line naming the error (the traceback
    only with debug logging on), and the first renewal that works again says so, once."""
    process = SchedulerProcess(app, lease_seconds=30)
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    assert process.renew()
    with database_away(app):
        assert not process.renew()
        assert not process.renew()
        failures = [r for r in caplog.records if r.name == "mpim.scheduler" and "renewal failed" in r.getMessage()]
        assert [r.levelno for r in failures] == [logging.WARNING, logging.WARNING]
        assert all(r.exc_info is None for r in caplog.records if r.name == "mpim.scheduler")
        assert "OperationalError" in failures[0].getMessage() and "\n" not in failures[0].getMessage()
        caplog.set_level(logging.DEBUG, logger="mpim.scheduler")
        caplog.clear()
        assert not process.renew()
        assert [r.exc_info is not None for r in caplog.records if "renewal failed" in r.getMessage()] == [True]
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    caplog.clear()
    assert process.renew()
    assert process.renew()
    recovered = [r.getMessage() for r in caplog.records if r.name == "mpim.scheduler" and "again" in r.getMessage()]
    assert recovered == ["lease renewal works again after 3 failed"]


def _running_in_a_thread(app, monkeypatch, caplog, name: str, job, *, stop_grace_seconds: float,
                         timeout_seconds: float = 300):
    """The real scheduler in a thread of this process, its one job `name`; returns it, the thread, and the list
    that receives start()'s outcome."""
    import threading

    from app.scheduler import registry

    monkeypatch.setattr(registry, "jobs", [registry.Job(name, job, 3600, timeout_seconds=timeout_seconds)])
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    process = SchedulerProcess(app, lease_seconds=30, stop_grace_seconds=stop_grace_seconds)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(process.start(handle_signals=False)))
    thread.start()
    return process, thread, outcome


def test_a_stop_is_logged_once_and_waits_for_the_running_job_before_its_last_line(app, caplog, monkeypatch):
    """SIGTERM then SIGINT (a service manager's stop, a terminal's Ctrl-C) logged "stopping" twice, and the lease
    was released while a job still ran, which another scheduler could then start again; the process's last line
    came before the job's. The real scheduler, in a thread of this process, with one job that runs until let go."""
    import threading

    entered, let_go = threading.Event(), threading.Event()
    seen_while_running: list[tuple[str | None, list[str]]] = []

    def held_job():
        entered.set()
        assert let_go.wait(30)
        lease = leader.current_leader()
        seen_while_running.append((lease.holder if lease else None,
                                   [r.getMessage() for r in caplog.records if "stopped" in r.getMessage()]))
        return "done"

    process, thread, outcome = _running_in_a_thread(app, monkeypatch, caplog, "test.held", held_job,
                                                    stop_grace_seconds=30)
    try:
        assert entered.wait(30)
        process.stop()
        process.stop()  # the second signal
    finally:
        let_go.set()
        thread.join(60)
    assert not thread.is_alive() and outcome == [True]
    assert seen_while_running == [(process.holder, [])]  # the lease held, and no last line, while the job ran
    lines = [r.getMessage() for r in caplog.records if r.name == "mpim.scheduler"]
    assert [line for line in lines if "stopping" in line] == \
        [f"scheduler {process.holder} stopping, waiting for test.held"]
    assert lines[-2].startswith("test.held ok in")
    assert lines[-1] == f"scheduler {process.holder} stopped (lease released)"
    assert leader.current_leader() is None
    db.session.rollback()
    assert [r.message for r in db.session.scalars(select(JobRun).where(JobRun.job == "test.held"))] == ["done"]


def test_a_job_still_running_past_the_stop_grace_keeps_the_lease_and_is_named(app, caplog, monkeypatch):
    """The wait is bounded: past the grace the scheduler says which job still runs and leaves its lease to lapse,
    so no other scheduler starts that job while this process (which then exits) may still be running it."""
    import threading

    entered, let_go = threading.Event(), threading.Event()

    def stuck_job():
        entered.set()
        let_go.wait(30)

    process, thread, outcome = _running_in_a_thread(app, monkeypatch, caplog, "test.stuck", stuck_job,
                                                    stop_grace_seconds=0.2)
    try:
        assert entered.wait(30)
        process.stop()
        thread.join(30)
        assert outcome == [False]
        db.session.rollback()
        assert leader.current_leader().holder == process.holder
        last = [r for r in caplog.records if r.name == "mpim.scheduler"][-1]
        assert last.levelno == logging.WARNING
        assert last.getMessage() == (f"scheduler {process.holder} stopped with test.stuck still running after 0.2s;"
                                     " its lease lapses on its own")
    finally:
        let_go.set()
        with process.jobs_changed:  # the job's thread records its run before the database goes
            assert process.jobs_changed.wait_for(lambda: not process.running, timeout=30)


def test_a_stop_while_the_scheduler_starts_still_ends_it(app, caplog):
    """A signal can come while APScheduler starts, after start() looked at `stopping` and before the scheduler
    says it runs: stop() then found nothing running to shut down, the loop ran on with no job starting, and a
    second signal did nothing, so the process hung until killed and kept its lease. Here the stop comes from
    inside the scheduler's start, as a signal's handler would run there, when it adds the first job."""
    import threading

    from apscheduler.events import EVENT_JOB_ADDED

    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    process = SchedulerProcess(app, lease_seconds=30, stop_grace_seconds=1)
    process.scheduler.add_listener(lambda _event: process.stop(), EVENT_JOB_ADDED)
    outcome: list[bool] = []
    thread = threading.Thread(target=lambda: outcome.append(process.start(handle_signals=False)), daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():
        process.scheduler.shutdown(wait=False)
        thread.join(10)
        raise AssertionError("the scheduler ran on after a stop that came while it started")
    assert outcome == [True]
    db.session.rollback()
    assert leader.current_leader() is None
    lines = [r.getMessage() for r in caplog.records if r.name == "mpim.scheduler"]
    assert lines[-1] == f"scheduler {process.holder} stopped (lease released)"


def _held_past(seconds: float):
    """A job that runs `seconds` (0 for none) and then until let go; returns it and its two events."""
    import threading

    ran, let_go = threading.Event(), threading.Event()

    def job():
        time.sleep(seconds)
        ran.set()
        assert let_go.wait(30)
        return "polled 3"

    return job, ran, let_go


def _jobs_listed(runner) -> tuple[str, dict]:
    """`flask scheduler jobs` as text, and as JSON for the one job registered."""
    db.session.rollback()
    text, as_json = runner.invoke(args=["scheduler", "jobs"]), runner.invoke(args=["scheduler", "jobs", "--json"])
    assert text.exit_code == 0 and as_json.exit_code == 0, text.output + as_json.output
    return text.output, json.loads(as_json.output)


def test_a_job_running_past_its_limit_is_named_once_while_it_runs_and_its_record_says_so(app, caplog, monkeypatch,
                                                                                         runner):
    """`timeout_seconds` was read by nothing: a health poll stuck on a lock ran on unseen while every later run was
    skipped. It is not killed (a thread cannot be), but the lease renewal that comes a third of a lease apart names
    it once per run, `flask scheduler jobs` shows it running past its limit, and its record says it overran."""
    job, ran, let_go = _held_past(0.3)
    process, thread, outcome = _running_in_a_thread(app, monkeypatch, caplog, "test.slow", job, stop_grace_seconds=30,
                                                    timeout_seconds=0.2)
    try:
        assert ran.wait(30)
        assert process.renew() and process.renew()
        text, listed = _jobs_listed(runner)
    finally:
        let_go.set()
        process.stop()
        thread.join(30)
    assert outcome == [True]
    warned = [r for r in caplog.records if r.name == "mpim.scheduler" and "has run" in r.getMessage()]
    assert [r.levelno for r in warned] == [logging.WARNING]
    assert warned[0].getMessage().startswith("job test.slow has run ")
    assert warned[0].getMessage().endswith(" s, past its 0.2 s limit; it runs on, and its next runs are skipped "
                                           "until it ends")
    assert "RUNNING" in text and "past its 0.2s limit" in text, text
    assert (listed["last_state"], listed["last_ok"], listed["overrunning"]) == ("running", None, True)
    db.session.rollback()
    run = db.session.scalars(select(JobRun).where(JobRun.job == "test.slow")).one()
    assert (run.ok, run.message) == (True, "polled 3; overran its 0.2 s limit")
    ended = [r for r in caplog.records if r.getMessage().startswith("test.slow ok in")]
    assert [r.levelno for r in ended] == [logging.WARNING]
    assert ended[0].getMessage().endswith("s: polled 3; overran its 0.2 s limit")


def test_a_job_within_its_limit_is_neither_warned_of_nor_marked(app, caplog, monkeypatch, runner):
    job, ran, let_go = _held_past(0)
    process, thread, outcome = _running_in_a_thread(app, monkeypatch, caplog, "test.quick", job, stop_grace_seconds=30,
                                                    timeout_seconds=600)
    try:
        assert ran.wait(30)
        assert process.renew()
        text, listed = _jobs_listed(runner)
    finally:
        let_go.set()
        process.stop()
        thread.join(30)
    assert outcome == [True]
    assert [r for r in caplog.records if r.name == "mpim.scheduler" and r.levelno >= logging.WARNING] == []
    assert "test.quick" in text and "running " in text and "RUNNING" not in text and "past its" not in text, text
    assert (listed["last_state"], listed["overrunning"]) == ("running", False)
    db.session.rollback()
    assert [r.message for r in db.session.scalars(select(JobRun).where(JobRun.job == "test.quick"))] == ["polled 3"]
    ended = [r for r in caplog.records if r.getMessage().startswith("test.quick ok in")]
    assert [r.levelno for r in ended] == [logging.INFO]


def test_a_run_that_fails_past_its_limit_says_both(app, caplog, monkeypatch, runner):
    """`flask scheduler run-job` goes through the same runner: the failure and the overrun, in its record and line."""
    from app.scheduler import registry

    def failing():
        time.sleep(0.3)
        raise RuntimeError("gave up waiting on a lock")

    monkeypatch.setattr(registry, "jobs", [registry.Job("test.failing", failing, 3600, timeout_seconds=0.2)])
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    result = runner.invoke(args=["scheduler", "run-job", "test.failing"])
    assert result.exit_code == 1
    assert result.output.rstrip().endswith("s RuntimeError: gave up waiting on a lock; overran its 0.2 s limit")
    lines = [r for r in caplog.records if r.name == "mpim.scheduler"]
    assert [(r.levelno, r.getMessage(), r.exc_info is not None) for r in lines] == \
        [(logging.ERROR, "job test.failing failed; overran its 0.2 s limit", True)]
    db.session.rollback()
    run = db.session.scalars(select(JobRun).where(JobRun.job == "test.failing")).one()
    assert (run.ok, run.message) == (False, "RuntimeError: gave up waiting on a lock; overran its 0.2 s limit")


def test_run_job_ends_as_the_scheduler_does_so_queued_alerts_are_sent_or_named(app, monkeypatch, runner):
    """`flask scheduler run-job health.poll` queues a round's alerts for the webhook's thread (off the round) and
    exited without the end the scheduler and `health poll --once` run (`registry.at_stop`: the webhook's `finish`):
    the thread died with the process mid-send, a retry that would have passed never ran, and nothing was logged.
    What the job queued is now finished as the scheduler finishes it, after a failed run too."""
    from app.health import webhook
    from app.scheduler import registry

    ended: list[str] = []
    assert webhook.outbox.finish in registry.at_stop
    monkeypatch.setattr(registry, "at_stop", [*registry.at_stop, lambda: ended.append("at_stop")])
    monkeypatch.setattr(registry, "jobs", [registry.Job("test.quick", lambda: "done", 3600),
                                           registry.Job("test.failing", lambda: 1 / 0, 3600)])
    assert runner.invoke(args=["scheduler", "run-job", "test.quick"]).exit_code == 0
    assert ended == ["at_stop"]
    assert runner.invoke(args=["scheduler", "run-job", "test.failing"]).exit_code == 1
    assert ended == ["at_stop", "at_stop"]


def test_a_run_without_an_end_whose_holder_does_not_lead_is_not_shown_as_running(app, monkeypatch, runner):
    """A run's row is written when it starts; a process killed during a run leaves it without an end. Only the
    leader's own unended run is running; any other cannot be told from a dead one, and says so."""
    from app.scheduler import registry

    monkeypatch.setattr(registry, "jobs", [registry.Job("test.killed", lambda: None, 3600, timeout_seconds=0.2)])
    db.session.add(JobRun(job="test.killed", holder="gone:4242:abcdef", started_at=utcnow() - timedelta(hours=1)))
    db.session.commit()
    assert leader.try_acquire("alive:1:fedcba", 30)
    text, listed = _jobs_listed(runner)
    assert "no end recorded (its holder gone:4242:abcdef does not lead)" in text and "RUNNING" not in text, text
    assert (listed["last_state"], listed["running_seconds"], listed["overrunning"]) == ("unfinished", None, False)


def test_a_database_lost_during_a_job_is_logged_and_not_raised_into_the_scheduler(app, caplog, monkeypatch):
    """The run's end could not be recorded: the OperationalError of its closing commit escaped into APScheduler,
    against run_job's contract. Now one line says the run's end was lost, and the run is returned unsaved."""
    import contextlib

    from app.scheduler import registry
    from app.scheduler.runner import run_job

    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    outage = contextlib.ExitStack()

    def job():
        outage.enter_context(database_away(app))
        db.session.execute(select(1)).all()

    with outage:
        run = run_job(registry.Job("test.outage", job, 60), "holder-x")
    assert run.ok is False and run.job == "test.outage" and run.started_at is not None
    assert run.message.startswith("OperationalError: ")
    lines = [r for r in caplog.records if r.name == "mpim.scheduler" and "not recorded" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.ERROR and "\n" not in lines[0].getMessage()
    assert lines[0].getMessage().startswith("job test.outage: its end was not recorded: ")
    db.session.remove()
    assert db.session.scalar(select(JobRun.ok).where(JobRun.job == "test.outage")) is None  # what the database kept


def test_a_scheduler_standing_by_names_the_lease_holder_and_its_expiry(app, caplog, monkeypatch):
    """"another scheduler holds the lease" left the operator to find which: on which host, under which process,
    and until when it would wait. The line names the holder, as `flask scheduler jobs` does."""
    assert leader.try_acquire("other-host:4242:abcdef", 600)
    expires = db.session.get(SchedulerLease, "scheduler").expires_at
    process, thread, outcome = _running_in_a_thread(app, monkeypatch, caplog, "test.idle", lambda: None,
                                                    stop_grace_seconds=1)
    try:
        for _ in range(300):
            if any("standing by" in record.getMessage() for record in caplog.records):
                break
            time.sleep(0.05)
    finally:
        process.stop()
        thread.join(30)
    line = next(record.getMessage() for record in caplog.records if "standing by" in record.getMessage())
    assert line == (f"{process.holder} standing by: other-host:4242:abcdef holds the lease until "
                    f"{expires.isoformat()} (the database's clock); this one takes over when it lapses")


def test_a_job_past_its_limit_is_not_named_again_at_every_skipped_run(app, caplog, monkeypatch):
    """Once the overrun was named ("its next runs are skipped until it ends"), APScheduler still logged a line at
    every interval the job missed: a health poll stuck for 10 minutes, 20 lines of the same news."""
    import threading

    from app.scheduler import registry

    job, ran, let_go = _held_past(0.3)
    monkeypatch.setattr(registry, "jobs", [registry.Job("test.stuck", job, 1, timeout_seconds=0.2)])
    caplog.set_level(logging.INFO, logger="mpim.scheduler")
    caplog.set_level(logging.WARNING, logger="apscheduler")
    process = SchedulerProcess(app, lease_seconds=30, stop_grace_seconds=30)
    thread = threading.Thread(target=lambda: process.start(handle_signals=False))
    thread.start()
    try:
        assert ran.wait(30)
        process.renew()  # names the overrun, as the renewal a third of a lease apart does
        time.sleep(2.5)  # two runs, a second apart, find it still running
    finally:
        let_go.set()
        process.stop()
        thread.join(30)
    assert [r for r in caplog.records if "has run" in r.getMessage()], caplog.text
    assert not [r for r in caplog.records if "maximum number of running instances" in r.getMessage()], caplog.text
    assert process.said_overrun not in logging.getLogger("apscheduler.scheduler").filters


def test_a_leader_that_loses_its_lease_while_a_job_runs_names_the_job(app, caplog, monkeypatch):
    """A leader stalled past its lease (a paused VM) found it lost with a job still running, which the new leader
    could start meanwhile; the log said only "lost leadership", not which job ran on."""
    job, ran, let_go = _held_past(0)
    process, thread, _ = _running_in_a_thread(app, monkeypatch, caplog, "test.long", job, stop_grace_seconds=30)
    try:
        assert ran.wait(30)
        db.session.execute(update(SchedulerLease).values(expires_at=utcnow() - timedelta(seconds=60)))
        db.session.commit()
        assert leader.try_acquire("other-host:1", 30)
        db.session.commit()
        assert not process.renew()
    finally:
        let_go.set()
        process.stop()
        thread.join(30)
    lost = [r for r in caplog.records if "lost leadership while running" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(" lost")[1]) for r in lost] == [
        (logging.WARNING, " leadership while running test.long; it runs on, and the new leader may start it "
                          "meanwhile")]
