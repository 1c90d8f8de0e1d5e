"""Which audit records a filter selects: one rule for the console's list, its CSV export and `flask audit export`.

Dates are calendar days in the display time zone (what the admin sees beside each record); a record's `at` is
UTC. A date that is no date (2025-02-30 in a hand-typed URL) selects nothing and is reported, rather than
quietly listing everything; a date typed without its zeros (2026-1-1) is taken as the date box writes it. The
other filters compare what the database holds, even in a record edited there (action and target ignoring the case
of ASCII letters, on either database); a time edited into what is no time (`stored`) is on no day, so a date
filter selects no such record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from string import ascii_lowercase, ascii_uppercase
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Select, String, false, func, or_, select
from sqlalchemy.engine import Dialect

from app.audit.models import AuditRecord
from app.audit.stored import holds_a_time
from app.auth.models import User
from app.auth.service import INTERNAL_ACTORS
from app.extensions import db
from app.labels import AUDIT_ACTIONS

FILTER_KEYS = ("actor", "action", "target", "since", "until")
ASCII_LOWER = str.maketrans(ascii_uppercase, ascii_lowercase)


@dataclass(frozen=True)
class AuditFilter:
    """The filter as typed: exact actor, action (a code's prefix, `node.`, or words of its label), target
    substring, first and last day."""

    actor: str = ""
    action: str = ""
    target: str = ""
    since: str = ""
    until: str = ""
    zone: str = "Asia/Shanghai"

    @classmethod
    def from_values(cls, values, zone: str) -> AuditFilter:
        """From request args or CLI options: missing keys are empty, surrounding spaces dropped, a date as a date
        box writes it (`iso_day`)."""
        typed = {key: (values.get(key) or "").strip() for key in FILTER_KEYS}
        return cls(**{**typed, "since": iso_day(typed["since"]), "until": iso_day(typed["until"])}, zone=zone)

    def as_dict(self) -> dict[str, str]:
        """The non-empty filters, as a URL's query or an audit entry's detail carries them."""
        return {key: getattr(self, key) for key in FILTER_KEYS if getattr(self, key)}


def iso_day(value: str) -> str:
    """A date as YYYY-MM-DD (2026-01-01 for a typed 2026-1-1, which strptime reads as well): a date box shows no
    other form, so it stood empty, and the next Filter dropped the date without a word. What is no date is kept as
    typed, for `records` to report."""
    try:
        return datetime.strptime(value, "%Y-%m-%d").date().isoformat()
    except ValueError:
        return value


def folded(column: ColumnElement[str], dialect: Dialect, typed: str) -> ColumnElement[str]:
    """`column` with its ASCII capitals in lower case, alike on both databases: SQLite's lower() folds only those,
    PostgreSQL's every letter its locale knows. Compared with `fold(typed)`. On PostgreSQL, lower() still, when
    what was typed is ASCII: a letter it folds beyond ASCII then matches only a wildcard, as it would unfolded, and
    translate() cost 12 to 15 times as much (1.5 s against 0.1 s to count a million records)."""
    if dialect.name == "postgresql" and not typed.isascii():
        return func.translate(column, ascii_uppercase, ascii_lowercase, type_=String)
    return func.lower(column, type_=String)


def fold(typed: str) -> str:
    """What the user typed, as `folded` makes a column of it."""
    return typed.translate(ASCII_LOWER)


def day_bound(value: str, zone: str, *, end: bool) -> datetime | None:
    """The start of the day (of the next, for `end`) in UTC; ValueError when it is not a date, None when
    the bound falls outside the years a datetime holds (0001-01-01 here is in year 0 in UTC, the day after
    9999-12-31 is none), which bounds nothing anyway."""
    day = datetime.strptime(value, "%Y-%m-%d").date()
    try:
        moment = datetime.combine(day, time.min, tzinfo=ZoneInfo(zone))
        return (moment + timedelta(days=1) if end else moment).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


def actions_labelled(text: str) -> list[str]:
    """The actions whose label, in the reader's language, contains `text`: an auditor types what the list
    shows ("暂停", "suspended"), not only the code's prefix ("node.")."""
    wanted = text.casefold()
    return [action for action, label in AUDIT_ACTIONS.items() if wanted in str(label).casefold()]


def actors_named(typed: str) -> list[str]:
    """`typed`, and the console user it names as recorded: usernames ignore case at sign-in (`ZhangSan` signs
    in as `zhangsan` and is recorded as `ZhangSan`), so an auditor may type either; a refused sign-in of an
    account is recorded under its name as stored too. The actors that are no account ("cli", "system") as typed,
    though an account made before their names were reserved bears one. Compared whole, on the indexed column."""
    if typed in INTERNAL_ACTORS:
        return [typed]
    stored = db.session.scalars(select(User.username).where(func.lower(User.username) == typed.lower())).all()
    return [typed, *(name for name in stored if name != typed)]


def records(audit_filter: AuditFilter) -> tuple[Select, list[str]]:
    """The query, newest first, and the typed dates that are no date (when any, the query matches nothing)."""
    dialect = db.session.get_bind().dialect
    query = select(AuditRecord).order_by(AuditRecord.seq.desc())
    if audit_filter.actor:
        query = query.where(AuditRecord.actor.in_(actors_named(audit_filter.actor)))
    # Action and target ignore the case of ASCII letters on both databases (SQLite's LIKE did, PostgreSQL's did
    # not); % and _ as typed.
    if audit_filter.action:
        action = folded(AuditRecord.action, dialect, audit_filter.action)
        query = query.where(or_(action.startswith(fold(audit_filter.action), autoescape=True),
                                AuditRecord.action.in_(actions_labelled(audit_filter.action))))
    if audit_filter.target:
        target = folded(AuditRecord.target, dialect, audit_filter.target)
        query = query.where(target.contains(fold(audit_filter.target), autoescape=True))
    not_dates, bounds = [], {}
    for key in ("since", "until"):
        value = getattr(audit_filter, key)
        if value:
            try:
                bounds[key] = day_bound(value, audit_filter.zone, end=key == "until")
            except ValueError:
                not_dates.append(value)
    if bounds:  # any day typed, even one at the calendar's ends that bounds nothing: no such time is on it
        query = query.where(holds_a_time(dialect))
    if bounds.get("since"):
        query = query.where(AuditRecord.at >= bounds["since"])
    if bounds.get("until"):
        query = query.where(AuditRecord.at < bounds["until"])
    if not_dates:
        query = query.where(false())
    return query, not_dates
