"""`flask divisions import FILE --revision NAME` and `flask divisions show CODE`."""

from __future__ import annotations

import json

import click
from flask.cli import AppGroup

from app.divisions import service
from app.errors import DomainError
from app.extensions import db

cli = AppGroup("divisions", help="GB/T 2260 division codes.")


@cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--revision", default=None, help="The revision FILE holds, e.g. 2024 (required with FILE; without FILE "
              "the shipped list is imported, which is revision 2023).")
@click.option("--allow-older", is_flag=True, help="Import a revision older than the current one (a rollback).")
@click.option("--allow-mass-retirement", is_flag=True,
              help="Import a revision that retires a province or more than a twentieth of the current codes "
                   "(refused otherwise: a file cut short reads as one).")
@click.option("--json", "as_json", is_flag=True)
def import_command(file, revision, allow_older, allow_mass_retirement, as_json):
    """Load a revision in one transaction and report what it added, renamed and retired.

    Without FILE it loads the shipped list, which is revision 2023 and no other: named otherwise, it passed
    the older-revision check and undid a newer revision's renames and retirements. A bare `import` (what
    `make db` runs on every start) keeps a newer revision or a rollback in place
    (`service.reason_to_keep_loaded_revision`). `--revision 2023` without FILE loads the shipped list over a
    rollback, and over a newer revision with --allow-older, as asked."""
    if file is None and revision not in (None, service.DEFAULT_REVISION):
        raise click.UsageError(f"--revision names the revision in FILE; give the FILE (without one, the shipped "
                               f"list is imported, which is revision {service.DEFAULT_REVISION})")
    if file is None and revision is None:
        service.lock_imports()  # what an import running meanwhile loads decides, as if it had ended first
        reason = service.reason_to_keep_loaded_revision()
        if reason is not None:
            latest = service.latest_revision()
            db.session.rollback()
            click.echo(json.dumps({"revision": latest.name, "imported": False}) if as_json else reason)
            return
    path = file or str(service.DEFAULT_FILE)
    revision = revision or (service.DEFAULT_REVISION if file is None else None)
    if not revision:
        raise click.UsageError("--revision is required with a FILE")
    try:
        with open(path, "rb") as handle:
            report = service.import_revision(handle.read(), revision, actor="cli", allow_older=allow_older,
                                             allow_mass_retirement=allow_mass_retirement)
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        click.echo(json.dumps(error.to_dict(), ensure_ascii=False) if as_json else f"refused: {error.message}",
                   err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
        return
    if report.first:
        click.echo(f"revision {report.revision}: {report.total} codes loaded (the first revision: nothing to "
                   "compare with)")
        return
    click.echo(f"revision {report.revision}: {report.total} codes; {len(report.added)} added, "
               f"{len(report.renamed)} renamed, {len(report.retired)} retired, {len(report.restored)} restored")
    for code, name in report.added:
        click.echo(f"  + {code} {name}")
    for code, old, new in report.renamed:
        click.echo(f"  ~ {code} {old} → {new}")
    for code, name in report.retired:
        click.echo(f"  - {code} {name} (retired)")
    for code, name in report.restored:
        click.echo(f"  ↺ {code} {name} (restored)")
    for line in report.retired_in_use:
        click.echo(f"  ! {line}")


@cli.command("show")
@click.argument("code")
@click.option("--json", "as_json", is_flag=True, help="Accepted for scripts: the division is printed as JSON anyway.")
def show_command(code, as_json):
    """The division as `GET /api/v1/divisions/CODE` answers it (JSON, with or without --json)."""
    try:
        click.echo(json.dumps(service.describe(code), ensure_ascii=False))
    except DomainError as error:
        click.echo(json.dumps(error.to_dict(), ensure_ascii=False) if as_json else f"error: {error.message}",
                   err=True)
        raise SystemExit(1) from None
