"""Published route-table versions and what each changed (for deltas and the console history)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime
from app.extensions import db


class RouteVersion(db.Model):
    """One signed table. The body is kept for recent versions (downloads), pruned for old ones."""

    __tablename__ = "route_versions"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    node_count: Mapped[int] = mapped_column(Integer, nullable=False)
    reason: Mapped[str] = mapped_column(String(64), nullable=False)
    changes: Mapped[list] = mapped_column(JSON, nullable=False, default=list)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    signature: Mapped[str | None] = mapped_column(String(200))
    signer_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    # The delta from the version before, signed once at publication (the common pull).
    delta_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    delta_signature: Mapped[str | None] = mapped_column(String(200))


class RouteChange(db.Model):
    """Entry of `node_id` as of `version`; NULL entry means removed from the table."""

    __tablename__ = "route_changes"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    node_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    entry: Mapped[dict | None] = mapped_column(JSON)
