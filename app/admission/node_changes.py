"""A node's newest lifecycle change (SPEC §3 step 5), as its audit record holds it: what a node page's lifecycle
forms were loaded after. A form sent from a page older than it is refused, naming the change, rather than taken:
a node suspended and resumed meanwhile is active as the page showed, and its admin never saw why."""

from __future__ import annotations

from datetime import datetime

from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.audit.stored import Stored, StoredRecords, holds_a_number
from app.errors import Conflict
from app.extensions import db
from app.i18n import local_time

# What each lifecycle action of a node records, in words: every one of them changes what its page offers.
CHANGES = {
    "node.suspend": lambda who, when: _l("%(who)s suspended it at %(when)s", who=who, when=when),
    "node.resume": lambda who, when: _l("%(who)s resumed it at %(when)s", who=who, when=when),
    "node.revoke": lambda who, when: _l("%(who)s revoked it at %(when)s", who=who, when=when),
    "node.request_suspension": lambda who, when: _l("%(who)s asked for its suspension at %(when)s", who=who,
                                                    when=when),
    "node.decline_suspension": lambda who, when: _l("%(who)s declined the suspension request at %(when)s", who=who,
                                                    when=when),
    "node.withdraw_suspension": lambda who, when: _l("%(who)s withdrew the suspension request at %(when)s", who=who,
                                                     when=when),
}


def latest(node_id: str, actions=tuple(CHANGES)) -> Stored | None:
    """The newest of the node's records among `actions`, read as stored (`app.audit.stored`): newest whole-numbered
    record first, as the chain orders them, so an edited record is shown as held, not a 500."""
    dialect = db.session.get_bind().dialect
    records = StoredRecords(dialect)
    row = db.session.execute(
        select(*records.columns).where(AuditRecord.target == node_id, AuditRecord.action.in_(actions),
                                       holds_a_number(dialect))
        .order_by(AuditRecord.seq.desc()).limit(1)).first()
    return records.decode(row) if row is not None else None


def mark(change: Stored | None) -> int:
    """What a page carries of the change it was loaded after: its record's number, 0 before any."""
    return change.seq if change is not None else 0


def require_seen(node_id: str, seen: int | None) -> None:
    """Refuse (Conflict, "invalid_transition") when the node's newest change is not the one the form's page was
    loaded after (`mark`). For a caller holding the node's lock (`nodes.lock`): its changes commit their records
    before letting go of it. None, as the CLI and API send: nothing to compare, no check."""
    if seen is None:
        return
    change = latest(node_id)
    if mark(change) != seen:
        raise Conflict(changed_meanwhile(change), code="invalid_transition")


def changed_meanwhile(change: Stored | None):
    """The refusal, naming the change: who, when (in the console's zone) and why."""
    if change is None or change.action not in CHANGES:  # its record deleted or edited: nothing to name
        return _l("The node changed after this page was loaded. Check what changed; send it again if you still "
                  "mean to.")
    when = local_time(change.at) if isinstance(change.at, datetime) else str(change.at)
    what = CHANGES[change.action](change.actor, when)
    reason = change.detail.get("reason") if isinstance(change.detail, dict) else None
    if isinstance(reason, str) and reason:
        return _l("The node changed after this page was loaded: %(change)s, giving the reason “%(reason)s”. Check "
                  "what changed; send it again if you still mean to.", change=what, reason=reason)
    return _l("The node changed after this page was loaded: %(change)s. Check what changed; send it again if you "
              "still mean to.", change=what)
