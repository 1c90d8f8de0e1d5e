"""Enrollment tokens, applications (A.1 node information + CSR) and admitted nodes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.auth.access import admin_lapse
from app.database import UTCDateTime, utcnow
from app.extensions import db

APPLICATION_STATUSES = ("pending", "approved", "rejected")
APPLICATION_KINDS = ("admission", "change")
NODE_STATUSES = ("active", "suspended", "revoked")
CAPABILITIES = ("text", "image", "voice", "file", "download", "single_chat", "group", "read_count", "sticker",
                "presence")


class EnrollmentToken(db.Model):
    """Single-use, expiring; only its SHA-256 is stored, and a short prefix to recognise it by."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    division_code: Mapped[str] = mapped_column(ForeignKey("divisions.code"), nullable=False, index=True)
    issued_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"), nullable=False)
    note: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_by: Mapped[str | None] = mapped_column(String(64))

    issued_by = relationship("User", lazy="joined")
    division = relationship("Division", lazy="joined")

    def state(self, now: datetime | None = None) -> str:
        """revoked, used, expired, division_retired (unused and unexpired, but a newer GB/T 2260 revision retired
        its division, so it admits nothing), issuer_inactive (its issuer could not issue it now, see
        `issuer_lapse`) or active. Nothing is stored for the last two: the token admits again once a revision
        restores the code, or the account is enabled or its scope restored, unless an admin revoked it meanwhile."""
        now = now or utcnow()
        if self.revoked_at:
            return "revoked"
        if self.used_at:
            return "used"
        if self.expires_at <= now:
            return "expired"
        if self.division is not None and self.division.retired:
            return "division_retired"
        if self.issuer_lapse():
            return "issuer_inactive"
        return "active"

    def issuer_lapse(self) -> str | None:
        """Why the admin who issued the token no longer vouches for it ("disabled", "not_admin", "out_of_scope"):
        a provincial admin's token must not outlive their account or their scope over its division."""
        return admin_lapse(self.issued_by, self.division_code)


class Application(db.Model):
    """An admission request, or a change request for an admitted node's endpoint or contact."""

    __tablename__ = "applications"
    __table_args__ = (
        CheckConstraint(f"status IN {APPLICATION_STATUSES!r}", name="status_known"),
        CheckConstraint(f"kind IN {APPLICATION_KINDS!r}", name="kind_known"),
        Index("ix_applications_status_created", "status", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False, default="admission")
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="pending")
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.node_id"), index=True)
    token_id: Mapped[int | None] = mapped_column(ForeignKey("enrollment_tokens.id"), unique=True)
    submitted_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    division_code: Mapped[str] = mapped_column(ForeignKey("divisions.code"), nullable=False, index=True)
    org_name: Mapped[str] = mapped_column(String(100), nullable=False)
    system_name: Mapped[str] = mapped_column(String(100), nullable=False)
    vendor: Mapped[str] = mapped_column(String(100), nullable=False)
    endpoint: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    contact_name: Mapped[str] = mapped_column(String(50), nullable=False)
    contact_phone: Mapped[str] = mapped_column(String(32), nullable=False)
    contact_email: Mapped[str] = mapped_column(String(254), nullable=False)
    capabilities: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    csr_pem: Mapped[str | None] = mapped_column(Text)
    # SHA-256 of the CSR's SubjectPublicKeyInfo: one key, one node (compared with certificates.key_sha256).
    key_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    reason: Mapped[str | None] = mapped_column(String(500))
    reviewed_by: Mapped[str | None] = mapped_column(String(64))
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)

    token = relationship("EnrollmentToken", lazy="joined")
    submitted_by = relationship("User", lazy="joined")
    division = relationship("Division", lazy="joined")


class Node(db.Model):
    """An admitted application node. Its id is assigned on approval and never reused."""

    __tablename__ = "nodes"
    __table_args__ = (
        CheckConstraint(f"status IN {NODE_STATUSES!r}", name="status_known"),
        CheckConstraint("length(node_id) = 20", name="node_id_twenty_digits"),
        Index("ix_nodes_status_node_id", "status", "node_id"),
        Index("ix_nodes_province_node_id", "province_prefix", "node_id"),
        # The list filtered by status and sorted by organisation pages in index order (no sort of every row).
        Index("ix_nodes_status_org_name", "status", "org_name", "node_id"),
    )

    node_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    division_code: Mapped[str] = mapped_column(ForeignKey("divisions.code"), nullable=False, index=True)
    # The first two digits, kept as a column so province filters and tile counts use an index.
    province_prefix: Mapped[str] = mapped_column(String(2), nullable=False)
    org_name: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    system_name: Mapped[str] = mapped_column(String(100), nullable=False)
    vendor: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    endpoint: Mapped[str] = mapped_column(String(255), nullable=False, index=True)
    contact_name: Mapped[str] = mapped_column(String(50), nullable=False)
    contact_phone: Mapped[str] = mapped_column(String(32), nullable=False)
    contact_email: Mapped[str] = mapped_column(String(254), nullable=False)
    capabilities: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    status: Mapped[str] = mapped_column(String(16), nullable=False, default="active")
    status_reason: Mapped[str | None] = mapped_column(String(500))
    status_changed_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    application_id: Mapped[str] = mapped_column(ForeignKey("applications.id", use_alter=True), nullable=False)
    enrolled_by_token_id: Mapped[int | None] = mapped_column(ForeignKey("enrollment_tokens.id"))
    approved_by: Mapped[str] = mapped_column(String(64), nullable=False)
    approved_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    suspension_requested: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    suspension_request_reason: Mapped[str | None] = mapped_column(String(500))
    suspension_requested_by: Mapped[str | None] = mapped_column(String(64))

    division = relationship("Division", lazy="joined")
    enrolled_by_token = relationship("EnrollmentToken", lazy="select")


class NodeSerial(db.Model):
    """The last serial handed out per (division, node type): only ever increases."""

    __tablename__ = "node_serials"

    division_code: Mapped[str] = mapped_column(String(6), primary_key=True)
    node_type: Mapped[str] = mapped_column(String(3), primary_key=True)
    last_serial: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
