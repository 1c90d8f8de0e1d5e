"""The record of job runs is kept `MPIM_JOB_RUNS_KEEP_DAYS`, except each job's newest run and runs without an end."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from app.config import load_config
from app.database import utcnow
from app.extensions import db
from app.scheduler.models import JobRun
from app.scheduler.retention import prune_runs


def add_runs(job: str, *days_ago: float, ended: bool = True) -> list[int]:
    """Runs of `job` that started so many days ago; ids returned in the order given."""
    now = utcnow()
    runs = [JobRun(job=job, holder="test", started_at=now - timedelta(days=days), seconds=0.1 if ended else None,
                   ok=True if ended else None, message="") for days in days_ago]
    db.session.add_all(runs)
    db.session.commit()
    return [run.id for run in runs]


def kept(job: str) -> list[int]:
    db.session.rollback()
    return list(db.session.scalars(select(JobRun.id).where(JobRun.job == job).order_by(JobRun.id)))


def test_runs_past_the_kept_days_are_deleted_and_recent_ones_kept(app):
    old = add_runs("test.poll", 45, 31)
    recent = add_runs("test.poll", 29, 1, 0)
    assert prune_runs(30) == "deleted 2 job runs older than 30 days in 1 batch"
    assert kept("test.poll") == recent
    assert old[0] not in kept("test.poll")


def test_each_jobs_newest_run_is_kept_however_old(app):
    """After a long pause `flask scheduler jobs` still shows when each job last ran."""
    paused = add_runs("test.paused", 120, 100, 90)
    other = add_runs("test.other", 95)
    assert prune_runs(30) == "deleted 2 job runs older than 30 days in 1 batch"
    assert kept("test.paused") == paused[-1:]
    assert kept("test.other") == other


def test_a_run_without_an_end_is_kept_however_old(app):
    """A run in progress, or one whose process died: its row is written at its start and `jobs` names it."""
    unended = add_runs("test.hung", 60, ended=False)
    add_runs("test.hung", 50)
    newest = add_runs("test.hung", 0)
    assert prune_runs(30).startswith("deleted 1 job runs")
    assert kept("test.hung") == unended + newest


def test_old_runs_are_deleted_a_batch_per_transaction(app):
    old = add_runs("test.poll", *range(40, 33, -1))  # 7 deletable
    add_runs("test.poll", 0)
    deletes = []

    def count(_conn, _cursor, statement, parameters, _context, _many):
        if statement.lstrip().upper().startswith("DELETE FROM JOB_RUNS"):
            deletes.append(parameters)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert prune_runs(30, batch_size=3) == "deleted 7 job runs older than 30 days in 3 batches"
    finally:
        event.remove(db.engine, "before_cursor_execute", count)
    assert len(deletes) == 3 and all(len(parameters) <= 3 for parameters in deletes), deletes
    assert not set(old) & set(kept("test.poll"))


def test_the_registered_job_reads_the_kept_days_and_jobs_still_shows_a_last_run(app, runner):
    app.config["MPIM_JOB_RUNS_KEEP_DAYS"] = 7
    add_runs("scheduler.heartbeat", 60, 59, 8)
    last = add_runs("scheduler.heartbeat", 8)
    result = runner.invoke(args=["scheduler", "run-job", "scheduler.prune_runs"])
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("deleted 3 job runs older than 7 days in 1 batch"), result.output
    assert kept("scheduler.heartbeat") == last
    listed = [json.loads(line) for line in runner.invoke(args=["scheduler", "jobs", "--json"]).output.splitlines()]
    heartbeat = next(item for item in listed if item["job"] == "scheduler.heartbeat")
    assert (heartbeat["runs"], heartbeat["last_state"]) == (1, "ok")


def test_the_kept_days_default_to_30(monkeypatch, tmp_path):
    monkeypatch.delenv("MPIM_JOB_RUNS_KEEP_DAYS", raising=False)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_JOB_RUNS_KEEP_DAYS"] == 30
    monkeypatch.setenv("MPIM_JOB_RUNS_KEEP_DAYS", "90")
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_JOB_RUNS_KEEP_DAYS"] == 90


@pytest.mark.parametrize(("value", "error"), [("0", "MPIM_JOB_RUNS_KEEP_DAYS must be 1 or more, not '0'"),
                                              ("-5", "MPIM_JOB_RUNS_KEEP_DAYS must be 1 or more, not '-5'"),
                                              ("30d", "MPIM_JOB_RUNS_KEEP_DAYS must be a whole number, not '30d'")])
def test_kept_days_that_are_not_a_whole_number_of_one_or_more_stop_the_start(monkeypatch, tmp_path, value, error):
    monkeypatch.setenv("MPIM_JOB_RUNS_KEEP_DAYS", value)
    with pytest.raises(ValueError) as raised:
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert str(raised.value) == error


@pytest.mark.parametrize("name", ["MPIM_HEALTH_INTERVAL", "MPIM_HEALTH_TIMEOUT", "MPIM_HEARTBEAT_SECONDS"])
@pytest.mark.parametrize(("value", "says"), [
    ("0", "a positive number of seconds"), ("-1", "a positive number of seconds"),
    ("nan", "a positive number of seconds"), ("inf", "a positive number of seconds"), ("30s", "a number of seconds")])
def test_an_interval_that_is_no_positive_number_of_seconds_stops_the_start(monkeypatch, tmp_path, name, value, says):
    """float() took "nan", "inf" and "0": an interval of 0 surfaced only when the scheduler added the job, a NaN
    timeout when the first poll ran. Each stops the start naming the variable; "0.3" is fine."""
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as raised:
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert str(raised.value) == f"{name} must be {says}, not {value!r}"
    monkeypatch.setenv(name, "0.3")
    if name == "MPIM_HEALTH_INTERVAL":
        monkeypatch.setenv("MPIM_HEALTH_TIMEOUT", "0.2")  # shorter than the interval: see below
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})[name] == 0.3


@pytest.mark.parametrize(("interval", "timeout"), [("30", "30"), ("30", "45"), ("2", "5")])
def test_a_health_timeout_not_shorter_than_its_interval_stops_the_start(monkeypatch, tmp_path, interval, timeout):
    """A round waits for its slowest poll: a timeout of the interval or more made every round with a node down
    outlast its interval, so the scheduler skipped the next round, silently, for as long as the node was down."""
    monkeypatch.setenv("MPIM_HEALTH_INTERVAL", interval)
    monkeypatch.setenv("MPIM_HEALTH_TIMEOUT", timeout)
    with pytest.raises(ValueError) as raised:
        load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})
    assert str(raised.value).startswith(f"MPIM_HEALTH_TIMEOUT ({timeout} s) must be shorter than "
                                        f"MPIM_HEALTH_INTERVAL ({interval} s)")
    monkeypatch.setenv("MPIM_HEALTH_TIMEOUT", str(float(interval) * 0.9))
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_TIMEOUT"] == float(interval) * 0.9



def test_the_newest_run_kept_is_the_last_written_not_the_one_dated_latest(app):
    """A run written while the host's clock ran ahead is dated after the runs written once it was set right: kept
    as the "newest", it showed the job's last run as one that came before it."""
    ahead, last = add_runs("test.paused", 99, 100)
    assert prune_runs(30) == "deleted 1 job runs older than 30 days in 1 batch"
    assert kept("test.paused") == [last]
    assert ahead not in kept("test.paused")


def test_a_heartbeat_run_by_hand_does_not_let_the_prune_take_the_schedulers_last_beat(app, runner):
    """The heartbeat run by hand is not counted (`liveness.stale_heartbeat`): kept as the job's only last run, the
    prune deleted the scheduler's own last beat before it, and the banner of a scheduler still stopped went away
    ("never ran")."""
    from app.scheduler import liveness

    scheduler_beat = JobRun(job=liveness.HEARTBEAT, holder="host:4242:abcdef", started_at=utcnow() - timedelta(days=40),
                            seconds=0.002, ok=True, message="alive")
    db.session.add(scheduler_beat)
    db.session.commit()
    beat_id, beat_started_at = scheduler_beat.id, scheduler_beat.started_at
    assert runner.invoke(args=["scheduler", "run-job", liveness.HEARTBEAT]).exit_code == 0
    result = runner.invoke(args=["scheduler", "run-job", "scheduler.prune_runs"])
    assert result.exit_code == 0, result.output
    assert beat_id in kept(liveness.HEARTBEAT)
    stale = liveness.stale_heartbeat(15)
    assert stale is not None and stale.last_started_at == beat_started_at


def test_a_job_only_ever_run_by_hand_still_loses_its_old_runs(app):
    """Its newest run is kept; with no scheduler's run to keep besides, the older ones go as any job's do."""
    by_hand = [JobRun(job="test.by_hand", holder="cli", started_at=utcnow() - timedelta(days=days), seconds=0.1,
                      ok=True, message="") for days in (50, 40)]
    db.session.add_all(by_hand)
    db.session.commit()
    assert prune_runs(30) == "deleted 1 job runs older than 30 days in 1 batch"
    assert kept("test.by_hand") == [by_hand[1].id]
