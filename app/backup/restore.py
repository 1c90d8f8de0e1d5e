"""`flask db-restore FILE`: a backup put in place of the configured SQLite database (operations: Backup).

Copying the file over `mpim.db` by hand replaced the data before any check, and `flask audit verify` afterwards
passed a damaged page outside the audit table, a database of a newer schema, an empty or a foreign one. Here the
backup is first copied beside the database and checked as `flask db-backup` checks its copy (SQLite's integrity
check, an Alembic revision), and its revision must be one this code knows. The database in place is never
deleted: it is renamed, with its -wal and -shm files, to `<name>.before-restore-<UTC time>`.

"Another process holds the database" is told by SQLite itself: an exclusive lock (locking_mode=EXCLUSIVE, then
BEGIN EXCLUSIVE) is refused while any other connection has the WAL database open, idle or not: a gunicorn worker
that has served a request, the scheduler, another `flask` command. A process that has not opened it yet is not
seen, so the services are stopped first all the same. PostgreSQL is restored with pg_restore.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from sqlalchemy import bindparam, inspect, select, text, update
from sqlalchemy.engine import URL

from app.audit import service as audit
from app.auth.console_sessions import RESTORE_END_REASON
from app.backup import next_steps
from app.backup.next_steps import NextSteps
from app.backup.service import RESTORING, BackupRefused, checked_copy, sqlite_file
from app.database import UTCDateTime, schema_revisions, utcnow
from app.errors import NotFound
from app.extensions import db
from app.pki import agreement
from app.pki import authority as ca
from app.pki import service as pki
from app.pki.models import INTERMEDIATE_CRL

LOCK_WAIT_SECONDS = 1.0  # another connection's open handle does not go away by waiting; a commit in progress does


@dataclass(frozen=True)
class Newest:
    """A database's newest audit record: what a restore keeps (the backup's) and loses (the replaced one's)."""

    seq: int | None
    at: str | None

    def as_dict(self) -> dict:
        return {"seq": self.seq, "at": self.at}

    def __str__(self) -> str:
        return "no audit record" if self.seq is None else f"audit record #{self.seq} at {self.at} UTC"


@dataclass(frozen=True)
class Plan:
    """A checked copy of `backup` beside `database`, not yet in place."""

    backup: Path
    database: Path
    temporary: Path
    revision: str
    schema: str  # "current", or "behind": `flask db upgrade` next
    backup_newest: Newest
    replaced_newest: Newest | None  # None: there is no database file to replace
    next_steps: NextSteps | None  # None: likewise


@dataclass(frozen=True)
class Restored:
    plan: Plan
    kept_as: Path | None
    certificates: Path | None = None  # where the certificates to record were written (`_write_certificates`)


@contextmanager
def prepared(url: URL, backup: Path) -> Iterator[Plan]:
    """A checked copy of `backup` beside the configured database, refused unless it is a sound registry database
    of a schema this code knows; removed on leaving unless `apply` put it in place."""
    database = sqlite_file(url, RESTORING)  # it need not exist: a restore onto a new host
    backup = backup.absolute()
    if not backup.is_file():
        raise NotFound(f"The backup {backup} does not exist or is not a file.", code="backup_missing")
    if not database.parent.is_dir():
        raise NotFound(f"The directory {database.parent} does not exist.", code="database_directory_missing")
    if database.exists() and os.path.samefile(backup, database):
        raise BackupRefused(f"{backup} is the database itself.", code="backup_is_database")
    replaced = _newest(database) if database.exists() else None
    _refuse_if_in_use(database)
    descriptor, name = tempfile.mkstemp(prefix=f".{database.name}.restore.", suffix=".tmp", dir=database.parent)
    os.close(descriptor)
    temporary = Path(name)
    try:
        revision = checked_copy(backup, temporary)
        schema = _schema_of(backup, revision)
        _refuse_if_another_ca(backup, temporary)
        yield Plan(backup=backup, database=database, temporary=temporary, revision=revision, schema=schema,
                   backup_newest=_newest(temporary), replaced_newest=replaced,
                   next_steps=next_steps.read(database, temporary) if database.exists() else None)
    finally:
        temporary.unlink(missing_ok=True)


def apply(plan: Plan) -> Restored:
    """Put the checked copy in place, the database it replaces kept aside; audited in the restored database (the
    caller commits). Refused while another process has the database open."""
    db.engine.dispose()  # this process's own connections are not "another process"
    kept_as = None
    with _exclusive(plan.database) as holder:
        if holder is not None:
            holder.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # what the -wal holds goes into the file kept aside
        if plan.database.exists():
            kept_as = _aside(plan.database)
            for suffix in ("", "-wal", "-shm"):
                current = Path(f"{plan.database}{suffix}")
                if current.exists():
                    os.rename(current, f"{kept_as}{suffix}")
                    os.chmod(f"{kept_as}{suffix}", stat.S_IMODE(os.stat(f"{kept_as}{suffix}").st_mode) & 0o700)
        with open(plan.temporary, "rb") as handle:
            os.fsync(handle.fileno())
        if kept_as is not None:
            _same_owner_and_mode(kept_as, plan.temporary)
        os.replace(plan.temporary, plan.database)
        _sync_directory(plan.database.parent)
    db.engine.dispose()
    ended = _end_console_sessions()
    revoked = _revoke_spent_tokens(plan.next_steps.lost.spent_tokens if plan.next_steps else ())
    certificates = _write_certificates(plan.next_steps.lost.pems if plan.next_steps else (), kept_as)
    audit.record("database.restore", str(plan.database), {
        "backup": str(plan.backup), "revision": plan.revision, "kept_as": str(kept_as) if kept_as else None,
        "backup_newest": plan.backup_newest.as_dict(),
        "replaced_newest": plan.replaced_newest.as_dict() if plan.replaced_newest else None,
        "sessions_ended": ended, "tokens_revoked": revoked}, actor="cli")
    return Restored(plan=plan, kept_as=kept_as, certificates=certificates)


def _write_certificates(pems: tuple[tuple[str, str], ...], kept_as: Path | None) -> Path | None:
    """The certificates issued since the backup, each as `<serial>.pem` in `<kept file>.certificates/`, for the
    printed `flask ca record` commands: the replaced database holds them all, where a node's tls/node.pem holds its
    newest only (two renewals since: the first command recorded the wrong one), and a node gone holds none."""
    if not pems or kept_as is None:
        return None
    directory = Path(f"{kept_as}.certificates")
    directory.mkdir(mode=0o700)
    for serial, pem in pems:
        (directory / f"{serial}.pem").write_text(pem, encoding="ascii")
    return directory


def _end_console_sessions() -> list[int]:
    """End every console session the backup holds live: one signed out, ended by an administrator or of an account
    disabled since the backup was alive again. Their ids, for the restore's audit record. None before migration
    0008, which ended them all by dropping the table."""
    if not inspect(db.engine).has_table("console_sessions"):
        return []
    ended = list(db.session.scalars(text("SELECT id FROM console_sessions WHERE ended_at IS NULL ORDER BY id")))
    # Bound as the column's type: the time is stored as every other one of the column (naive UTC text on SQLite).
    db.session.execute(text("UPDATE console_sessions SET ended_at = :now, end_reason = :reason "
                            "WHERE ended_at IS NULL").bindparams(bindparam("now", type_=UTCDateTime)),
                       {"now": utcnow(), "reason": RESTORE_END_REASON})
    return ended


def _revoke_spent_tokens(token_ids: tuple[int, ...]) -> list[int]:
    """Revoke the enrollment tokens the replaced database held as revoked or used, live in the backup: a token
    revoked since (it leaked, say) was usable again, and one used since could be used twice. Their ids, for the
    restore's audit record."""
    if not token_ids:
        return []
    from app.admission.models import EnrollmentToken

    live = (EnrollmentToken.id.in_(token_ids), EnrollmentToken.revoked_at.is_(None), EnrollmentToken.used_at.is_(None))
    revoked = list(db.session.scalars(select(EnrollmentToken.id).where(*live).order_by(EnrollmentToken.id)))
    db.session.execute(update(EnrollmentToken).where(EnrollmentToken.id.in_(revoked))
                       .values(revoked_at=utcnow().replace(microsecond=0), revoked_by="database restore")
                       .execution_options(synchronize_session=False))
    return revoked


def _refuse_if_another_ca(backup: Path, copy: Path) -> None:
    """Refused when the CA directory holds a CA the backup is not the database of (it holds no CRL, or one another
    issuing CA signed): /healthz said database_mismatch only once it was in place. A host with no CA directory
    yet takes it (the CA directory is restored beside it)."""
    directory = pki.ca_directory()
    if not ca.is_initialised(directory):
        return
    try:
        intermediate = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
    except (OSError, ValueError):  # /healthz names an unreadable CA file; the backup is not what is wrong
        return
    try:
        connection = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
        try:
            row = connection.execute(f"SELECT der FROM crl_state WHERE id = {INTERMEDIATE_CRL}").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError:  # no such table: a database from before the CA
        row = None
    reason = agreement.issuer_reason(intermediate, row[0] if row else None)
    if reason is not None:
        raise BackupRefused(f"{backup} is not the database of the CA in {directory}: {reason}",
                            code="backup_of_another_ca")


def _schema_of(backup: Path, revision: str) -> str:
    heads, known = schema_revisions()
    recorded = set(revision.split(","))
    if recorded == heads:
        return "current"
    if recorded <= known:
        return "behind"
    raise BackupRefused(f"{backup} has schema revision {revision}, which this version of the registry does not "
                        "know (a newer release made it, or another application): restore it with the release that "
                        "made it.", code="backup_schema_unknown")


def _newest(path: Path) -> Newest:
    """The newest audit record `path` holds, as the chain numbers them (a whole number, `holds_a_number`: SQLite
    sorts a number edited into text above every number); none for a database without one or that cannot be read."""
    try:
        connection = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
        try:
            row = connection.execute("SELECT seq, at FROM audit_records WHERE typeof(seq) = 'integer' "
                                     "ORDER BY seq DESC LIMIT 1").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError:  # not a database, damaged, no audit table
        return Newest(None, None)
    return Newest(row[0], str(row[1])) if row else Newest(None, None)


def _refuse_if_in_use(database: Path) -> None:
    with _exclusive(database):
        pass


@contextmanager
def _exclusive(database: Path) -> Iterator[sqlite3.Connection | None]:
    """The database locked against every other connection while the block runs; None when there is no file, or
    one SQLite cannot read (a damaged database is what a restore replaces, and no other process can use it)."""
    if not database.exists():
        yield None
        return
    holder = sqlite3.connect(database, timeout=LOCK_WAIT_SECONDS, isolation_level=None)
    try:
        try:
            holder.execute("PRAGMA locking_mode=EXCLUSIVE")
            holder.execute("BEGIN EXCLUSIVE")
            holder.execute("COMMIT")  # in exclusive locking mode the lock stays until the connection closes
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise BackupRefused(f"Another process has {database} open (gunicorn, the scheduler, another flask "
                                    "command): stop the services, then restore.", code="database_in_use") from None
            holder.close()
            holder = None
        except sqlite3.DatabaseError:
            holder.close()
            holder = None
        yield holder
    finally:
        if holder is not None:
            holder.close()


def _aside(database: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    kept = database.with_name(f"{database.name}.before-restore-{stamp}")
    number = 1
    while kept.exists():  # two restores in one second: never replace the first one's
        number += 1
        kept = database.with_name(f"{database.name}.before-restore-{stamp}-{number}")
    return kept


def _same_owner_and_mode(model: Path, path: Path) -> None:
    """The restored file as the service knew the one it replaces (a restore run as root, for a service user), but
    never readable by others: a release before made it 0644 under the usual umask (`database.owner_only`)."""
    status = model.stat()
    os.chmod(path, status.st_mode & 0o700)
    if os.geteuid() == 0:
        os.chown(path, status.st_uid, status.st_gid)


def _sync_directory(directory: Path) -> None:
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)
