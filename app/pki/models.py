"""Every certificate the CA issued, and the CRL's running number."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime, utcnow
from app.extensions import db

CERTIFICATE_KINDS = ("node", "route_signer", "management")


class Certificate(db.Model):
    """One issued certificate. Its state (valid, expiring, superseded, ...) depends on its holder's other
    certificates too, so it is read in SQL: `app.pki.inventory`."""

    __tablename__ = "certificates"
    __table_args__ = (
        CheckConstraint(f"kind IN {CERTIFICATE_KINDS!r}", name="kind_known"),
        Index("ix_certificates_node_not_after", "node_id", "not_after"),
    )

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # lower-case hex
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    node_id: Mapped[str | None] = mapped_column(ForeignKey("nodes.node_id"), index=True)
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    key_description: Mapped[str] = mapped_column(String(40), nullable=False, default="")
    # SHA-256 of the SubjectPublicKeyInfo (DER): finds the node a key is already certified for.
    key_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    pem: Mapped[str] = mapped_column(Text, nullable=False)
    not_before: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    issued_by: Mapped[str] = mapped_column(String(64), nullable=False)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revocation_reason: Mapped[str | None] = mapped_column(String(32))


INTERMEDIATE_CRL, ROOT_CRL = 1, 2  # CRLState ids: the intermediate's CRL and the root's


class CRLState(db.Model):
    """One issuer's current CRL (INTERMEDIATE_CRL or ROOT_CRL): regenerated on every revocation and
    before its nextUpdate."""

    __tablename__ = "crl_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    crl_number: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    this_update: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    next_update: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    pem: Mapped[str] = mapped_column(Text, nullable=False)
    der: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)


# RFC 5280 reasons that fit a CA certificate (`flask ca revoke-intermediate`); the others name a subscriber's
# circumstances (privilegeWithdrawn), say nothing (unspecified) or are meant to be lifted (certificateHold).
INTERMEDIATE_REVOCATION_REASONS = ("key_compromise", "ca_compromise", "affiliation_changed", "superseded",
                                   "cessation_of_operation")


class RevokedIntermediate(db.Model):
    """An issuing CA the root revoked: what the root's CRL lists. Apart from `Certificate`, which holds what the
    intermediate issued (its own CRL's entries); a revocation here is final, as every other."""

    __tablename__ = "revoked_intermediates"
    __table_args__ = (CheckConstraint(f"reason IN {INTERMEDIATE_REVOCATION_REASONS!r}", name="reason_known"),)

    serial: Mapped[str] = mapped_column(String(40), primary_key=True)  # lower-case hex
    subject: Mapped[str] = mapped_column(String(300), nullable=False)
    sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    revoked_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked_by: Mapped[str] = mapped_column(String(64), nullable=False)
