"""`flask scheduler run|jobs|run-job`."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime

import click
from flask import current_app
from flask.cli import AppGroup
from sqlalchemy import func, select

from app.admission.cli import refuse
from app.cli_arguments import Seconds
from app.console import log_failing_checks
from app.database import utcnow
from app.errors import NotFound
from app.extensions import db
from app.scheduler import leader, liveness, registry
from app.scheduler.models import CLI_HOLDER, JobRun
from app.scheduler.runner import SchedulerProcess, run_job

cli = AppGroup("scheduler", help="The scheduler process (one leader runs every job).")


@cli.command("run")
# The lease is renewed every third of it, but at most once a second: a lease of 1 s or less would lapse
# between renewals, and another scheduler could take it while this one still runs a job.
@click.option("--lease-seconds", default=30.0, show_default=True, type=Seconds(2, leader.LONGEST_LEASE_SECONDS))
@click.option("--stop-grace-seconds", default=30.0, show_default=True, type=Seconds(0, 3600),
              help="How long a stop waits for the jobs running before the process exits anyway.")
def run_command(lease_seconds, stop_grace_seconds):
    """Run the scheduler in the foreground; start one or more, only the leader runs jobs."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    # APScheduler logs two INFO lines per run, lease renewals included (some 35,000 a day); `run_job` logs
    # one line per job run, with the job's name. Its warnings (a missed run) and errors still show.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    log_failing_checks(current_app._get_current_object(), "scheduler")  # the CA's jobs would fail on it later
    process = SchedulerProcess(current_app._get_current_object(), lease_seconds=lease_seconds,
                               stop_grace_seconds=stop_grace_seconds)
    finished = process.start()
    for function in registry.at_stop:
        function()
    if not finished:
        # Python's exit would wait for the job's thread without end; the job's transaction dies with the process.
        logging.shutdown()
        os._exit(1)


@cli.command("jobs")
@click.option("--json", "as_json", is_flag=True)
def jobs_command(as_json):
    """The registered jobs and their last run; a run the leader has not ended yet shows how long it has run. A last
    line says when the heartbeat is stale (the scheduler stopped, as the console's banner says), and one more who
    holds the lease then (a hung leader: a scheduler started now stands by); with --json, the heartbeat's item says
    it in `"stale"`. A job's last run is the last one written."""
    lease = leader.current_leader()
    now = utcnow()
    stale = liveness.stale_heartbeat(current_app.config["MPIM_HEARTBEAT_SECONDS"], now)
    for job in registry.jobs:
        # The last written, not the one dated latest: a run written while its host's clock ran ahead would be that
        # for as long as the clock was off, hiding every run since.
        last = db.session.scalar(select(JobRun).where(JobRun.job == job.name).order_by(JobRun.id.desc()).limit(1))
        runs = db.session.scalar(select(func.count()).where(JobRun.job == job.name))
        state, running_seconds = last_state(last, lease.holder if lease else None, now)
        overrunning = running_seconds is not None and running_seconds > job.timeout_seconds
        item = {"job": job.name, "interval_seconds": job.interval_seconds, "timeout_seconds": job.timeout_seconds,
                "runs": runs, "last_started_at": last.started_at.isoformat() if last else None,
                "last_ok": last.ok if last else None, "last_state": state, "running_seconds": running_seconds,
                "overrunning": overrunning, "last_message": last.message if last else None,
                "leader": lease.holder if lease else None}
        if job.name == liveness.HEARTBEAT:
            item["stale"] = stale is not None
        if state == "running":
            shown = (f"RUNNING {running_seconds:g}s, past its {job.timeout_seconds:g}s limit" if overrunning
                     else f"running {running_seconds:g}s")
        elif state == "unfinished":
            shown = f"no end recorded (its holder {last.holder} does not lead)"
        else:
            shown = "FAILED" if state == "failed" else state or ""
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{job.name:<24} every {job.interval_seconds:>6g}s  runs {runs:<6} "
                   f"last {item['last_started_at'] or '—'} {shown} {item['last_message'] or ''}")
    if stale is not None and not as_json:
        ended = "" if stale.finished else " and never ended"
        click.echo(f"STALE heartbeat: its last run started at {stale.last_started_at.isoformat()}{ended}, "
                   f"{stale.limit.total_seconds():g}s or more ago; no scheduler is running the jobs: start "
                   "`flask scheduler run` (docs/operations.md, Processes)")
        if lease is not None:
            click.echo(f"  the lease is held by {lease.holder} until {lease.expires_at.isoformat()} (the database's "
                       "clock): a scheduler started now stands by until then")


def last_state(last: JobRun | None, leader_holder: str | None, now: datetime) -> tuple[str | None, float | None]:
    """ok, failed, running (with its seconds so far) or unfinished. A run without an end is running only while
    its holder leads: one whose process died, or that `run-job` began, cannot be told from one still going."""
    if last is None:
        return None, None
    if last.ok is not None:
        return ("ok" if last.ok else "failed"), None
    if last.holder != leader_holder:
        return "unfinished", None
    return "running", round(max(0.0, (now - last.started_at).total_seconds()), 1)


@cli.command("run-job")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def run_job_command(name, as_json):
    """Run one job now in the foreground (outside the leader lock). A failed run is its outcome, on stdout (exit 1);
    an unknown name is a usage error (exit 2)."""
    job = next((j for j in registry.jobs if j.name == name), None)
    if job is None:
        message = f"no job {name!r}; see `flask scheduler jobs`"
        if as_json:
            refuse(NotFound(message, code="job_not_found"), as_json, exit_code=2)
        raise click.UsageError(message)
    try:
        run = run_job(job, CLI_HOLDER)
    finally:  # as the scheduler ends: what the job left to finish (a round's queued alerts) is sent or named
        for function in registry.at_stop:
            function()
    click.echo(json.dumps({"job": name, "ok": run.ok, "started_at": run.started_at.isoformat(),
                           "seconds": run.seconds, "message": run.message}, ensure_ascii=False) if as_json else
               f"{name}: {'ok' if run.ok else 'FAILED'} in {run.seconds}s {run.message}")
    if not run.ok:
        raise SystemExit(1)
