"""The scheduler process: one registry of periodic jobs, one leader among any number of processes."""

from __future__ import annotations


def heartbeat() -> str:
    """A job that only proves the leader is alive: its runs are recorded (not logged), and once the newest is
    older than a few intervals (`liveness.stale_heartbeat`) `flask scheduler jobs` says so and ministry admins and
    auditors see a console banner."""
    return "alive"


def init_app(app) -> None:
    from app import console
    from app.scheduler import liveness, registry, views
    from app.scheduler.cli import cli
    from app.scheduler.retention import prune_runs

    app.cli.add_command(cli)
    registry.register(registry.Job(liveness.HEARTBEAT, heartbeat, app.config["MPIM_HEARTBEAT_SECONDS"],
                                   log_runs=False))
    registry.register(registry.Job("scheduler.prune_runs", prune_runs, 3600))
    if views.banner not in console.banner_sources:
        console.banner_sources.append(views.banner)
