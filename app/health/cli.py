"""`flask health poll --once`, `flask health status`, `flask health maintenance`."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app.admission import nodes
from app.admission.cli import emit, run
from app.auth import service as users
from app.health import maintenance, rounds, service

cli = AppGroup("health", help="Health polling of every active node.")


@cli.command("poll")
@click.option("--once", is_flag=True, required=True, help="One round now, in the foreground.")
@click.option("--json", "as_json", is_flag=True)
def poll_command(once, as_json):
    """Poll every active node once and print what was found."""
    report = run(lambda: rounds.run_round(spread=False), as_json)  # no CA: an error line, not a traceback
    if as_json:
        click.echo(json.dumps({"polled": report.polled, "ok": report.ok, "skipped": report.skipped,
                               "failures": report.failures,
                               "changes": [c.__dict__ for c in report.changes]}, ensure_ascii=False))
    else:
        click.echo(report.summary())


@cli.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_command(as_json):
    from sqlalchemy import select

    from app.extensions import db
    from app.health.models import NodeHealth

    for health in db.session.scalars(select(NodeHealth).order_by(NodeHealth.node_id)):
        item = {"node_id": health.node_id, "status": health.status, "last_checked_at":
                health.last_checked_at.isoformat() if health.last_checked_at else None,
                "last_latency_ms": health.last_latency_ms, "last_failure": health.last_failure,
                "maintenance": service.in_maintenance(health)}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{health.node_id} {health.status:<8} {health.last_failure or ''} "
                   f"{'' if health.last_latency_ms is None else f'{health.last_latency_ms:.0f} ms'}")


@cli.command("maintenance")
@click.argument("node_id")
@click.option("--hours", required=True,
              help="How long from now, up to 720; 0 ends the window; keep: its end stays, the note changes.")
@click.option("--note", default="", help="What is being done; shown on the node's page.")
@click.option("--user", "username", required=True, help="The console user acting (audited).")
@click.option("--json", "as_json", is_flag=True)
def maintenance_command(node_id, hours, note, username, as_json):
    """Set or end a node's maintenance window, as the node's page does: polls inside it are kept but
    do not count against availability, and raise no alert."""
    health = run(lambda: maintenance.schedule_maintenance(nodes.get(node_id), hours, note,
                                                      by=users.acting_user(username)), as_json)
    until = health.maintenance_until if health is not None else None
    emit({"node_id": node_id, "maintenance_until": until.isoformat() if until else None,
          "note": health.maintenance_note if health is not None else ""}, as_json,
         f"{node_id} in maintenance until {until.isoformat()}" if until else f"{node_id}: no maintenance window")
