"""Latency and status history: raw samples for 7 days, hourly aggregates for 90 days, status changes
(health events) for MPIM_HEALTH_EVENT_DAYS (365 by default).

Every poll updates its hour's aggregate as it is written, so down-sampling is only deleting
raw rows past 7 days and hourly rows past 90 days; no table grows one row per poll forever,
nor one row per status change of a flapping node.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import Select, bindparam, delete, func, insert, select, update

from app.admission.models import Node
from app.admission.scope import division_filter, scoped
from app.database import among, utcnow
from app.extensions import db
from app.health.models import HealthEvent, HealthHourly, HealthSample

RAW_DAYS = 7
HOURLY_DAYS = 90


def events_query(user) -> Select:
    """The health events a user may read, newest first. The nodes are joined only for a provincial admin: for
    the others the filter is true, and the join cost the count of the nation's events ten times over."""
    query = select(HealthEvent).order_by(HealthEvent.at.desc(), HealthEvent.id.desc())
    if scoped(user):
        query = query.join(Node, Node.node_id == HealthEvent.node_id).where(division_filter(user, Node.division_code))
    return query


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def record(samples: list[dict], in_maintenance: frozenset[str] | set[str] = frozenset()) -> None:
    """Store a round's samples (health_samples rows: node_id, at, ok, latency_ms, failure) and fold them into
    their hourly aggregates, except the polls of nodes in a maintenance window: those stay in the raw samples,
    but availability is counted outside announced maintenance (as an SLA counts it), so a planned upgrade does
    not read as downtime. Written with executemany statements: a round writes a row of each per node."""
    if not samples:
        return
    db.session.execute(insert(HealthSample.__table__), samples)
    buckets: dict[tuple[str, datetime], list[dict]] = {}
    for sample in samples:
        if sample["node_id"] not in in_maintenance:
            buckets.setdefault((sample["node_id"], hour_of(sample["at"])), []).append(sample)
    if not buckets:
        return
    table = HealthHourly.__table__
    existing = {(row.node_id, row.hour): row for row in db.session.execute(
        select(table).where(among(table.c.node_id, {key[0] for key in buckets}),
                            among(table.c.hour, {key[1] for key in buckets})))}
    inserts: list[dict] = []
    updates: list[dict] = []
    for key in sorted(buckets):
        row = existing.get(key)
        polls, successes, latency_sum, latency_max = \
            (row.polls, row.successes, row.latency_sum_ms, row.latency_max_ms) if row else (0, 0, 0.0, 0.0)
        for sample in buckets[key]:
            polls += 1
            if sample["ok"]:
                successes += 1
                latency_sum += sample["latency_ms"] or 0.0
                latency_max = max(latency_max, sample["latency_ms"] or 0.0)
        values = dict(polls=polls, successes=successes, latency_sum_ms=latency_sum, latency_max_ms=latency_max)
        if row is None:
            inserts.append(dict(node_id=key[0], hour=key[1], **values))
        else:
            updates.append(dict(b_node_id=key[0], b_hour=key[1], **values))
    if updates:
        db.session.execute(update(table).where(table.c.node_id == bindparam("b_node_id"),
                                               table.c.hour == bindparam("b_hour")), updates)
    if inserts:
        db.session.execute(insert(table), inserts)


def downsample(now: datetime | None = None) -> str:
    """Scheduler job: drop raw samples past 7 days, hourly rows past 90 days, and health events past
    MPIM_HEALTH_EVENT_DAYS."""
    now = now or utcnow()
    event_days = current_app.config["MPIM_HEALTH_EVENT_DAYS"]
    raw = db.session.execute(delete(HealthSample).where(HealthSample.at < now - timedelta(days=RAW_DAYS)))
    hourly = db.session.execute(delete(HealthHourly).where(HealthHourly.hour < now - timedelta(days=HOURLY_DAYS)))
    events = db.session.execute(delete(HealthEvent).where(HealthEvent.at < now - timedelta(days=event_days)))
    db.session.commit()
    return f"deleted {raw.rowcount} raw samples, {hourly.rowcount} hourly rows, {events.rowcount} health events"


@dataclass(frozen=True)
class Bucket:
    start: datetime
    polls: int
    successes: int
    latency_ms: float | None

    @property
    def uptime(self) -> float | None:
        return self.successes / self.polls if self.polls else None


def latency_series(node_id: str, hours: int = 24, now: datetime | None = None) -> list[tuple[datetime, float | None]]:
    """Every poll of the last `hours` up to `now`, oldest first: a successful one with its latency, a failed one
    with None, so the chart breaks its line there (a line over an outage read as a steady node).
    A poll later than now (recorded before the clock stepped back) is left out: its place on the time axis is
    unknown, and drawn at "now" it would pass for the latest figure."""
    now = now or utcnow()
    rows = db.session.execute(select(HealthSample.at, HealthSample.ok, HealthSample.latency_ms)
                              .where(HealthSample.node_id == node_id, HealthSample.at >= now - timedelta(hours=hours),
                                     HealthSample.at <= now).order_by(HealthSample.at)).all()
    # a successful poll without a figure has nothing to draw and is no failure either
    return [(at, latency if ok else None) for at, ok, latency in rows if not ok or latency is not None]


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
