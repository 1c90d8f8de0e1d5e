"""The scheduler process: one registry of periodic jobs, one leader among any number of processes."""

from __future__ import annotations

import os


def heartbeat() -> str:
    """A job that only proves the leader is alive; the console shows when it last ran."""
    return "alive"


def init_app(app) -> None:
    from app.scheduler import registry
    from app.scheduler.cli import cli
    from app.scheduler.retention import prune_runs

    app.cli.add_command(cli)
    registry.register(registry.Job("scheduler.heartbeat", heartbeat,
                                   float(os.environ.get("MPIM_HEARTBEAT_SECONDS", 15)), log_runs=False))
    registry.register(registry.Job("scheduler.prune_runs", prune_runs, 3600))
