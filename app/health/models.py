"""Health state per node, its events, and its history (raw for 7 days, hourly for 90 days)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.database import UTCDateTime
from app.extensions import db

HEALTH_STATUSES = ("up", "down", "unknown")


class NodeHealth(db.Model):
    __tablename__ = "node_health"
    __table_args__ = (CheckConstraint(f"status IN {HEALTH_STATUSES!r}", name="status_known"),)

    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.node_id"), primary_key=True)
    status: Mapped[str] = mapped_column(String(8), nullable=False, default="unknown")
    consecutive_failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    consecutive_successes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_ok_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_latency_ms: Mapped[float | None] = mapped_column(Float)
    last_failure: Mapped[str | None] = mapped_column(String(32))
    last_detail: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    cert_matches: Mapped[bool | None] = mapped_column(Boolean)
    maintenance_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    maintenance_note: Mapped[str] = mapped_column(String(200), nullable=False, default="")


class HealthEvent(db.Model):
    __tablename__ = "health_events"
    __table_args__ = (Index("ix_health_events_node_at", "node_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[str] = mapped_column(ForeignKey("nodes.node_id"), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    old_status: Mapped[str] = mapped_column(String(8), nullable=False)
    new_status: Mapped[str] = mapped_column(String(8), nullable=False)
    reason: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    in_maintenance: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)


class HealthSample(db.Model):
    """One poll; kept 7 days, then only its hour's aggregate remains."""

    __tablename__ = "health_samples"
    __table_args__ = (Index("ix_health_samples_node_at", "node_id", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    node_id: Mapped[str] = mapped_column(String(20), nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    ok: Mapped[bool] = mapped_column(Boolean, nullable=False)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    failure: Mapped[str | None] = mapped_column(String(32))


class HealthHourly(db.Model):
    """Per node and hour: polls, successes, latency; kept 90 days."""

    __tablename__ = "health_hourly"

    node_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime, primary_key=True)
    polls: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    successes: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    latency_sum_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
    latency_max_ms: Mapped[float] = mapped_column(Float, nullable=False, default=0.0)
