"""`flask health poll --once`, `flask health status`, `flask health maintenance`."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app.admission import nodes
from app.admission.cli import emit, run
from app.auth import service as users
from app.health import maintenance, rounds, service, webhook

cli = AppGroup("health", help="Health polling of every active node.")


@cli.command("poll")
@click.option("--once", is_flag=True, required=True, help="One round now, in the foreground.")
@click.option("--json", "as_json", is_flag=True)
def poll_command(once, as_json):
    """Poll every active node once and print what was found."""
    report = run(lambda: rounds.run_round(spread=False), as_json)  # no CA: an error line, not a traceback
    webhook.outbox.finish()  # the round's alerts go before the process ends, or are logged unsent
    if as_json:
        click.echo(json.dumps({"polled": report.polled, "ok": report.ok, "skipped": report.skipped,
                               "failures": report.failures,
                               "changes": [c.__dict__ for c in report.changes],
                               "late_alerts": [c.__dict__ for c in report.late_alerts]}, ensure_ascii=False))
    else:
        click.echo(report.summary())


@cli.command("status")
@click.option("--json", "as_json", is_flag=True)
def status_command(as_json):
    """Every node polling watches (the active ones), as the console's health column shows them: one admitted
    since the last round is unknown; a suspended or revoked one is polled no more, and not listed."""
    from sqlalchemy import select

    from app.admission.models import Node
    from app.extensions import db
    from app.health.models import NodeHealth

    rows = db.session.execute(select(Node.node_id, NodeHealth).outerjoin(NodeHealth, NodeHealth.node_id == Node.node_id)
                              .where(Node.status == "active").order_by(Node.node_id))
    for node_id, health in rows:
        status = health.status if health else "unknown"
        checked = health.last_checked_at if health else None
        latency = health.last_latency_ms if health else None
        failure = health.last_failure if health else None
        item = {"node_id": node_id, "status": status, "last_checked_at": checked.isoformat() if checked else None,
                "last_latency_ms": latency, "last_failure": failure, "maintenance": service.in_maintenance(health)}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{node_id} {status:<8} {failure or ''} {'' if latency is None else f'{latency:.0f} ms'}")


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
