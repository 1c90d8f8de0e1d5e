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
@click.option("--json", "as_json", is_flag=True)
def import_command(file, revision, allow_older, as_json):
    """Load a revision in one transaction and report what it added, renamed and retired.

    Without FILE it loads the shipped list, which is revision 2023 and no other: named otherwise, it passed
    the older-revision check and undid a newer revision's renames and retirements. A bare `import` (what
    `make db` runs on every start) leaves a newer revision in place (refused as older, it failed `make run`) and
    a rollback from the shipped list with --allow-older (which the next start undid, retiring its codes again);
    an older revision loaded while the shipped list never was is the last release's, and the shipped one is
    loaded over it. `--revision 2023` without FILE loads the shipped list over a rollback, and over a newer
    revision with --allow-older, as asked."""
    if file is None and revision not in (None, service.DEFAULT_REVISION):
        raise click.UsageError(f"--revision names the revision in FILE; give the FILE (without one, the shipped "
                               f"list is imported, which is revision {service.DEFAULT_REVISION})")
    if file is None and revision is None:
        latest = service.latest_revision()
        shipped = service.DEFAULT_REVISION
        newer_loaded = latest is not None and service.is_older_revision(shipped, latest.name)
        # Older than the shipped list after the shipped list was loaded: someone rolled back. Older without it
        # ever loaded: this release ships a newer list than the last one did, which the start is to load.
        rolled_back = (latest is not None and latest.name != shipped and not newer_loaded
                       and service.revision_was_loaded(shipped))
        if newer_loaded or rolled_back:
            if newer_loaded:
                message = f"revision {latest.name} is loaded, newer than the shipped {shipped}: nothing imported"
            else:
                message = (f"revision {latest.name} is loaded, rolled back from the shipped {shipped}: nothing "
                           f"imported; `flask divisions import --revision {shipped}` loads the shipped list again")
            click.echo(json.dumps({"revision": latest.name, "imported": False}) if as_json else message)
            return
    path = file or str(service.DEFAULT_FILE)
    revision = revision or (service.DEFAULT_REVISION if file is None else None)
    if not revision:
        raise click.UsageError("--revision is required with a FILE")
    try:
        with open(path, "rb") as handle:
            report = service.import_revision(handle.read(), revision, actor="cli", allow_older=allow_older)
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        click.echo(json.dumps(error.to_dict(), ensure_ascii=False) if as_json else f"refused: {error.message}",
                   err=True)
        raise SystemExit(1) from None
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False))
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
