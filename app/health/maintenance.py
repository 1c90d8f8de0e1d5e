"""Maintenance windows: while one lasts, a node's failures are recorded but not alerted, and the alert held back
is sent if the window ends with the node still down (`service.late_alert`)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from enum import Enum

from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from app.admission import nodes
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


class Unseen(Enum):
    """No page's view of the window to hold a change to (`expected_end`): the CLI, a POST without it."""

    UNSEEN = "unseen"


UNSEEN = Unseen.UNSEEN
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
                         expected_end: datetime | None | Unseen = UNSEEN) -> NodeHealth | None:
    """The console's maintenance form and its CLI twin: a window of `hours` from now, or none with 0.
    Ministry admins, and provincial admins for their own divisions' nodes. A revoked node is polled no more
    and takes no window (node_revoked), nor does a suspended one until it is resumed (node_suspended; a window in
    progress can be ended); the check holds against a change of status at this moment (`nodes.lock`).
    `expected_end`: the window as the console's page showed it (its end, None for none); if another admin set,
    replaced or ended one since, the change is refused (window_changed, `as_seen`)."""
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
        return set_maintenance(node.node_id, None, note, by=by, expected_end=expected_end)
    if length == 0:
        clear_maintenance(node.node_id, by=by, expected_end=expected_end)
        return None
    return set_maintenance(node.node_id, utcnow() + timedelta(hours=length), note, by=by, expected_end=expected_end)


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


def as_seen(node_id: str, health: NodeHealth | None, expected_end: datetime | None | Unseen) -> None:
    """The window is still the one the page showed (`expected_end`), else refused at the length field with what it
    is now: a page drawn before another admin set a window saved its own over it, and said "saved". A window that
    ran out at its end is unchanged (its end is kept, `clear_maintenance`); one ended early has a new end."""
    if expected_end is UNSEEN:
        return
    current = in_maintenance(health)
    if expected_end is None:
        unchanged = not current
    else:
        unchanged = health is not None and health.maintenance_until == expected_end
    if unchanged:
        return
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
                    expected_end: datetime | None | Unseen = UNSEEN) -> NodeHealth:
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
    as_seen(node_id, found, expected_end)
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


def clear_maintenance(node_id: str, *, by, expected_end: datetime | None | Unseen = UNSEEN) -> None:
    """End the window now. Its end is kept (not cleared) so that the next round sees a window end and sends
    the alert it held back (`late_alert`), as when a window runs out by itself. Queued with rounds as
    `set_maintenance` is, for the same reason."""
    serialise("health.round")
    health = db.session.get(NodeHealth, node_id, populate_existing=True)
    as_seen(node_id, health, expected_end)
    if not in_maintenance(health):  # ran out meanwhile (a page drawn during it), or never set: nothing to record
        raise Conflict(_l("There is no maintenance window in progress to end."), code="no_window")
    health.maintenance_until = min(health.maintenance_until, utcnow())
    audit.record("health.maintenance_end", node_id, actor=by.username)
