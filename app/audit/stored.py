"""Audit records read as the database holds them, for every reader of the log: `verify`, the CSV export, the
console's audit page and dashboard, `flask audit list`. A record edited in the database (its append-only triggers
removed first) into what no record written here holds (a detail that is not JSON, a time that is no time, text
for its number) is reported, exported or listed as stored, and the reading goes on; the models' own decoding ended
each at the first such record (the audit page answered 500), where a reader looks once verify reports one.

SQLite keeps any value in any column: each column is read as stored, then decoded here as the models decode it.
PostgreSQL's typed columns refuse most of that, but keep times outside Python's years 1 to 9999 (`infinity`, a
date BC), which its driver refuses to read, failing the whole result: such a time is read as NULL, beside the
database's own text of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, String, and_, case, cast, func, select, type_coerce
from sqlalchemy.engine import Dialect
from sqlalchemy.types import NullType

from app.audit.models import AuditRecord
from app.extensions import db

TABLE = AuditRecord.__table__
TEXTS = ("actor", "action", "target", "remote_addr", "prev_hash", "hash")
# PostgreSQL: the times its driver reads in any session time zone (a day inside Python's years 1 to 9999).
EARLIEST, LATEST = datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 30, tzinfo=UTC)
# SQLite: a time as written here (2025-01-01 08:00:00.000000), which compares with another as text does.
TIME_AS_WRITTEN = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-9][0-9]:[0-9][0-9]:[0-9][0-9]*"


class Unreadable(str):
    """A stored value no record holds, as text: a blob as SQLite writes one (x'00')."""

    @classmethod
    def of(cls, value: Any) -> Unreadable:
        if isinstance(value, bytes):
            return cls(f"x'{value.hex()}'")
        if isinstance(value, str):
            return cls(value)
        return cls("" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True, default=str))


@dataclass(frozen=True)
class Stored:
    """One row, each column decoded or, where it could not be, `Unreadable`."""

    seq: int | Unreadable
    at: datetime | Unreadable
    actor: str
    action: str
    target: str
    detail: Any
    remote_addr: str
    prev_hash: str
    hash: str

    @property
    def unreadable(self) -> list[str]:
        """The columns that hold what no record does, in the table's order."""
        return [field.name for field in fields(self) if isinstance(getattr(self, field.name), Unreadable)]

    @property
    def readable(self) -> bool:
        """Whether it holds what a record does, so its hash can be recomputed."""
        return not self.unreadable


class StoredRecords:
    """What to select of `audit_records` on `dialect`'s database, and how to decode each row of it."""

    def __init__(self, dialect: Dialect):
        self.as_stored = dialect.name != "postgresql"
        if self.as_stored:  # SQLite: nothing decoded on the way; `decode` does it, one column at a time
            self.columns = [type_coerce(TABLE.c[name], NullType()).label(name)
                            for name in ("seq", "at", "detail", *TEXTS)]
            self._at = TABLE.c.at.type.dialect_impl(dialect).result_processor(dialect, None)
            self._detail = TABLE.c.detail.type.dialect_impl(dialect).result_processor(dialect, None)
        else:
            at = TABLE.c.at
            self.columns = [TABLE.c.seq, case((at.between(EARLIEST, LATEST), at)).label("at"),
                            cast(at, String).label("at_text"), TABLE.c.detail, *(TABLE.c[name] for name in TEXTS)]

    def decode(self, row) -> Stored:
        seq = row.seq if type(row.seq) is int else Unreadable.of(row.seq)
        texts = {name: value if isinstance(value := getattr(row, name), str) else Unreadable.of(value)
                 for name in TEXTS}
        if not self.as_stored:  # decoded by the driver and the column types already
            return Stored(seq=seq, at=Unreadable.of(row.at_text) if row.at is None else row.at, detail=row.detail,
                          **texts)
        try:
            at = self._at(row.at) if self._at else row.at
            at = at if isinstance(at, datetime) else Unreadable.of(row.at)
        except (ValueError, TypeError, OverflowError):  # no time, or none Python can hold once in UTC
            at = Unreadable.of(row.at)
        try:
            detail = self._detail(row.detail) if self._detail else row.detail
        except (ValueError, TypeError, RecursionError):  # not JSON, a number, nested past any record's depth
            detail = Unreadable.of(row.detail)
        return Stored(seq=seq, at=at, detail=detail, **texts)


def newest(limit: int) -> Iterator[Stored]:
    """The newest `limit` records, as stored (SQLite lists a number edited into text first: it sorts text last),
    read as they are asked for: `flask audit list --limit 1000000` held every record before printing the first."""
    records = StoredRecords(db.session.get_bind().dialect)
    query = select(*records.columns).order_by(TABLE.c.seq.desc()).limit(limit)
    with db.session.execute(query, execution_options={"yield_per": 500}) as rows:
        for row in rows:
            yield records.decode(row)


def holds_a_time(dialect: Dialect) -> ColumnElement[bool]:
    """Where a record's time is one `StoredRecords` reads (near enough on SQLite: stored as written here), so
    that comparing it with a day's bounds means what it says. A time that is no time is on no day: without this,
    the database's own order put SQLite's text after every time and its numbers before, PostgreSQL's infinity
    after."""
    if dialect.name == "postgresql":
        return TABLE.c.at.between(EARLIEST, LATEST)
    return and_(func.typeof(TABLE.c.at) == "text", type_coerce(TABLE.c.at, String).op("GLOB")(TIME_AS_WRITTEN))


def holds_a_number(dialect: Dialect) -> ColumnElement[bool]:
    """Where a record's number is a whole number, as the chain numbers every record it writes: what the next record
    follows, `flask audit anchor` prints and the export is bounded by. A number edited into text or a fraction
    (SQLite) or NULL (PostgreSQL, once its NOT NULL is dropped) is none: the database's own order put SQLite's text
    after every number and PostgreSQL's NULL first, newest first, and the next write failed on it."""
    if dialect.name == "postgresql":  # an integer column: only NULL is no whole number
        return TABLE.c.seq.is_not(None)
    return func.typeof(TABLE.c.seq) == "integer"
