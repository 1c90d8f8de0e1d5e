"""Maintenance windows: while one lasts, a node's failures are recorded but not alerted, and the alert held back
is sent if the window ends with the node still down (`service.late_alert`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from app.admission import node_changes, nodes
from app.audit import service as audit
from app.auth.access import require_division_scope
from app.database import serialise, utcnow
from app.errors import Conflict, PermissionDenied, ValidationFailed
from app.extensions import db
from app.health.models import NodeHealth
from app.health.service import in_maintenance
from app.i18n import local_time
from app.readable import readable_text

MAX_MAINTENANCE_HOURS = 24 * 30
# The console form's "keep the current end" choice during a window: the note is edited, the window's end stays.
KEEP_END = "keep"

_HOURS = re.compile(r"[0-9]{1,4}(?:\.[0-9]{1,2})?")  # ASCII only: float() would read "٣", "nan" and "1e400"


def maintenance_hours(value: str | None) -> float:
    """A window's length as the console's form or `flask health maintenance --hours` gives it; 0 ends one."""
    text = (value or "").strip()
    hours = float(text) if _HOURS.fullmatch(text) else -1.0
    if not 0 <= hours <= MAX_MAINTENANCE_HOURS:
        raise ValidationFailed(_l("A maintenance window lasts from 0 (end it) to %(max)s hours.",
                                  max=MAX_MAINTENANCE_HOURS), code="invalid_hours", field="hours")
    return hours


def schedule_maintenance(node, hours: str | None, note: str, *, by,
                         seen_window: int | None = None) -> NodeHealth | None:
    """The console's maintenance form and its CLI twin: a window of `hours` from now, or none with 0.
    Ministry admins, and provincial admins for their own divisions' nodes. A revoked node is polled no more
    and takes no window (node_revoked), nor does a suspended one until it is resumed (node_suspended; a window in
    progress can be ended); the check holds against a change of status at this moment (`nodes.lock`).
    `seen_window`: the node's newest window record when the console's page was drawn (`window_mark`); if another
    admin set, replaced, edited or ended a window since, the change is refused (window_changed, `as_seen`)."""
    if by.role not in ("ministry_admin", "provincial_admin"):
        raise PermissionDenied(_l("Only a ministry or provincial admin may do this."), code="role_forbidden")
    require_division_scope(by, node.division_code)
    keep = (hours or "").strip() == KEEP_END
    length = None if keep else maintenance_hours(hours)
    nodes.lock(node)
    if node.status == "revoked":
        raise Conflict(_l("A revoked node is not polled: it takes no maintenance window."), code="node_revoked")
    if node.status == "suspended" and length != 0:  # a window in progress can still be ended
        raise Conflict(_l("A suspended node is not polled: it takes no maintenance window until it is resumed."),
                       code="node_suspended")
    if keep:
        return set_maintenance(node.node_id, None, note, by=by, seen_window=seen_window)
    if length == 0:
        clear_maintenance(node.node_id, by=by, seen_window=seen_window)
        return None
    return set_maintenance(node.node_id, utcnow() + timedelta(hours=length), note, by=by, seen_window=seen_window)


def end_maintenance(node, *, by) -> None:
    """The console's "End maintenance" button: `schedule_maintenance` with 0 hours, its checks and audit record."""
    schedule_maintenance(node, "0", "", by=by)


def window_setter(node_id: str) -> str | None:
    """Who set the node's current window: the actor of its latest `health.maintenance` record (the note's
    edits count), for the node page. Not stored with the window; the audit log has it. Newest whole-numbered record
    first, as the chain orders them: one whose number was edited into text (SQLite sorts it above every number) is
    no newer."""
    from app.audit.models import AuditRecord
    from app.audit.stored import holds_a_number

    return db.session.scalar(select(AuditRecord.actor).where(AuditRecord.action == "health.maintenance",
                                                              AuditRecord.target == node_id,
                                                              holds_a_number(db.session.get_bind().dialect))
                             .order_by(AuditRecord.seq.desc()).limit(1))


WINDOW_ACTIONS = ("health.maintenance", "health.maintenance_end")


def window_mark(node_id: str) -> int:
    """The number of the node's newest window record (set, note edited, ended), 0 before any: what a page's
    maintenance form is drawn after, read as the lifecycle forms read theirs (`node_changes`). A window running
    out at its end writes none, and is no change."""
    return node_changes.mark(node_changes.latest(node_id, WINDOW_ACTIONS))


def as_seen(node_id: str, health: NodeHealth | None, seen_window: int | None) -> None:
    """The window is still the one the page showed (`seen_window`, its `window_mark`), else refused at the length
    field with what it is now: a page drawn before another admin set a window, or edited its note, saved its own
    over it, and said "saved". None (the CLI, a POST without the field): no check. For a caller holding the
    health.round lock, under which every window record is written."""
    if seen_window is None or window_mark(node_id) == seen_window:
        return
    current = in_maintenance(health)
    setter = window_setter(node_id) if current else None
    if not current:
        message = _l("The maintenance window changed after this page was loaded: none is in progress now. "
                     "Check and save again.")
    elif setter:
        message = _l("The maintenance window changed after this page was loaded: it now lasts until %(t)s, set by "
                     "%(user)s. Check it and save again.", t=local_time(health.maintenance_until), user=setter)
    else:
        message = _l("The maintenance window changed after this page was loaded: it now lasts until %(t)s. "
                     "Check it and save again.", t=local_time(health.maintenance_until))
    raise Conflict(message, code="window_changed", field="hours")


def set_maintenance(node_id: str, until: datetime | None, note: str, *, by,
                    seen_window: int | None = None) -> NodeHealth:
    """A window until `until` (None: the current window's end, kept as its note is edited; refused if it ended).
    It waits for a round being applied, and a round waits for it (health.round, held
    to commit): a round reads the node's health, then writes it, and a window set in between was written over
    with the end of the one the round had read as ended, or, for a node never polled, inserted as the round
    inserted its first row (a duplicate key, the round or the admin's request lost). A round holds the lock for
    its apply only (seconds at 10,000 nodes, bench/health.py), not its polls, so the wait is short.
    Lock order: the caller's node:<id> (`schedule_maintenance`) before health.round, never after (`still_polled`)."""
    if until is not None and until <= utcnow():
        raise ValidationFailed(_l("A maintenance window must end in the future."), code="invalid_window",
                               field="until")
    note = readable_text(note, "note", limit=200)
    serialise("health.round")
    # Read after the lock, afresh: a round may have committed since this session loaded the row.
    found = db.session.get(NodeHealth, node_id, populate_existing=True)
    as_seen(node_id, found, seen_window)
    health = found or NodeHealth(
        node_id=node_id, status="unknown", consecutive_failures=0, consecutive_successes=0, last_detail="",
        maintenance_note="")
    if until is None:  # the current window's end, kept: its note edited (`KEEP_END`)
        if not in_maintenance(health):
            raise Conflict(_l("The maintenance window has ended: there is no end to keep; choose a length."),
                           code="window_ended", field="hours")
        until = health.maintenance_until
    db.session.add(health)
    health.maintenance_until, health.maintenance_note = until, note
    audit.record("health.maintenance", node_id, {"until": until, "note": health.maintenance_note},
                 actor=by.username)
    return health


def clear_maintenance(node_id: str, *, by, seen_window: int | None = None) -> None:
    """End the window now. Its end is kept (not cleared) so that the next round sees a window end and sends
    the alert it held back (`late_alert`), as when a window runs out by itself. Queued with rounds as
    `set_maintenance` is, for the same reason."""
    serialise("health.round")
    health = db.session.get(NodeHealth, node_id, populate_existing=True)
    as_seen(node_id, health, seen_window)
    if not in_maintenance(health):  # ran out meanwhile (a page drawn during it), or never set: nothing to record
        raise Conflict(_l("There is no maintenance window in progress to end."), code="no_window")
    health.maintenance_until = min(health.maintenance_until, utcnow())
    audit.record("health.maintenance_end", node_id, actor=by.username)
