"""`flask db-backup PATH`."""

from __future__ import annotations

from pathlib import Path

import click
from flask.cli import with_appcontext

from app.admission.cli import emit, run
from app.audit import service as audit
from app.backup import service
from app.extensions import db


def _back_up_and_record(target: Path, overwrite: bool) -> service.Backup:
    made = service.back_up(db.engine.url, target, overwrite=overwrite)
    audit.record("database.backup", str(made.target), {"source": str(made.source), "bytes": made.size,
                                                       "revision": made.revision}, actor="cli")
    return made


@click.command("db-backup")
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace a file at TARGET (refused without it).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def backup_command(target: Path, overwrite: bool, as_json: bool) -> None:
    """Copy the configured SQLite database to TARGET (0600), checked before it is kept; audited.
    PostgreSQL is refused: back it up with pg_dump. Runs on a database of any schema version, as a backup
    before `flask db upgrade` must."""
    made = run(lambda: _back_up_and_record(target, overwrite), as_json)
    emit({"backup": str(made.target), "source": str(made.source), "bytes": made.size, "revision": made.revision,
          "integrity": "ok"}, as_json,
         f"backed up {made.source} to {made.target} ({made.size} bytes, schema {made.revision}, integrity ok)")
