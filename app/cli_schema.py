"""Every `flask` command of the registry runs only on the schema its code was written for.

Against a database `flask db upgrade` has not created, each command ended in an 80-95 line SQLAlchemy traceback
("no such table: users"), some after part of their work (`flask ca init` had written the CA's files); against one
a migration behind, in a traceback on a missing column. One check before each command answers in one line, as
/healthz and the ministry admins' banner tell the same state (`schema_state`); a database a newer release has
migrated already (a rolling upgrade) is fine.

Not checked: `flask db ...`, which makes the schema, `flask db-backup`, which is run before `flask db upgrade` (it
checks the copy has a revision), `flask db-restore`, which replaces a database in any state (it checks the
backup), and Flask's own `run`, `shell` and `routes`, which are not in
`app.cli` and read no table themselves (`shell` is where an operator looks into a database in any state).
`--help` exits before any command runs.
"""

from __future__ import annotations

import functools
import json

import click
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from app.database import schema_state
from app.extensions import db

REFUSALS = {
    "unknown": ("not_migrated", "The database is not migrated: run flask db upgrade first."),
    "behind": ("schema_behind",
               "The database schema is older than this version of the registry: run flask db upgrade first."),
}


def schema_refusal() -> tuple[str, str] | None:
    """(code, message) unless the database is reachable and its schema is current (or newer)."""
    try:
        with db.engine.connect() as connection:  # not the command's session: its transaction stays its own
            state = schema_state(connection)
    except SQLAlchemyError as error:  # a PostgreSQL server down, a SQLite file in a missing directory
        return "database_unavailable", f"The database cannot be opened: {str(error).splitlines()[0]}"
    return REFUSALS.get(state)


def refuse_unless_migrated(as_json: bool = False) -> None:
    """Exit 1 with one line, click's or with --json the error object every other refusal prints, unless the
    database is reachable and its schema is current (or newer)."""
    refusal = schema_refusal()
    if refusal is None:
        return
    code, message = refusal
    if as_json:
        click.echo(json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False), err=True)
        raise SystemExit(1)
    raise click.ClickException(message)


def _checked(callback):
    @functools.wraps(callback)
    def run(*args, **kwargs):
        refuse_unless_migrated(bool(kwargs.get("as_json")))
        return callback(*args, **kwargs)

    checked = with_appcontext(run)  # the check needs the app; the command's callback finds it pushed
    checked.checks_schema = True
    return checked


def require_schema(group: click.Group, exempt: tuple[click.Command, ...]) -> None:
    """Wrap each command of `group` and of its subgroups, but `exempt` ones, once: the command objects are
    module-level, shared by every app `create_app` makes. Each command, not each group: a group's callback
    runs before its subcommand's options are read, so `flask users create --help` would have been refused."""
    for command in group.commands.values():
        if command in exempt:
            continue
        if isinstance(command, click.Group):
            require_schema(command, exempt)
        elif command.callback is not None and not getattr(command.callback, "checks_schema", False):
            command.callback = _checked(command.callback)
