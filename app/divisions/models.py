"""GB/T 2260 administrative divisions: the address space of the network."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime, utcnow
from app.extensions import db

LEVELS = ("province", "prefecture", "county")


class Division(db.Model):
    __tablename__ = "divisions"
    __table_args__ = (
        CheckConstraint(f"level IN {LEVELS!r}", name="level_known"),
        CheckConstraint("length(code) = 6", name="code_six_digits"),
    )

    code: Mapped[str] = mapped_column(String(6), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), nullable=False, index=True)
    level: Mapped[str] = mapped_column(String(16), nullable=False)
    parent_code: Mapped[str | None] = mapped_column(ForeignKey("divisions.code"), index=True)
    # The revision that last confirmed this code (e.g. "2023").
    revision: Mapped[str] = mapped_column(String(32), nullable=False)
    retired: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    retired_in: Mapped[str | None] = mapped_column(String(32))


class DivisionRevision(db.Model):
    """One imported revision of the code list and what it changed."""

    __tablename__ = "division_revisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(32), nullable=False)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, default=utcnow)
    imported_by: Mapped[str] = mapped_column(String(64), nullable=False)
    added: Mapped[int] = mapped_column(nullable=False, default=0)
    renamed: Mapped[int] = mapped_column(nullable=False, default=0)
    retired: Mapped[int] = mapped_column(nullable=False, default=0)
    restored: Mapped[int] = mapped_column(nullable=False, default=0)
