"""The scheduler process: runs every registered job, on one leader only."""

from __future__ import annotations

import logging
import signal
import threading
import time
from datetime import datetime

from apscheduler.schedulers.blocking import BlockingScheduler

from app.database import utcnow
from app.errors import DomainError
from app.extensions import db
from app.scheduler import leader, registry
from app.scheduler.models import JobRun

log = logging.getLogger("mpim.scheduler")


def run_job(job: registry.Job, holder: str) -> JobRun:
    """Run one job now and record it; a failure is recorded, never raised into the scheduler."""
    started, clock = utcnow(), time.perf_counter()
    ok, message = True, ""
    try:
        message = job.function() or ""
    except DomainError as error:
        # A condition the error's message names (a CA key the passphrase does not open): one line per run,
        # where health.poll's traceback every 30 s buried the log; the traceback only with debug logging on.
        db.session.rollback()
        ok, message = False, f"{type(error).__name__}: {error}"
        log.error("job %s failed: %s", job.name, message,
                  exc_info=error if log.isEnabledFor(logging.DEBUG) else None)
    except Exception as error:  # a job's failure must not stop the other jobs
        db.session.rollback()
        ok, message = False, f"{type(error).__name__}: {error}"
        log.exception("job %s failed", job.name)
    run = JobRun(job=job.name, holder=holder, started_at=started, seconds=round(time.perf_counter() - clock, 3),
                 ok=ok, message=str(message)[:500])
    db.session.add(run)
    db.session.commit()
    if ok and job.log_runs:  # a failure was logged above
        log.info("%s ok in %.3fs%s", job.name, run.seconds, f": {run.message}" if run.message else "")
    return run


def first_line(error: BaseException) -> str:
    """An error's message without what follows its first line (SQLAlchemy appends the statement, its
    parameters and a link; psycopg the server's DETAIL and HINT)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else ""


class SchedulerProcess:
    def __init__(self, app, lease_seconds: float = 30.0):
        self.app = app
        self.holder = leader.make_holder_id()
        self.lease_seconds = lease_seconds
        self.is_leader = False
        self.lease_valid_until = 0.0
        self.renewal_failures = 0  # renewals failed since the last that worked
        self.scheduler = BlockingScheduler(timezone="UTC", job_defaults={"coalesce": True, "max_instances": 1})
        self.lock = threading.Lock()

    def renew(self) -> bool:
        """Take or keep the lease. While the database is away every renewal (a third of the lease
        apart) fails: each is one warning line naming the error, the traceback only with debug
        logging on (a restart of a few minutes was a screenful of identical tracebacks per renewal),
        and the first renewal that works again says so once."""
        failure = None
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
            if held != self.is_leader:
                log.info("%s %s leadership", self.holder, "took" if held else "lost")
            self.is_leader = held
            # Trust the lease for a little less than its length, measured from before the renewal.
            self.lease_valid_until = time.monotonic() + self.lease_seconds * 0.8 if held else 0.0
        return held

    def leading(self) -> bool:
        with self.lock:
            return self.is_leader and time.monotonic() < self.lease_valid_until

    def wrap(self, job: registry.Job):
        def execute():
            if not self.leading() and not self.renew():
                return
            with self.app.app_context():
                try:
                    run_job(job, self.holder)
                finally:
                    db.session.remove()

        return execute

    def start(self) -> None:
        now = datetime.now().astimezone()
        self.renew()
        self.scheduler.add_job(self.renew, "interval", seconds=max(1.0, self.lease_seconds / 3), id="lease",
                               name="scheduler.lease")
        for job in registry.jobs:
            self.scheduler.add_job(self.wrap(job), "interval", seconds=job.interval_seconds, id=job.name, name=job.name,
                                   next_run_time=now, misfire_grace_time=max(1, int(job.interval_seconds)))
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stop())
        log.info("scheduler %s starting with jobs: %s", self.holder, ", ".join(j.name for j in registry.jobs))
        if not self.is_leader:
            log.info("%s standing by: another scheduler holds the lease; this one takes over when it lapses",
                     self.holder)
        self.scheduler.start()

    def stop(self) -> None:
        log.info("scheduler %s stopping%s", self.holder, " (releasing the lease)" if self.is_leader else "")
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        with self.app.app_context():
            leader.release(self.holder)
            db.session.remove()
