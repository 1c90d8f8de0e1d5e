"""A stopped scheduler is told at once: its heartbeat's newest run, when older than a few beats, puts a banner before
ministry admins and auditors and a line in `flask scheduler jobs` (`liveness.stale_heartbeat`)."""

from __future__ import annotations

import html
import json
from datetime import timedelta

import pytest
from sqlalchemy import event

from app.database import utcnow
from app.extensions import db
from app.scheduler import liveness
from app.scheduler.models import JobRun
from tests.conftest import Console

STOPPED_EN = "The scheduler has not run since "
STOPPED_ZH = "调度进程自 "
WHAT_TO_DO_EN = ("Health polling, CRL refresh and the routing table's re-signing wait until it runs again: start "
                 "`flask scheduler run` (or restart its service; docs/operations.md, Processes).")
WHAT_TO_DO_ZH = "请启动 `flask scheduler run`（或重启其服务；见 docs/operations.md 的 Processes 一节）。"


def beat(seconds_ago: float, *, job: str = liveness.HEARTBEAT, ended: bool = True) -> JobRun:
    run = JobRun(job=job, holder="host:4242:abcdef", started_at=utcnow() - timedelta(seconds=seconds_ago),
                 seconds=0.002 if ended else None, ok=True if ended else None, message="alive" if ended else "")
    db.session.add(run)
    db.session.commit()
    return run


def banners_seen(console: Console) -> str:
    page = console.client.get("/").get_data(as_text=True)
    return " ".join(html.unescape(part.split("</div>")[0]) for part in page.split('<div class="banner ')[1:])


def signed_in(app, make_user, username: str, role: str, scopes: tuple[str, ...] = ()) -> Console:
    make_user(username, role, scopes)
    console = Console(app.test_client())
    assert console.login(username).status_code == 302
    return console


def test_a_heartbeat_older_than_four_beats_puts_a_banner_before_a_ministry_admin_in_both_languages(app,
                                                                                                 admin_console):
    from app.i18n import local_time

    run = beat(300)
    seen = banners_seen(admin_console)
    assert seen.startswith("error")
    assert f"调度进程自 {local_time(run.started_at)} 起未再运行：其心跳（每 15 秒一次）已停止。" in seen, seen
    assert WHAT_TO_DO_ZH in seen
    admin_console.client.get("/lang/en")
    seen = banners_seen(admin_console)
    assert (f"The scheduler has not run since {local_time(run.started_at)}: its heartbeat, every 15 s, has stopped. "
            + WHAT_TO_DO_EN) in seen, seen


def test_a_recent_heartbeat_shows_no_banner(app, admin_console):
    beat(300)
    beat(10)  # the newest run is the one that counts
    assert STOPPED_ZH not in banners_seen(admin_console)


def test_no_heartbeat_ever_recorded_shows_no_banner(app, admin_console):
    """A fresh install, or this test suite's database: no scheduler ever ran here, which is not one that stopped.
    Another job's old run says nothing of the heartbeat."""
    beat(3600, job="health.poll")
    assert liveness.stale_heartbeat(15) is None
    seen = banners_seen(admin_console)
    assert STOPPED_ZH not in seen and "调度进程于" not in seen


def test_a_heartbeat_that_never_ended_is_stale_once_it_started_long_ago(app, admin_console):
    """A heartbeat does nothing: one without an end minutes after it began is a hung or killed scheduler."""
    from app.i18n import local_time

    beat(5, ended=False)
    assert STOPPED_ZH not in banners_seen(admin_console)
    db.session.query(JobRun).delete()
    run = beat(300, ended=False)
    admin_console.client.get("/lang/en")
    seen = banners_seen(admin_console)
    assert (f"The scheduler's heartbeat that started at {local_time(run.started_at)} never ended: the scheduler is "
            "hung or was killed. " + WHAT_TO_DO_EN) in seen, seen


def test_auditors_see_it_and_provincial_admins_do_not(app, make_user):
    """As the routing table's re-signing banner, whose first question (is the scheduler running?) this answers."""
    beat(300)
    assert STOPPED_ZH in banners_seen(signed_in(app, make_user, "eye", "auditor"))
    assert STOPPED_ZH not in banners_seen(signed_in(app, make_user, "jx-admin", "provincial_admin", ("360000",)))


@pytest.mark.parametrize(("interval", "limit"), [(15, 60), (5, 60), (0.3, 60), (30, 120)])
def test_stale_after_four_beats_and_at_least_a_minute(app, interval, limit):
    """A leader's failover (its 30 s lease lapsing) misses a beat or two, and is not a stopped scheduler."""
    assert liveness.stale_after(interval) == timedelta(seconds=limit)
    run = beat(0)
    assert liveness.stale_heartbeat(interval, now=run.started_at + timedelta(seconds=limit - 1)) is None
    found = liveness.stale_heartbeat(interval, now=run.started_at + timedelta(seconds=limit))
    assert found == liveness.StaleHeartbeat(run.started_at, True, timedelta(seconds=limit))


def test_the_banner_reads_the_configured_interval(app, admin_console):
    app.config["MPIM_HEARTBEAT_SECONDS"] = 60.0  # stale after 240 s
    beat(200)
    assert STOPPED_ZH not in banners_seen(admin_console)
    db.session.query(JobRun).delete()
    beat(250)
    assert "其心跳（每 60 秒一次）已停止" in banners_seen(admin_console)


def test_the_banner_costs_one_query_of_the_job_runs_per_page(app, admin_console):
    beat(300)
    statements = []

    def record(_conn, _cursor, statement, _parameters, _context, _many):
        if "job_runs" in statement.lower():
            statements.append(statement)

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        assert STOPPED_ZH in banners_seen(admin_console)
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    assert len(statements) == 1, statements
    assert "LIMIT" in statements[0].upper()


def test_flask_scheduler_jobs_says_when_the_heartbeat_is_stale(app, runner):
    run = beat(300)
    text = runner.invoke(args=["scheduler", "jobs"])
    assert text.exit_code == 0, text.output
    assert (f"STALE heartbeat: its last run started at {run.started_at.isoformat()}, 60s or more ago; no scheduler "
            "is running the jobs: start `flask scheduler run` (docs/operations.md, Processes)") in text.output
    listed = [json.loads(line) for line in runner.invoke(args=["scheduler", "jobs", "--json"]).output.splitlines()]
    assert next(item for item in listed if item["job"] == liveness.HEARTBEAT)["stale"] is True
    assert all("stale" not in item for item in listed if item["job"] != liveness.HEARTBEAT)


def test_flask_scheduler_jobs_is_silent_on_a_live_or_never_run_scheduler(app, runner):
    assert "STALE" not in runner.invoke(args=["scheduler", "jobs"]).output
    beat(300, ended=False)
    assert "and never ended, 60s or more ago" in runner.invoke(args=["scheduler", "jobs"]).output
    beat(5)
    assert "STALE" not in runner.invoke(args=["scheduler", "jobs"]).output
    listed = [json.loads(line) for line in runner.invoke(args=["scheduler", "jobs", "--json"]).output.splitlines()]
    assert next(item for item in listed if item["job"] == liveness.HEARTBEAT)["stale"] is False


def test_a_heartbeat_run_by_hand_does_not_hide_a_stopped_scheduler(app, admin_console, runner):
    """`flask scheduler run-job scheduler.heartbeat` recorded a beat that said the scheduler was alive, and the banner
    went away for a minute while no scheduler ran at all."""
    beat(300)
    result = runner.invoke(args=["scheduler", "run-job", liveness.HEARTBEAT])
    assert result.exit_code == 0, result.output
    assert STOPPED_ZH in banners_seen(admin_console)
    assert liveness.stale_heartbeat(15) is not None
