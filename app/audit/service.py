"""Record and verify audit entries.

Every state-changing action calls `record()` inside the same transaction as the change, so the
entry exists exactly when the change does. Each entry carries the SHA-256 of the previous entry;
`verify()` recomputes the chain and finds edited, deleted or reordered records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from flask import has_request_context, request
from flask_login import current_user
from sqlalchemy import select, text

from app.audit.models import AuditRecord
from app.database import utcnow
from app.extensions import db

GENESIS = "0" * 64
SYSTEM_ACTOR = "system"
# Any constant works; it only has to be the same in every process.
AUDIT_LOCK_KEY = 0x4D50494D


LAST_ENTRY = select(AuditRecord.__table__.c.seq, AuditRecord.__table__.c.hash).order_by(
    AuditRecord.__table__.c.seq.desc()).limit(1)
INSERT_ENTRY = AuditRecord.__table__.insert()


def record_digest(prev_hash: str, seq: int, at: datetime, actor: str, action: str, target: str,
                  detail: dict, remote_addr: str) -> str:
    payload = json.dumps(
        [prev_hash, seq, at.isoformat(timespec="microseconds"), actor, action, target, detail, remote_addr],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _request_actor() -> tuple[str, str]:
    if not has_request_context():
        return SYSTEM_ACTOR, ""
    actor = current_user.username if getattr(current_user, "is_authenticated", False) else "anonymous"
    return actor, request.remote_addr or ""


def _lock_chain() -> None:
    """Serialise writers so two concurrent records never claim the same predecessor."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": AUDIT_LOCK_KEY})


def record(action: str, target: str = "", detail: dict | None = None, *, actor: str | None = None,
           remote_addr: str | None = None) -> None:
    """Append one entry in the session's transaction; the caller's commit makes it durable with the change.

    A plain table insert rather than an ORM object: the unit of work's flush cost more than the
    rest of the entry (a quarter of a certificate issuance), and nothing reads the entry back as
    an object in the same transaction."""
    request_actor, request_addr = _request_actor()
    actor = actor or request_actor
    remote_addr = request_addr if remote_addr is None else remote_addr
    detail = json.loads(json.dumps(detail or {}, ensure_ascii=False, default=str))
    target = str(target)[:200]
    _lock_chain()
    last = db.session.execute(LAST_ENTRY).first()
    seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS)
    at = utcnow()
    digest = record_digest(prev_hash, seq, at, actor, action, target, detail, remote_addr)
    db.session.execute(INSERT_ENTRY, {"seq": seq, "at": at, "actor": actor, "action": action, "target": target,
                                      "detail": detail, "remote_addr": remote_addr, "prev_hash": prev_hash,
                                      "hash": digest})


@dataclass
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)
    last_seq: int = 0  # the newest record checked and its hash: the anchor to copy elsewhere
    last_hash: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(batch_size: int = 5000, anchors: Iterable[tuple[int, str]] = ()) -> VerifyReport:
    """Walk the whole chain in order; report every break with the sequence number where it is.

    The chain alone cannot tell that its newest records were cut off. `anchors` are (seq, hash) pairs
    copied elsewhere earlier (`flask audit anchor`): each must still be in the chain, unchanged."""
    report = VerifyReport()
    expected = dict(anchors)
    expected_seq, prev_hash = 1, GENESIS
    last_seq = 0
    while True:
        rows = list(db.session.scalars(
            select(AuditRecord).where(AuditRecord.seq > last_seq).order_by(AuditRecord.seq).limit(batch_size)
        ))
        if not rows:
            break
        for row in rows:
            report.checked += 1
            if row.seq != expected_seq:
                report.problems.append(f"records {expected_seq}..{row.seq - 1} are missing (deleted)")
            if row.prev_hash != prev_hash:
                report.problems.append(f"record {row.seq}: does not follow the record before it")
            digest = record_digest(row.prev_hash, row.seq, row.at, row.actor, row.action, row.target,
                                   row.detail, row.remote_addr)
            if digest != row.hash:
                report.problems.append(f"record {row.seq}: content does not match its hash (edited)")
            if row.seq in expected and expected.pop(row.seq) != row.hash:
                report.problems.append(f"record {row.seq}: is not the record anchored with that number (replaced)")
            expected_seq, prev_hash, last_seq = row.seq + 1, row.hash, row.seq
            report.last_seq, report.last_hash = row.seq, row.hash
        db.session.expunge_all()
    for seq in sorted(expected):
        report.problems.append(f"record {seq}: anchored, but the chain ends at {report.last_seq} (cut off)"
                               if seq > report.last_seq else f"record {seq}: anchored, but missing (deleted)")
    return report
