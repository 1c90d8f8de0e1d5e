"""Health rounds: apply poll results to the damped state, record history and events, alert.

One round's state changes land as one route version (the routing feature registers in
`status_changed`), never one version per node: a storm of versions would make every node pull
again and again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import SimpleNamespace

from flask import current_app
from sqlalchemy import bindparam, func, insert, or_, select, update

from app.admission.models import Node
from app.database import among, serialise, utcnow
from app.extensions import db
from app.health import history, webhook
from app.health.models import HealthEvent, NodeHealth
from app.health.state import Counters, Thresholds, step

log = logging.getLogger("mpim.health")


@dataclass(frozen=True)
class StatusChange:
    node_id: str
    old: str
    new: str
    reason: str | None
    detail: str
    in_maintenance: bool
    # Alerted when the maintenance window it happened in ended with the node still down (`late_alert`).
    after_maintenance: bool = False
    # The node changed status more than MPIM_HEALTH_FLAP_CHANGES times in the last hour, this change included:
    # said in the alert so that a receiver can damp a flapping node's alerts (`flagged_flapping`).
    flapping: bool = False


@dataclass
class RoundReport:
    polled: int = 0
    ok: int = 0
    changes: list[StatusChange] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)
    # Changes recorded during a maintenance window that ended this round with the node still down.
    late_alerts: list[StatusChange] = field(default_factory=list)
    # Results for nodes suspended, revoked or moved to another endpoint since they were polled (`still_polled`).
    skipped: int = 0

    def summary(self) -> str:
        failed = ", ".join(f"{reason} {count}" for reason, count in sorted(self.failures.items()))
        changed = ", ".join(f"{c.node_id} {c.old}→{c.new}" for c in self.changes)
        late = ", ".join(c.node_id for c in self.late_alerts)
        return (f"{self.polled} polled, {self.ok} ok" + (f"; failed: {failed}" if failed else "")
                + (f"; skipped {self.skipped} no longer active or moved since polled" if self.skipped else "")
                + (f"; changed: {changed}" if changed else "")
                + (f"; still down after maintenance: {late}" if late else ""))


# Functions (changes: list[StatusChange]) run inside the round's transaction (routing publishes).
status_changed: list[Callable] = []


def thresholds() -> Thresholds:
    return Thresholds(current_app.config["MPIM_HEALTH_FAILURES_BEFORE_DOWN"],
                      current_app.config["MPIM_HEALTH_SUCCESSES_BEFORE_UP"])


def in_maintenance(health: NodeHealth | None, now: datetime | None = None) -> bool:
    return bool(health and health.maintenance_until and health.maintenance_until > (now or utcnow()))


def out_of_maintenance(now: datetime):
    """`not in_maintenance(health, now)` as SQL, over a NodeHealth row: lists count and cut it in the query."""
    return or_(NodeHealth.maintenance_until.is_(None), NodeHealth.maintenance_until <= now)


def down_now(node_id_column):
    """SQL: the node (by its id column) was found down and is out of maintenance. Whether it is active is the
    caller's: the banner and the nodes list's "down" filter both ask for active nodes."""
    return node_id_column.in_(select(NodeHealth.node_id).where(NodeHealth.status == "down",
                                                               out_of_maintenance(utcnow())))


def still_polled(node_ids: list[str]) -> dict[str, tuple[str, datetime]]:
    """node id → (endpoint, when its status last changed), of those of `node_ids` that are active now, their rows
    locked FOR SHARE until commit.

    A round polls, then applies; an admin may suspend, revoke or move a node in between, and reset its health to
    unknown (`forget_verdict`). The lock orders the two on PostgreSQL: a round that comes second waits for the
    admin's uncommitted row (its UPDATE of the node) and reads what it committed; an admin that comes second waits
    at that UPDATE for the round's commit, and then resets what the round wrote. SQLite's write lock, which the
    round holds already (`serialise`), orders them the same way (FOR SHARE is not said there).
    Lock order: the round takes health.round, then these rows, then node_health; an admin's node action takes
    node:<id>, then the node's row, then node_health, and never health.round; a maintenance window takes
    node:<id>, then health.round (`set_maintenance`), and never a node's row. Nothing takes node:<id> after
    health.round, nor health.round after a node's row: no circle."""
    if not node_ids:
        return {}
    rows = db.session.execute(
        select(Node.node_id, Node.endpoint, Node.status_changed_at)
        .where(among(Node.node_id, node_ids), Node.status == "active")
        .order_by(Node.node_id).with_for_update(read=True))
    return {node_id: (endpoint, changed_at) for node_id, endpoint, changed_at in rows}


def apply_round(results) -> RoundReport:
    """Apply poll results (objects with node_id, endpoint, ok, latency_ms, failure, detail, cert_matches,
    checked_at) in one transaction; commits; then queues webhook alerts of real changes (`webhook.outbox`). A
    result for a node that is no longer active, or no longer at the endpoint polled, is skipped (`still_polled`);
    one polled before the node's last change of status (suspended and resumed since) is a sample only.
    Rows are read and written with executemany statements, not ORM objects: a round of 10,000 nodes spent most
    of its time (and so most of the time it holds its locks) building and flushing objects (bench/health.py)."""
    report = RoundReport(polled=len(results))
    limits, now = thresholds(), utcnow()
    # One round at a time (the scheduler's and `flask health poll --once`): two reading the same state would
    # both record its change. And no maintenance window set between the round's read of the health rows and
    # its write (`set_maintenance`). Read after the lock.
    serialise("health.round")
    polled = still_polled(sorted({r.node_id for r in results}))
    # Skipped, not recorded as a sample either: the poll was of a node now out of polling (or of a server it has
    # left), and a sample would put it into the availability and latency history of a node it says nothing of.
    current = [r for r in results if r.node_id in polled and polled[r.node_id][0] == r.endpoint]
    report.skipped = len(results) - len(current)
    states = _read_states([r.node_id for r in current])
    events: list[dict] = []
    latest: dict[str, dict] = {}  # node id → its event of this round, not written yet (`late_alert`)
    samples: list[dict] = []
    maintained: set[str] = set()
    for result in current:
        health = states.get(result.node_id)
        if health is None:
            health = states[result.node_id] = SimpleNamespace(**NEW_STATE, node_id=result.node_id, read=None)
        reason = str(result.failure) if result.failure else None
        checked_at = getattr(result, "checked_at", None) or now
        samples.append(dict(node_id=result.node_id, at=checked_at, ok=result.ok, latency_ms=result.latency_ms,
                            failure=reason))
        if result.ok:
            report.ok += 1
        else:
            report.failures[reason or "error"] = report.failures.get(reason or "error", 0) + 1
        # Polled before the state's last check: a scheduled round applies its polls at the end of its interval,
        # and a `poll --once` may have applied newer ones meanwhile. It adds to the newest's streak when it agrees
        # (one more real failure, or success); otherwise it is a sample for the history only, not a reset of the
        # streak the newer polls began. The last check's time and details stay the newest's. A last check later
        # than now was timed by a clock since stepped back: every poll would be older than it for the step.
        stale = health.last_checked_at is not None and checked_at < health.last_checked_at <= now
        # Polled before the node's last change of status: active now, it was suspended and resumed since (the
        # resumption began its verdict afresh, `forget_verdict`). A sample of when it was active, and no more.
        if checked_at < polled[result.node_id][1] <= now:
            if in_maintenance(health, now):
                maintained.add(result.node_id)
            continue
        if stale:
            if not (health.consecutive_successes if result.ok else health.consecutive_failures):
                if in_maintenance(health, now):
                    maintained.add(result.node_id)
                continue
            checked_at = health.last_checked_at
        after = step(Counters(health.status, health.consecutive_failures, health.consecutive_successes),
                     result.ok, limits)
        health.consecutive_failures, health.consecutive_successes = after.failures, after.successes
        if not stale:
            health.last_checked_at, health.last_failure = checked_at, reason
            health.last_latency_ms, health.cert_matches = result.latency_ms, result.cert_matches
            health.last_detail = (result.detail or "")[:300]
            if result.ok:
                health.last_ok_at = checked_at
        if after.status != health.status:
            change = StatusChange(result.node_id, health.status, after.status, reason, health.last_detail,
                                  in_maintenance(health, now))
            report.changes.append(change)
            latest[change.node_id] = dict(node_id=change.node_id, at=checked_at, old_status=change.old,
                                          new_status=change.new, reason=reason, detail=change.detail,
                                          in_maintenance=change.in_maintenance)
            events.append(latest[change.node_id])
            health.status, health.changed_at = after.status, checked_at
        if in_maintenance(health, now):
            maintained.add(result.node_id)
        elif health.maintenance_until is not None:  # the window ended since the last round: once
            health.maintenance_until = None
            if (late := late_alert(health, latest.get(result.node_id))) is not None:
                report.late_alerts.append(late)
    _write_states(states)
    if events:
        db.session.execute(insert(HealthEvent.__table__), events)
    history.record(samples, maintained)
    if report.changes or report.late_alerts:  # this round's events written: they count
        flagged = flagged_flapping(report.changes + report.late_alerts, now)
        report.changes, report.late_alerts = flagged[:len(report.changes)], flagged[len(report.changes):]
    if report.changes:
        for hook in status_changed:
            hook(report.changes)
    db.session.commit()
    alerts = [c for c in report.changes if not c.in_maintenance] + report.late_alerts
    if alerts and current_app.config.get("MPIM_HEALTH_WEBHOOK_URL"):
        # Queued, not sent here: no receiver may hold the round up (`webhook`).
        webhook.outbox.put(current_app.config["MPIM_HEALTH_WEBHOOK_URL"], alerts,
                           deadline=current_app.config.get("MPIM_HEALTH_WEBHOOK_SECONDS", 15.0),
                           secret=current_app.config.get("MPIM_HEALTH_WEBHOOK_SECRET", ""),
                           ca=current_app.config.get("MPIM_HEALTH_WEBHOOK_CA", ""))
    return report


# node_health's columns a round writes; the maintenance window is the admin's, but for its end (`apply_round`).
ROUND_COLUMNS = ("status", "consecutive_failures", "consecutive_successes", "changed_at", "last_checked_at",
                 "last_ok_at", "last_latency_ms", "last_failure", "last_detail", "cert_matches")
NEW_STATE = dict(status="unknown", consecutive_failures=0, consecutive_successes=0, changed_at=None,
                 last_checked_at=None, last_ok_at=None, last_latency_ms=None, last_failure=None, last_detail="",
                 cert_matches=None, maintenance_until=None)


def _read_states(node_ids: list[str]) -> dict[str, SimpleNamespace]:
    """node id → its node_health row as read now (`read`), and as the round changes it (the attributes)."""
    if not node_ids:
        return {}
    table = NodeHealth.__table__
    rows = db.session.execute(select(table.c.node_id, table.c.maintenance_until, *(table.c[k] for k in ROUND_COLUMNS))
                              .where(among(table.c.node_id, node_ids)))
    return {row.node_id: SimpleNamespace(**row._asdict(), read=row) for row in rows}


def _write_states(states: dict[str, SimpleNamespace]) -> None:
    """Write what the round changed, in node id order (the order the round's row locks are taken in). Only the
    columns a round owns, and the end of a window that ended: no admin wrote the window since the round read it
    (`set_maintenance` waits for the round), and a row the round inserts is one nobody else inserted meanwhile."""
    table = NodeHealth.__table__
    inserts: list[dict] = []
    updates: dict[bool, list[dict]] = {False: [], True: []}  # by whether the row's maintenance window ended
    for node_id in sorted(states):
        health = states[node_id]
        values = {key: getattr(health, key) for key in ROUND_COLUMNS}
        if health.read is None:
            inserts.append({"node_id": node_id, **values, "maintenance_until": None, "maintenance_note": ""})
            continue
        ended = health.maintenance_until is None and health.read.maintenance_until is not None
        if ended:
            values["maintenance_until"] = None
        elif all(values[key] == getattr(health.read, key) for key in ROUND_COLUMNS):
            continue
        updates[ended].append({"b_node_id": node_id, **values})
    for rows in updates.values():
        if rows:
            db.session.execute(update(table).where(table.c.node_id == bindparam("b_node_id")), rows)
    if inserts:
        db.session.execute(insert(table), inserts)
    # This session's copies of these rows, if it loaded any before the round, are out of date now.
    for key in [key for key in db.session.identity_map.keys() if key[0] is NodeHealth and key[1][0] in states]:
        db.session.expire(db.session.identity_map[key])


# HealthEvent.reason of a reset to unknown that an admin's action made (`forget_verdict`, `forget_verdict_after_move`),
# by the node's new status. Recorded so the history says how a node became unknown; not a change polling found, so
# it counts toward no flapping and sends no alert (the action itself is audited).
RESET_REASONS = {"suspended": "node_suspended", "active": "node_resumed", "revoked": "node_revoked"}
ENDPOINT_CHANGED = "endpoint_changed"
ADMIN_RESETS = (*RESET_REASONS.values(), ENDPOINT_CHANGED)


def forget_verdict(node, old: str, new: str, reason: str) -> None:
    """Admission hook (suspend, resume, revoke): the node's status goes back to unknown, its streaks to zero.
    Only active nodes are polled, so whatever it was before says nothing of it once it is back: shown, and
    published in the routing table, that old "up" would stand until enough polls had failed
    (MPIM_HEALTH_FAILURES_BEFORE_DOWN rounds). Runs before the routing table's hook publishes the change."""
    _forget(node.node_id, RESET_REASONS[new])


def forget_verdict_after_move(node, application, changes: dict) -> None:
    """Admission hook (an approved change request): the polls so far were of the old endpoint, and say nothing
    of the new one, which the routing table publishes in the same transaction."""
    if "endpoint" in changes:
        _forget(node.node_id, ENDPOINT_CHANGED)


def _forget(node_id: str, reason: str) -> None:
    """Back to unknown with no streaks, recorded as a health event (old status → unknown, `reason`) unless there
    was nothing to forget."""
    # Read afresh: a round may have committed since this session loaded it (`still_polled`).
    health = db.session.get(NodeHealth, node_id, populate_existing=True)
    if health is None or (health.status == "unknown" and not health.consecutive_failures
                          and not health.consecutive_successes):
        return
    now = utcnow()
    db.session.add(HealthEvent(node_id=node_id, at=now, old_status=health.status, new_status="unknown",
                               reason=reason, detail="", in_maintenance=in_maintenance(health, now)))
    health.status, health.changed_at = "unknown", now
    health.consecutive_failures = health.consecutive_successes = 0
    db.session.flush()


def late_alert(health, pending: dict | None = None) -> StatusChange | None:
    """The alert a maintenance window held back, now that it has ended (at its time, or an admin ended it):
    the node went down inside it and is still down. No alert went out then, so without this one nobody would
    hear of it; a node that came back inside the window, or was down before it (alerted then), gets none.
    An admin's reset (`_forget`) in between forgets that "down" with the rest: the node is unknown, and is alerted
    only if the polls after it find it down again (late, if they do so inside the window; as usual, after it).
    `pending`: the node's event of this round, not written yet; the latest, unless one written is later."""
    if health.status != "down":
        return None
    event = db.session.scalars(select(HealthEvent).where(HealthEvent.node_id == health.node_id)
                               .order_by(HealthEvent.at.desc(), HealthEvent.id.desc()).limit(1)).first()
    if pending is not None and (event is None or pending["at"] >= event.at):
        event = SimpleNamespace(**pending)
    if event is None or not event.in_maintenance or event.new_status != "down":
        return None
    return StatusChange(health.node_id, event.old_status, "down", event.reason, event.detail, False,
                        after_maintenance=True)


def flap_counts(node_ids: list[str] | None = None, now: datetime | None = None) -> dict[str, int]:
    """Status changes polling found in the last hour, per node; an admin's resets (`ADMIN_RESETS`) are none."""
    now = now or utcnow()
    query = select(HealthEvent.node_id, func.count()).where(
        HealthEvent.at >= now - timedelta(hours=1),
        or_(HealthEvent.reason.is_(None), HealthEvent.reason.not_in(ADMIN_RESETS))).group_by(HealthEvent.node_id)
    if node_ids is not None:
        query = query.where(HealthEvent.node_id.in_(node_ids))
    return dict(db.session.execute(query).all())


def is_flapping(changes_last_hour: int) -> bool:
    return changes_last_hour > current_app.config["MPIM_HEALTH_FLAP_CHANGES"]


def flagged_flapping(changes: list[StatusChange], now: datetime | None = None) -> list[StatusChange]:
    """The changes, each saying whether its node is flapping, counted as the console counts it (`flap_counts`,
    this round's events included)."""
    counts = flap_counts(sorted({c.node_id for c in changes}), now)
    return [replace(c, flapping=is_flapping(counts.get(c.node_id, 0))) for c in changes]


def statuses(node_ids: list[str]) -> dict[str, NodeHealth]:
    if not node_ids:
        return {}
    return {h.node_id: h for h in db.session.scalars(select(NodeHealth).where(NodeHealth.node_id.in_(node_ids)))}
