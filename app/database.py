"""Column types and query helpers shared by every feature's models."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from math import ceil
from typing import Any

from sqlalchemy import DateTime, Select, any_, bindparam, event, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.orm import Session
from sqlalchemy.types import TypeDecorator

from app.extensions import db


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Aware UTC in Python, whatever the database keeps (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class Page:
    """One page of a list: what every console table and paginated API answer shares."""

    items: list[Any]
    page: int
    per_page: int
    total: int

    @property
    def pages(self) -> int:
        return max(1, ceil(self.total / self.per_page))

    @property
    def has_prev(self) -> bool:
        return self.page > 1

    @property
    def has_next(self) -> bool:
        return self.page < self.pages


def get_by_number(model, number: int):
    """The row whose integer key is `number`, taken from an address, or None. A number past the column's integer
    (PostgreSQL's ends at 2**31 - 1, SQLite's at 2**63 - 1) names no row: PostgreSQL refuses to compare it."""
    return db.session.get(model, number) if 0 < number < 2**31 else None


def paginate(query: Select, page: int, per_page: int, *, count: bool = True,
             decode: Callable[[Row], Any] | None = None) -> Page:
    """Offset pagination with a separate COUNT; callers keep list queries index-friendly. The items are the
    query's first column (a model), or, given `decode`, what it makes of each row."""
    page = max(1, page)
    total = db.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) if count else 0
    if count:  # a page past the end (an old link) shows the last one, and of an empty list the first
        page = min(page, max(1, -(-total // per_page)))
    result = db.session.execute(query.limit(per_page).offset((page - 1) * per_page))
    items = list(result.scalars()) if decode is None else [decode(row) for row in result]
    return Page(items=items, page=page, per_page=per_page, total=total or 0)


def among(column, values) -> Any:
    """`column IN values`, for lists as long as a health round's (every active node). PostgreSQL takes the list
    as one array (`= ANY`): as 10,000 bound parameters, psycopg parsed them out of the statement's text at every
    run (about 0.2 s a query at 10,000 nodes)."""
    if db.session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


# Namespace of `serialise`'s two-key advisory locks; PostgreSQL keeps two-key and one-key locks apart,
# so these never meet the audit chain's or the routing table's one-key locks.
SERIALISE_NAMESPACE = 0x4D50  # "MP"


def serialise(*names: str) -> None:
    """Make the caller's check-then-write atomic against every other process and thread, until commit.

    A rule such as "one pending change per node" reads, then writes; two requests arriving together
    both pass the read unless they queue. PostgreSQL: a transaction-scoped advisory lock per name,
    taken in sorted order (other names proceed in parallel); callers that need several take them in
    one call, or in one order across calls (application, endpoint, key, node), so none waits on
    another in a circle. SQLite: the
    database's write lock, taken now (BEGIN IMMEDIATE) rather than at the first write, so what the
    caller reads next is current and stays so; SQLite has one writer at a time anyway."""
    connection = db.session.connection()
    if connection.dialect.name == "postgresql":
        for name in sorted(set(names)):
            key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "big", signed=True)
            connection.execute(text("SELECT pg_advisory_xact_lock(:namespace, :key)"),
                               {"namespace": SERIALISE_NAMESPACE, "key": key})
    elif connection.dialect.name == "sqlite":
        sqlite_write_lock()


def require_number_above(above: int | None, highest: int) -> None:
    """`--above N` (a routing table's version, a CRL's number after a restore): from 1 to `highest`, which stops
    short of what the column holds so that numbering can go on from there."""
    from app.errors import ValidationFailed

    if above is not None and not 1 <= above <= highest:
        raise ValidationFailed(f"above must be from 1 to {highest}, not {above}.", code="invalid_above",
                               field="above")


def sqlite_write_lock(session: Session | None = None) -> None:
    """SQLite: take the database's write lock now (BEGIN IMMEDIATE), not at the transaction's first write, so
    that what the caller reads next is current and stays so until commit. pysqlite runs the reads before the
    first write outside any transaction: two checks-then-writes both read, and the second's write then only
    queued behind the first's. A transaction that wrote already holds the lock. Nothing on other databases.
    `session` defaults to the app's."""
    connection = (session or db.session).connection()
    if connection.dialect.name == "sqlite" and not connection.connection.driver_connection.in_transaction:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def schema_revisions() -> tuple[set[str], set[str]]:
    """This code's Alembic head revisions, and every revision it knows (its migrations)."""
    from alembic.script import ScriptDirectory
    from flask import current_app

    heads = current_app.extensions.get("mpim_schema_heads")
    if heads is None:
        script = ScriptDirectory(current_app.extensions["migrate"].directory)
        heads = current_app.extensions["mpim_schema_heads"] = (set(script.get_heads()),
                                                                {rev.revision for rev in script.walk_revisions()})
    return heads


def schema_state(connection: Connection | None = None) -> str:
    """The database's Alembic revision against this code's: "current", "behind" (run `flask db
    upgrade`: pages that read new columns fail), "ahead" (a newer release migrated it; expected in
    a rolling upgrade) or "unknown" (no revision recorded). Read on `connection` when given (the
    caller ends its transaction), else in the session."""
    head, known = schema_revisions()
    try:
        recorded = set((connection or db.session).scalars(text("SELECT version_num FROM alembic_version")))
    except Exception:  # no table: never migrated
        if connection is None:
            db.session.rollback()
        return "unknown"
    if not recorded:
        return "unknown"
    if recorded == head:
        return "current"
    return "behind" if recorded <= known else "ahead"


def switch_to_wal(cursor: sqlite3.Cursor, seconds: float) -> None:
    """WAL is kept in the file once set, so only a brand-new database's first openers switch. While another
    opener writes the file's first page (still in rollback-journal mode, under its write lock), SQLite refuses
    the switch at once rather than waiting out the busy timeout: two processes opening a new reference-node
    database together failed about once in 270 with "database is locked". Tried again for `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def owner_only(cursor: sqlite3.Cursor) -> None:
    """The database file, and its -wal and -shm, readable by the service's user only: it holds password and token
    hashes and the audit log, and SQLite creates it as the umask allows (0644 under the usual 022). Before the
    switch to WAL, which creates -wal and -shm as the file is. Nothing for an in-memory database; a file of
    another user's (a root shell's `flask` on the service's database) is left as its owner made it."""
    path = next((row[2] for row in cursor.execute("PRAGMA database_list") if row[1] == "main"), "")
    if not path:
        return
    for name in (path, f"{path}-wal", f"{path}-shm"):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
            if mode & 0o077:
                os.chmod(name, mode & ~0o077)
        except (FileNotFoundError, PermissionError):
            continue


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """SQLite: WAL lets the console's readers work while the scheduler writes, and
    synchronous=NORMAL is durable across application crashes (WAL's documented pairing)."""
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        cursor = dbapi_connection.cursor()
        owner_only(cursor)
        switch_to_wal(cursor, 10)
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()
