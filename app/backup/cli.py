"""`flask db-backup PATH` and `flask db-restore FILE`."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import click
from flask.cli import with_appcontext

from app.admission.cli import emit, run
from app.audit import service as audit
from app.backup import restore, service
from app.extensions import db
from app.pki import service as ca


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


@click.command("db-restore")
@click.argument("backup", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@with_appcontext
def restore_command(backup: Path, yes: bool, as_json: bool) -> None:
    """Put BACKUP (a `flask db-backup` file) in place of the configured SQLite database, once checked
    (integrity, a schema revision this code knows) and confirmed; the database it replaces is kept beside it as
    `<name>.before-restore-<UTC time>`. Refused while another process has the database open: stop the services
    first. Audited in the restored database. Prints the restore steps' commands (`--above N`) with the replaced
    database's routing version and CRL numbers, and what it holds that the backup lacks (certificates to record,
    revocations and suspensions to redo). PostgreSQL is refused: restore it with pg_restore."""
    if as_json and not yes:  # a prompt would take the place of the JSON
        raise click.UsageError("with --json, confirm the restore with --yes.")
    with ExitStack() as stack:  # the checked copy is removed unless it was put in place
        plan = run(lambda: stack.enter_context(restore.prepared(db.engine.url, backup)), as_json)
        replaced = plan.replaced_newest
        click.echo(f"backup:   {plan.backup} ({plan.backup_newest}, schema {plan.revision})", err=True)
        click.echo(f"replaces: {plan.database} ({replaced if replaced else 'no file there'}); everything written "
                   "to it after the backup is lost from the restored database", err=True)
        if not yes:
            click.confirm("Restore?", abort=True, err=True)
        done = run(lambda: restore.apply(plan), as_json)
    steps = plan.next_steps
    commands = steps.commands(done.certificates, root_key_offline=ca.root_key_offline()) if steps else []
    emit({"restored": str(plan.database), "backup": str(plan.backup), "revision": plan.revision,
          "schema": plan.schema, "kept_as": str(done.kept_as) if done.kept_as else None,
          "backup_newest": plan.backup_newest.as_dict(),
          "replaced_newest": replaced.as_dict() if replaced else None,
          "replaced_numbers": steps.replaced.as_dict() if steps else None,
          "backup_numbers": steps.backup.as_dict() if steps else None,
          "lost_since_backup": steps.lost.as_dict() if steps else None, "next_commands": commands}, as_json,
         f"restored {plan.backup} to {plan.database}"
         + (f"; the database it replaced is kept as {done.kept_as}" if done.kept_as else "")
         + ("; its schema is older than this release: run flask db upgrade" if plan.schema == "behind" else "")
         + "; then follow docs/operations.md, Backup, before starting the services"
         + ("\nthose steps' commands, from what the replaced database holds, in the steps' order (NAME: who acts):\n"
            + "\n".join(f"  {command}" for command in commands) if commands else ""))
