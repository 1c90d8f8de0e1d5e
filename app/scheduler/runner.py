"""The scheduler process: runs every registered job, on one leader only."""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from apscheduler.events import EVENT_SCHEDULER_STARTED
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.blocking import BlockingScheduler

from app.database import utcnow
from app.errors import DomainError
from app.extensions import db
from app.scheduler import leader, registry
from app.scheduler.clock import ClockWatch
from app.scheduler.models import JobRun

log = logging.getLogger("mpim.scheduler")


def run_job(job: registry.Job, holder: str) -> JobRun:
    """Run one job now and record it; a failure is recorded, never raised into the scheduler. When the database
    is gone by the job's end, the run cannot be recorded: one line says so and the run is returned unsaved.

    The run's row is committed before the job starts, so `flask scheduler jobs` shows a run that has not ended
    (a job hung on a lock); the job's own work is committed with the row's end, as it always was. A run that took
    longer than the job's `timeout_seconds` says so in its record and its line, whether it ended ok or not."""
    clock = time.perf_counter()
    started_at = utcnow()
    run = JobRun(job=job.name, holder=holder, started_at=started_at)
    db.session.add(run)
    db.session.flush()
    run_id = run.id
    db.session.commit()
    failure: Exception | None = None
    message = ""
    try:
        message = str(job.function() or "")
    except Exception as error:  # a job's failure must not stop the other jobs
        db.session.rollback()
        failure, message = error, f"{type(error).__name__}: {error}"
    seconds = time.perf_counter() - clock
    overran = f"overran its {job.timeout_seconds:g} s limit" if seconds > job.timeout_seconds else ""
    if overran:  # the note survives the cut to the column's length
        message = f"{message[:500 - len(overran) - 2]}; {overran}" if message else overran
    seconds, message = round(seconds, 3), message[:500]
    if isinstance(failure, DomainError):
        # A condition the error's message names (a CA key the passphrase does not open): one line per run,
        # where health.poll's traceback every 30 s buried the log; the traceback only with debug logging on.
        log.error("job %s failed: %s", job.name, message,
                  exc_info=failure if log.isEnabledFor(logging.DEBUG) else None)
    elif failure is not None:
        log.error("job %s failed%s", job.name, f"; {overran}" if overran else "", exc_info=failure)
    try:
        run = db.session.get(JobRun, run_id)  # the job may have expunged it
        run.seconds, run.ok, run.message = seconds, failure is None, message
        db.session.commit()
    except Exception as error:  # the database went away during the job: its row keeps no end
        db.session.rollback()
        lost = f"{type(error).__name__}: {first_line(error)}"
        log.error("job %s: its end was not recorded: %s", job.name, lost)
        # Unsaved, and failed either way: a job's own work is committed with its end, so it was lost too.
        return JobRun(id=run_id, job=job.name, holder=holder, started_at=started_at, seconds=seconds, ok=False,
                      message=message if failure is not None else f"its end was not recorded: {lost}"[:500])
    if failure is None and (job.log_runs or overran):  # a failure was logged above
        log.log(logging.WARNING if overran else logging.INFO, "%s ok in %.3fs%s", job.name, run.seconds,
                f": {run.message}" if run.message else "")
    return run


def first_line(error: BaseException) -> str:
    """An error's message without what follows its first line (SQLAlchemy appends the statement, its
    parameters and a link; psycopg the server's DETAIL and HINT)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


@dataclass
class RunningJob:
    """A job this process runs now: since when (monotonic), and whether its overrun was logged yet."""

    job: registry.Job
    started: float
    overrun_logged: bool = False


class SchedulerProcess:
    def __init__(self, app, lease_seconds: float = 30.0, stop_grace_seconds: float = 30.0):
        self.app = app
        self.holder = leader.make_holder_id()
        self.lease_seconds = lease_seconds
        self.stop_grace_seconds = stop_grace_seconds
        self.is_leader = False
        self.lease_valid_until = 0.0
        self.renewal_failures = 0  # renewals failed since the last that worked
        # A thread for each job and one for the lease's renewal, and a spare: APScheduler's default pool of ten was
        # just filled by the nine jobs and the renewal, and one job more let hung jobs starve the renewal.
        self.scheduler = BlockingScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1},
                                           executors={"default": ThreadPoolExecutor(len(registry.jobs) + 2)})
        self.lock = threading.Lock()
        # The jobs running now, and whether a stop began: a job starts only while none has. Re-entrant, as a
        # signal's stop() may interrupt the main thread while it holds it.
        self.jobs_changed = threading.Condition(threading.RLock())
        self.running: dict[str, RunningJob] = {}  # by job name: APScheduler runs one instance of each at most
        self.stopping = False
        self.clock_watch = ClockWatch(self.clock_stepped)

    def renew(self) -> bool:
        """Take or keep the lease. While the database is away every renewal (a third of the lease
        apart) fails: each is one warning line naming the error, the traceback only with debug
        logging on (a restart of a few minutes was a screenful of identical tracebacks per renewal),
        and the first renewal that works again says so once. It tells of jobs past their limit first
        (`warn_overruns`), before it asks the database: a database that hangs a job may hang the renewal too."""
        self.warn_overruns()
        failure = None
        # Before the renewal is asked: the database dates the lease from its UPDATE, and an answer slow to come
        # back (a loaded host, the network, SQLite's busy wait) must not stretch the time it is trusted for.
        asked_at = time.monotonic()
        with self.app.app_context():
            try:
                held = leader.try_acquire(self.holder, self.lease_seconds)
            except Exception as error:  # the database may be briefly away: we are not leader until it answers
                db.session.rollback()
                held, failure = False, error
            finally:
                db.session.remove()
        with self.lock:
            if failure is not None:
                self.renewal_failures += 1
                log.warning("lease renewal failed (%d in a row): %s: %s", self.renewal_failures,
                            type(failure).__name__, first_line(failure),
                            exc_info=failure if log.isEnabledFor(logging.DEBUG) else None)
            elif self.renewal_failures:
                log.info("lease renewal works again after %d failed", self.renewal_failures)
                self.renewal_failures = 0
            lost = self.is_leader and not held
            if held != self.is_leader:
                log.info("%s %s leadership", self.holder, "took" if held else "lost")
            self.is_leader = held
            # Trust the lease for a little less than its length, measured from before the renewal.
            self.lease_valid_until = asked_at + self.lease_seconds * 0.8 if held else 0.0
        if lost:
            # A leader that stalled past its lease (a paused VM, the database out of reach) finds it lost while a
            # job still runs: the job runs on, and the new leader may start it meanwhile, as `run-job` may beside
            # a leader (the health round, the CRL and the routing table take database locks). Said, not stopped.
            with self.jobs_changed:
                running = list(self.running)
            if running:
                log.warning("%s lost leadership while running %s; it runs on, and the new leader may start it "
                            "meanwhile", self.holder, ", ".join(running))
        return held

    def warn_overruns(self) -> None:
        """One warning per run of a job running past its `timeout_seconds`. The job is left to run (a thread
        cannot be stopped safely); until it ends, APScheduler skips its next runs."""
        now = time.monotonic()
        with self.jobs_changed:
            late = [running for running in self.running.values()
                    if not running.overrun_logged and now - running.started > running.job.timeout_seconds]
            for running in late:
                running.overrun_logged = True
        for running in late:
            log.warning("job %s has run %.1f s, past its %g s limit; it runs on, and its next runs are skipped "
                        "until it ends", running.job.name, now - running.started, running.job.timeout_seconds)

    def clock_stepped(self, seconds: float) -> None:
        """The wall clock stepped by `seconds` (negative: back): every job's next run moves with it, so each keeps
        its cadence (a step back of ten minutes left every job, the lease's renewal too, ten minutes away).

        APScheduler may wake between the step and this call, run the jobs it finds late (after a step forward) and
        time their next runs by the new clock: moved by the step again, every job was a step away. Which jobs it
        timed cannot be told, so a next run is kept within one interval from now (each job's next run was within
        one interval before the step), and one moved into the past is now: such a job runs at once."""
        log.warning("the host's clock stepped %s by %.1f s; every job's next run is moved with it",
                    "back" if seconds < 0 else "forward", abs(seconds))
        step, now = timedelta(seconds=seconds), datetime.now(UTC)
        for job in self.scheduler.get_jobs():
            if job.next_run_time is not None:  # every job here has an interval trigger
                moved = min(job.next_run_time + step, now + job.trigger.interval)
                job.modify(next_run_time=max(moved, now))

    def said_overrun(self, record: logging.LogRecord) -> bool:
        """Logging filter for APScheduler's scheduler: False for its "skipped: maximum number of running
        instances" line about a job whose overrun `warn_overruns` named, which said its next runs are skipped:
        a stuck health poll otherwise added a line at every interval."""
        if "maximum number of running instances" not in str(record.msg) or not record.args:
            return True
        name = getattr(record.args[0], "name", None)
        with self.jobs_changed:
            running = self.running.get(name)
            return running is None or not running.overrun_logged

    def leading(self) -> bool:
        with self.lock:
            return self.is_leader and time.monotonic() < self.lease_valid_until

    def wrap(self, job: registry.Job):
        def execute():
            if self.stopping or (not self.leading() and not self.renew()):
                return
            with self.jobs_changed:
                if self.stopping:
                    return
                self.running[job.name] = RunningJob(job, time.monotonic())
            try:
                with self.app.app_context():
                    try:
                        run_job(job, self.holder)
                    finally:
                        db.session.remove()
            finally:
                with self.jobs_changed:
                    del self.running[job.name]
                    self.jobs_changed.notify_all()

        return execute

    def start(self, handle_signals: bool = True) -> bool:
        """Run until stop(); then wait for the jobs running (`finish`). True when none was left running."""
        now = datetime.now().astimezone()
        self.renew()
        self.scheduler.add_job(self.renew, "interval", seconds=max(1.0, self.lease_seconds / 3), id="lease",
                               name="scheduler.lease")
        for job in registry.jobs:
            self.scheduler.add_job(self.wrap(job), "interval", seconds=job.interval_seconds, id=job.name, name=job.name,
                                   next_run_time=now, misfire_grace_time=max(1, int(job.interval_seconds)))
        # A stop() while APScheduler starts finds it not running yet, so cannot end its loop: ended once it runs.
        self.scheduler.add_listener(self._stopped_while_starting, EVENT_SCHEDULER_STARTED)
        if handle_signals:  # only the main thread may set them
            for signum in (signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, lambda *_: self.stop())
        log.info("scheduler %s starting with jobs: %s", self.holder, ", ".join(j.name for j in registry.jobs))
        if not self.is_leader:
            log.info("%s standing by: %s; this one takes over when it lapses", self.holder, self._lease_held_by())
        skips = logging.getLogger("apscheduler.scheduler")
        skips.addFilter(self.said_overrun)
        try:
            if not self.stopping:  # a signal may have come while it started
                self.clock_watch.start()
                try:
                    self.scheduler.start()
                finally:
                    self.clock_watch.stop()
            return self.finish()
        finally:
            skips.removeFilter(self.said_overrun)

    def _lease_held_by(self) -> str:
        """Who holds the lease and until when, as `flask scheduler jobs` says it: the operator of a standby
        learns which host and process to look at. A lease that lapsed meanwhile, or a database that does not
        answer, is said in general terms: the line is only information."""
        with self.app.app_context():
            try:
                lease = leader.current_leader()
            except Exception:  # noqa: BLE001 (the renewal's own warning names a database error)
                db.session.rollback()
                lease = None
            finally:
                db.session.remove()
        if lease is None:
            return "another scheduler holds the lease"
        return f"{lease.holder} holds the lease until {lease.expires_at.isoformat()} (the database's clock)"

    def _stopped_while_starting(self, _event) -> None:
        if self.stopping and self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def stop(self) -> None:
        """Start no more jobs and end start()'s loop, which then waits for the running ones (`finish`). A second
        call (SIGINT after SIGTERM, as a terminal's Ctrl-C sends beside a service manager's stop) does nothing."""
        with self.jobs_changed:
            if self.stopping:
                return
            self.stopping = True
            running = list(self.running)
        log.info("scheduler %s stopping%s", self.holder,
                 f", waiting for {', '.join(running)}" if running else "")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)  # a signal handler must not block; finish() waits

    def finish(self) -> bool:
        """Wait, at most `stop_grace_seconds`, for the jobs still running, keeping the lease meanwhile so no other
        scheduler starts the same job; then release it and log the last line. A job still running past the grace
        keeps the lease (it lapses on its own), and False says so."""
        deadline = time.monotonic() + self.stop_grace_seconds
        with self.jobs_changed:
            while self.running and (left := deadline - time.monotonic()) > 0:
                self.jobs_changed.wait(min(left, self.lease_seconds / 3))
                if self.running and self.is_leader:
                    self.renew()
            running = list(self.running)
        if running:
            log.warning("scheduler %s stopped with %s still running after %gs; its lease lapses on its own",
                        self.holder, ", ".join(running), self.stop_grace_seconds)
            return False
        released = self.is_leader
        with self.app.app_context():
            leader.release(self.holder)
            db.session.remove()
        log.info("scheduler %s stopped%s", self.holder, " (lease released)" if released else "")
        return True
