"""Record and verify audit entries.

Every state-changing action calls `record()` inside the same transaction as the change, so the
entry exists exactly when the change does. Each entry carries the SHA-256 of the previous entry,
linked at commit, so entries are in commit order and `at` is the commit's time; `verify()`
recomputes the chain and finds edited, deleted or reordered records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

from flask import has_request_context, request
from flask_login import current_user
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import and_, event, func, or_, select, text
from sqlalchemy.orm import Session, SessionTransaction

from app.audit.models import AuditRecord
from app.audit.stored import StoredRecords, Unreadable, holds_a_number
from app.database import sqlite_write_lock, utcnow
from app.extensions import db

GENESIS = "0" * 64
SYSTEM_ACTOR = "system"
# Any constant works; it only has to be the same in every process.
AUDIT_LOCK_KEY = 0x4D50494D
PAGE_SIZE = 5000  # records `verify` reads a query


INSERT_ENTRY = AuditRecord.__table__.insert()


def record_digest(prev_hash: str, seq: int, at: datetime, actor: str, action: str, target: str,
                  detail: dict, remote_addr: str) -> str:
    payload = json.dumps(
        [prev_hash, seq, at.isoformat(timespec="microseconds"), actor, action, target, detail, remote_addr],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Entry(NamedTuple):
    seq: int
    hash: str


def last_entry(session: Session) -> Entry | None:
    """The newest record numbered as the chain numbers (`holds_a_number`): its seq and hash, or None in an empty log.
    The next record follows it, numbered above every such record; one whose number was edited stays where it is,
    for `verify` to report. A hash edited into what is no text (a blob, NULL) is read as `verify` reads it
    (`Unreadable`): the next record follows that, and the write goes on, where JSON refused a blob and NOT NULL a
    NULL prev_hash, failing every audited write."""
    table = AuditRecord.__table__
    row = session.execute(select(table.c.seq, table.c.hash).where(holds_a_number(session.get_bind().dialect))
                          .order_by(table.c.seq.desc()).limit(1)).first()
    if row is None:
        return None
    return Entry(row.seq, row.hash if isinstance(row.hash, str) else str(Unreadable.of(row.hash)))


def _request_actor() -> tuple[str, str]:
    acting = db.session.info.get(ACTING)
    if not has_request_context():
        return acting or SYSTEM_ACTOR, ""
    actor = acting or (current_user.username if getattr(current_user, "is_authenticated", False) else "anonymous")
    return actor, request.remote_addr or ""


PENDING = "mpim_audit_pending"  # session.info key: entries recorded, chained at commit
ACTING = "mpim_audit_acting"  # session.info key: the user a CLI command acts as, until its transaction ends
SAVEPOINT_MARKS = "mpim_audit_marks"  # session.info key: pending count when each savepoint began


def act_as(username: str) -> None:
    """Records of this transaction name `username` where they name no actor themselves: what a hook writes for the
    action (a certificate revoked with its node, a route version), as a console request names its user for them.
    For a CLI command (no request) and a node's own request (no console user: "node:ID")."""
    db.session.info[ACTING] = username


def record(action: str, target: str = "", detail: dict | None = None, *, actor: str | None = None,
           remote_addr: str | None = None) -> None:
    """Add one entry to the session's transaction; the caller's commit makes it durable with the change.

    The entry joins the chain at commit (`_chain_pending`), not here: taking the chain's lock here
    held it from the first entry to commit, and a transaction that recorded and then waited for
    another lock (a certificate's, a node's) could wait in a circle with one that held that lock
    and was about to record. At commit, every other lock is already held."""
    request_actor, request_addr = _request_actor()
    entry = {"actor": actor or request_actor, "action": action, "target": str(target)[:200],
             "detail": json.loads(json.dumps(detail or {}, ensure_ascii=False, default=str)),
             "remote_addr": request_addr if remote_addr is None else remote_addr}
    db.session.info.setdefault(PENDING, []).append(entry)


def _lock_chain(session: Session) -> None:
    """Serialise writers so two concurrent commits never claim the same predecessor."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})
    else:
        sqlite_write_lock(session)  # pysqlite would begin only at the insert, after the read


def _chain_pending(session: Session) -> None:
    """Before commit: append the transaction's entries to the chain, as one batch, in record order.

    The session is flushed first, so the commit that follows waits on nothing while it holds the
    chain's lock (a row another transaction has locked would otherwise be waited for here).
    A plain table insert rather than ORM objects: the unit of work cost more than the rest of an
    entry (a quarter of a certificate issuance), and nothing reads entries back as objects."""
    entries = session.info.pop(PENDING, None)
    session.info.pop(SAVEPOINT_MARKS, None)
    if not entries:
        return
    session.flush()
    _lock_chain(session)
    last = last_entry(session)
    seq, prev_hash = (last.seq, last.hash) if last else (0, GENESIS)
    at = utcnow()
    rows = []
    for entry in entries:
        seq += 1
        digest = record_digest(prev_hash, seq, at, entry["actor"], entry["action"], entry["target"],
                               entry["detail"], entry["remote_addr"])
        rows.append({**entry, "seq": seq, "at": at, "prev_hash": prev_hash, "hash": digest})
        prev_hash = digest
    session.execute(INSERT_ENTRY, rows)


def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.setdefault(SAVEPOINT_MARKS, {})[transaction] = len(session.info.get(PENDING, ()))


def _drop_rolled_back(session: Session, previous_transaction: SessionTransaction) -> None:
    """A savepoint's rollback takes the entries recorded since it began (the outermost's, all of them:
    `_forget_pending`)."""
    marks = session.info.get(SAVEPOINT_MARKS, {})
    if previous_transaction.nested and previous_transaction in marks:
        del session.info.get(PENDING, [])[marks.pop(previous_transaction):]


def _forget_pending(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit (a rollback, session.close, the end of a request);
    after a commit, `_chain_pending` has taken the entries already. The acting user goes with it either way."""
    if transaction.parent is None:
        session.info.pop(PENDING, None)
        session.info.pop(SAVEPOINT_MARKS, None)
        session.info.pop(ACTING, None)


# Flask-SQLAlchemy's session class: `db.session` is the only session `record()` writes to.
event.listen(FlaskSession, "before_commit", _chain_pending)
event.listen(FlaskSession, "after_transaction_create", _mark_savepoint)
event.listen(FlaskSession, "after_soft_rollback", _drop_rolled_back)
event.listen(FlaskSession, "after_transaction_end", _forget_pending)


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    last_seq: int = 0  # the newest record checked and its hash: the anchor to copy elsewhere
    last_hash: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(batch_size: int | None = None, anchors: Iterable[tuple[int, str]] = ()) -> VerifyReport:
    """Walk the whole chain in order; report every break with the sequence number where it is.

    The chain alone cannot tell that its newest records were cut off. `anchors` are (seq, hash) pairs
    copied elsewhere earlier (`flask audit anchor`): each must still be in the chain, unchanged. A record
    edited into what no record holds (`stored`) is reported as unreadable, and the walk goes on. Pages of
    `batch_size` records (`PAGE_SIZE` unless given) follow one another by (seq, id), so a number stored
    twice (its unique constraint dropped) is read twice and reported, wherever a page ends."""
    report = VerifyReport()
    expected: dict[int, set[str]] = {}  # every hash given for a number: one that does not match is a problem
    for seq, digest in anchors:
        expected.setdefault(seq, set()).add(digest)
    records = StoredRecords(db.session.get_bind().dialect)
    table = AuditRecord.__table__
    expected_seq, prev_hash = 1, GENESIS
    # The last (seq, id) read, seq as stored: SQLite sorts a seq edited into text after every number, and pages past
    # it. By seq alone, a page that ended at a number stored twice skipped its second row.
    after: tuple[object, int] | None = None
    # A NULL number or id (its NOT NULL constraint dropped) compares with nothing: such records are counted instead.
    placed = and_(table.c.seq.is_not(None), table.c.id.is_not(None))
    page = (select(*records.columns, table.c.id).where(placed).order_by(table.c.seq, table.c.id)
            .limit(batch_size or PAGE_SIZE))
    while True:
        # (seq, id) > after, spelled so that the index on seq finds where the page begins
        rows = db.session.execute(page if after is None else page.where(
            table.c.seq >= after[0], or_(table.c.seq > after[0], table.c.id > after[1]))).all()
        if not rows:
            break
        for row in rows:
            report.checked += 1
            after = (row.seq, row.id)
            stored = records.decode(row)
            if isinstance(stored.seq, Unreadable):  # no place in the chain to check it at
                report.problems.append(f"record {stored.seq}: unreadable (edited)")
                continue
            if stored.seq < 1:  # none of the chain's, yet in the log
                report.problems.append(f"record {stored.seq}: numbered before the first record (inserted or "
                                       "renumbered)")
                continue
            if stored.seq < expected_seq:  # in seq order, only a number read already
                report.problems.append(f"record {stored.seq}: appears twice (inserted)")
                continue
            if stored.seq != expected_seq:
                report.problems.append(f"records {expected_seq}..{stored.seq - 1} are missing (deleted)")
            if stored.prev_hash != prev_hash:
                report.problems.append(f"record {stored.seq}: does not follow the record before it")
            if not stored.readable:
                report.problems.append(f"record {stored.seq}: unreadable (edited)")
            elif record_digest(stored.prev_hash, stored.seq, stored.at, stored.actor, stored.action, stored.target,
                               stored.detail, stored.remote_addr) != stored.hash:
                report.problems.append(f"record {stored.seq}: content does not match its hash (edited)")
            if stored.seq in expected and expected.pop(stored.seq) != {stored.hash}:
                report.problems.append(f"record {stored.seq}: is not the record anchored with that number "
                                       "(replaced)")
            expected_seq, prev_hash = stored.seq + 1, stored.hash
            report.last_seq, report.last_hash = stored.seq, stored.hash
    numberless = db.session.scalar(select(func.count()).select_from(table).where(
        or_(table.c.seq.is_(None), table.c.id.is_(None))))
    if numberless:
        report.problems.append(f"records with no number: {numberless} (inserted or edited)")
    for seq in sorted(expected):
        report.problems.append(f"record {seq}: anchored, but the chain ends at {report.last_seq} (cut off)"
                               if seq > report.last_seq else f"record {seq}: anchored, but missing (deleted)")
    return report
