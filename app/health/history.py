"""Latency and status history: raw samples for 7 days, hourly aggregates for 90 days.

Every poll updates its hour's aggregate as it is written, so down-sampling is only deleting
raw rows past 7 days and hourly rows past 90 days; no table grows one row per poll forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select

from app.database import utcnow
from app.extensions import db
from app.health.models import HealthHourly, HealthSample

RAW_DAYS = 7
HOURLY_DAYS = 90


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def record(samples: list[HealthSample], in_maintenance: frozenset[str] | set[str] = frozenset()) -> None:
    """Store a round's samples and fold them into their hourly aggregates, except the polls of nodes in a
    maintenance window: those stay in the raw samples, but availability is counted outside announced
    maintenance (as an SLA counts it), so a planned upgrade does not read as downtime."""
    if not samples:
        return
    db.session.add_all(samples)
    buckets: dict[tuple[str, datetime], list[HealthSample]] = {}
    for sample in samples:
        if sample.node_id not in in_maintenance:
            buckets.setdefault((sample.node_id, hour_of(sample.at)), []).append(sample)
    if not buckets:
        return
    existing = {(row.node_id, row.hour): row for row in db.session.scalars(
        select(HealthHourly).where(HealthHourly.node_id.in_({key[0] for key in buckets}),
                                   HealthHourly.hour.in_({key[1] for key in buckets})))}
    for key, group in buckets.items():
        row = existing.get(key)
        if row is None:
            row = HealthHourly(node_id=key[0], hour=key[1], polls=0, successes=0, latency_sum_ms=0.0,
                               latency_max_ms=0.0)
            db.session.add(row)
        for sample in group:
            row.polls += 1
            if sample.ok:
                row.successes += 1
                row.latency_sum_ms += sample.latency_ms or 0.0
                row.latency_max_ms = max(row.latency_max_ms, sample.latency_ms or 0.0)


def downsample(now: datetime | None = None) -> str:
    """Scheduler job: drop raw samples past 7 days and hourly rows past 90 days."""
    now = now or utcnow()
    raw = db.session.execute(delete(HealthSample).where(HealthSample.at < now - timedelta(days=RAW_DAYS)))
    hourly = db.session.execute(delete(HealthHourly).where(HealthHourly.hour < now - timedelta(days=HOURLY_DAYS)))
    db.session.commit()
    return f"deleted {raw.rowcount} raw samples, {hourly.rowcount} hourly rows"


@dataclass(frozen=True)
class Bucket:
    start: datetime
    polls: int
    successes: int
    latency_ms: float | None

    @property
    def uptime(self) -> float | None:
        return self.successes / self.polls if self.polls else None


def latency_series(node_id: str, hours: int = 24, now: datetime | None = None) -> list[tuple[datetime, float]]:
    now = now or utcnow()
    rows = db.session.execute(select(HealthSample.at, HealthSample.latency_ms)
                              .where(HealthSample.node_id == node_id, HealthSample.at >= now - timedelta(hours=hours),
                                     HealthSample.ok.is_(True)).order_by(HealthSample.at)).all()
    return [(at, latency) for at, latency in rows if latency is not None]


def window_start(span: timedelta, now: datetime) -> datetime:
    """The first hour of the last `span` of hourly rows, the current (partial) hour being the last one."""
    return hour_of(now) - span + timedelta(hours=1)


def uptime_buckets(node_id: str, *, span: timedelta, buckets: int, now: datetime | None = None) -> list[Bucket]:
    """Uptime per bucket from the hourly aggregates (hour resolution suffices for 24 h to 90 days)."""
    now = now or utcnow()
    start = window_start(span, now)
    rows = db.session.scalars(select(HealthHourly).where(HealthHourly.node_id == node_id,
                                                         HealthHourly.hour >= start)).all()
    width = span / buckets
    result = []
    for index in range(buckets):
        lower = start + width * index
        upper = lower + width
        inside = [r for r in rows if lower <= r.hour < upper]
        polls = sum(r.polls for r in inside)
        successes = sum(r.successes for r in inside)
        latency = sum(r.latency_sum_ms for r in inside) / successes if successes else None
        result.append(Bucket(lower, polls, successes, latency))
    return result


def uptime_ratio(node_id: str, span: timedelta, now: datetime | None = None) -> float | None:
    """Share of successful polls in the span, maintenance windows left out (see `record`): the hours
    `uptime_buckets` draws for the same span, so the figure is that of the bars beside it."""
    now = now or utcnow()
    polls, successes = db.session.execute(
        select(func.coalesce(func.sum(HealthHourly.polls), 0), func.coalesce(func.sum(HealthHourly.successes), 0))
        .where(HealthHourly.node_id == node_id, HealthHourly.hour >= window_start(span, now))).one()
    return successes / polls if polls else None
