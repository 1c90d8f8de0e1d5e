"""A copy of the configured SQLite database, checked before it is kept.

The copy is read from the file the registry is configured with (DATABASE_URL, else MPIM_INSTANCE_PATH), opened
read-only so that a missing file is refused rather than created, through SQLite's online backup (a plain copy
can catch a write half-done, or miss what is still in the -wal file). It is written beside the target as a
temporary file (0600: it holds password hashes and the audit log), checked (integrity, an Alembic revision) and
only then, under the database's write lock (the backup's audit record needs it), renamed into place. PostgreSQL
is backed up with pg_dump.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL
from sqlalchemy.exc import OperationalError

from app.database import sqlite_write_lock
from app.errors import Conflict, DomainError, NotFound


class BackupRefused(DomainError):
    code = "backup_refused"
    status = 400


@dataclass(frozen=True)
class Backup:
    source: Path
    target: Path
    size: int
    revision: str


@dataclass(frozen=True)
class SqliteUse:
    """What a command does with the SQLite file, for its refusals: the words, and what to use on PostgreSQL."""

    does: str  # "copies"
    nothing_to: str  # "back up"
    postgres_advice: str  # "back it up with pg_dump -Fc"
    postgres_code: str


BACKING_UP = SqliteUse("copies", "back up", "back it up with pg_dump -Fc", "use_pg_dump")
RESTORING = SqliteUse("restores", "restore to", "restore it with pg_restore", "use_pg_restore")


def sqlite_file(url: URL, use: SqliteUse) -> Path:
    """The SQLite file `url` names (it need not exist); refused, in `use`'s words, for another database."""
    backend = url.get_backend_name()
    if backend == "postgresql":
        raise BackupRefused(f"The database is PostgreSQL: {use.postgres_advice} (docs/operations.md, Backup); "
                            f"this command {use.does} the embedded SQLite database.", code=use.postgres_code)
    if backend != "sqlite":
        raise BackupRefused(f"The database is {backend}: this command {use.does} the embedded SQLite database only.",
                            code="not_sqlite")
    if not url.database or url.database == ":memory:":
        raise BackupRefused(f"The database is in memory: there is no file to {use.nothing_to}.", code="not_sqlite")
    return Path(url.database).absolute()


def sqlite_source(url: URL) -> Path:
    """The SQLite file `url` names; refused for another database or a file that does not exist."""
    source = sqlite_file(url, BACKING_UP)
    if not source.is_file():
        raise NotFound(f"The configured database {source} does not exist: nothing to back up (are DATABASE_URL "
                       "and MPIM_INSTANCE_PATH those of the server?).", code="database_missing")
    return source


def back_up(url: URL, target: Path, *, overwrite: bool = False) -> Backup:
    """Copy the database `url` names to `target`, refusing to replace a file there unless `overwrite`."""
    source = sqlite_source(url)
    target = target.absolute()
    if target.is_dir():
        raise BackupRefused(f"{target} is a directory: name the backup file.", code="backup_is_directory")
    if not target.parent.is_dir():
        raise NotFound(f"The directory {target.parent} does not exist.", code="backup_directory_missing")
    if target.exists() and os.path.samefile(target, source):
        raise BackupRefused(f"{target} is the database itself.", code="backup_is_database")
    if target.exists() and not overwrite:
        raise _exists(target)
    descriptor, temporary_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(descriptor)  # mkstemp made it 0600; SQLite writes into it as into an empty database
    temporary = Path(temporary_name)
    try:
        revision = checked_copy(source, temporary)
        _take_write_lock(source)
        _keep(temporary, target, overwrite=overwrite)
    finally:
        temporary.unlink(missing_ok=True)
    return Backup(source=source, target=target, size=target.stat().st_size, revision=revision)


def checked_copy(source: Path, temporary: Path) -> str:
    """Online backup of `source` into `temporary`, left in rollback-journal mode (one self-contained file, where
    the live database is in WAL mode); the copy's Alembic revision, once the copy has been checked."""
    try:
        reader = sqlite3.connect(f"{source.as_uri()}?mode=ro", uri=True)
        writer = sqlite3.connect(temporary)
        try:
            reader.backup(writer)
            writer.execute("PRAGMA journal_mode=DELETE")
            integrity = [row[0] for row in writer.execute("PRAGMA integrity_check")]
            try:
                revisions = [row[0] for row in writer.execute("SELECT version_num FROM alembic_version")]
            except sqlite3.OperationalError:  # no such table
                revisions = []
        finally:
            writer.close()
            reader.close()
    except sqlite3.DatabaseError as error:  # not a database, unreadable, locked past the busy timeout
        if str(error) == "file is not a database":
            raise BackupRefused(_not_sqlite(source), code="not_a_registry_database") from None
        raise BackupRefused(f"{source} could not be copied: {error}", code="backup_failed") from None
    if integrity != ["ok"]:
        raise BackupRefused(f"The copy of {source} fails SQLite's integrity check: {'; '.join(integrity[:5])}",
                            code="backup_corrupt")
    if not revisions:
        raise BackupRefused(f"{source} is not a registry database (no Alembic revision: never migrated?).",
                            code="not_a_registry_database")
    return ",".join(sorted(revisions))


def _not_sqlite(source: Path) -> str:
    """SQLite's "file is not a database" said nothing of what it is: most often a PostgreSQL dump."""
    try:
        with open(source, "rb") as handle:
            postgresql = handle.read(5) == b"PGDMP"
    except OSError:
        postgresql = False
    if postgresql:
        return (f"{source} is a PostgreSQL dump (pg_dump -Fc), not an SQLite database: restore it into PostgreSQL "
                "with pg_restore (docs/operations.md, Backup).")
    return f"{source} is not an SQLite database (nor a registry backup)."


def _take_write_lock(source: Path) -> None:
    """The write lock the backup's audit record needs, taken before the copy is kept and held until the caller
    commits: while another process holds it past the busy timeout (a long migration or job), the copy was kept,
    its record then failed with a traceback, and the next run with the same name found `backup_exists`."""
    try:
        sqlite_write_lock()
    except OperationalError as error:
        if "locked" not in str(error) and "busy" not in str(error):
            raise
        raise BackupRefused(f"Another process holds {source}'s write lock (a migration, a long job): no backup "
                            "was kept; try again.", code="database_busy") from None


def _exists(target: Path) -> Conflict:
    return Conflict(f"{target} exists: give --overwrite to replace it, or another name.", code="backup_exists")


def _keep(temporary: Path, target: Path, *, overwrite: bool) -> None:
    """Put the checked copy in place in one step, durably; without `overwrite`, never over a file that appeared
    meanwhile."""
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    if overwrite:
        os.replace(temporary, target)
    else:
        try:
            os.link(temporary, target)  # fails when the target exists, where a rename would replace it
        except FileExistsError:
            raise _exists(target) from None
        except OSError:  # a file system without hard links
            if target.exists():
                raise _exists(target) from None
            os.replace(temporary, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
