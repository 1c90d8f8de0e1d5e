"""`flask audit verify|list`."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup
from sqlalchemy import select

from app.audit import service
from app.audit.models import AuditRecord
from app.extensions import db

cli = AppGroup("audit", help="Inspect and verify the audit log.")


@cli.command("verify")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(as_json: bool) -> None:
    """Recompute the hash chain; exit 1 if any record was edited, deleted or reordered."""
    report = service.verify()
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "checked": report.checked, "problems": report.problems}))
    else:
        for problem in report.problems:
            click.echo(problem, err=True)
        click.echo(f"{report.checked} records checked, {'chain intact' if report.ok else 'CHAIN BROKEN'}")
    if not report.ok:
        raise SystemExit(1)


@cli.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_command(limit: int, as_json: bool) -> None:
    rows = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(limit))
    for row in rows:
        item = {"seq": row.seq, "at": row.at.isoformat(), "actor": row.actor, "action": row.action,
                "target": row.target, "remote_addr": row.remote_addr, "detail": row.detail}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{row.seq:>6} {row.at:%Y-%m-%d %H:%M:%S} {row.actor:<16} {row.action:<28} {row.target}")
