"""Console sessions held on the server: one row per sign-in, so that ending it ends it for good.

MLPS 2.0 (GB/T 22239-2019, 8.1.4.1) asks that a login connection can be ended and that one which timed out
is signed out. The signed cookie carries a random token (256 bits); `console_sessions` keeps only its
SHA-256. A console request is signed in only while its token's row is live, so a cookie copied before
sign-out, or written back by a response still in flight at sign-out, is refused with the row. The idle
limit (MPIM_IDLE_MINUTES) and the absolute one (MPIM_SESSION_MINUTES) are read from the row too.

A session past a limit ends at its holder's next request, or at the scheduler's `auth.expire_sessions` job
when that comes first (a closed tab, a lost laptop): either way once, with one auth.timeout record, so every
sign-in's end is in the audit log.

Plain functions: the console, the CLI, the scheduler and the password rules of `service` call them; none
reads the request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import delete, or_, select, update
from sqlalchemy.orm import joinedload

from app.audit import service as audit
from app.auth.models import ConsoleSession, User
from app.database import get_by_number, utcnow
from app.errors import NotFound
from app.extensions import db

TOKEN_BYTES = 32
KEEP_ENDED_DAYS = 30  # ended rows are deleted this long after, by the scheduler's job
# Why a row ended: signed out; a limit; from the user's other session; by an administrator (console or CLI);
# a password change elsewhere; an administrator's reset; the account disabled; the database restored.
RESTORE_END_REASON = "database_restore"  # `flask db-restore` ends every session the backup holds live
END_REASONS = ("logout", "idle", "session_limit", "ended_by_user", "ended_by_admin", "password_change",
               "password_reset", "disabled", RESTORE_END_REASON)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def idle_seconds() -> int:
    """The idle limit; 0 turns it off."""
    return current_app.config["MPIM_IDLE_SECONDS"]


def session_seconds() -> int:
    """The absolute limit after sign-in (also the signed cookie's own lifetime)."""
    return int(current_app.permanent_session_lifetime.total_seconds())


def activity_resolution() -> int:
    """How stale `last_active_at` may be before a request writes it again: a minute, or a quarter of a short
    idle limit, so a busy console writes its row about once a minute, not on every request. The idle limit
    may come that much early."""
    return min(60, max(1, idle_seconds() // 4)) if idle_seconds() else 60


def start(user: User, *, remote_addr: str, user_agent: str, now: datetime | None = None) -> str:
    """A new console session for `user`, who has just signed in; returns the token for the cookie (shown
    nowhere else)."""
    now = now or utcnow()
    token = secrets.token_urlsafe(TOKEN_BYTES)
    db.session.add(ConsoleSession(token_hash=token_hash(token), user_id=user.id, signed_in_at=now,
                                  last_active_at=now, remote_addr=remote_addr[:64],
                                  user_agent=readable_agent(user_agent)))
    return token


def find(token: str | None) -> ConsoleSession | None:
    """The row of `token`, live or ended."""
    if not token:
        return None
    # With its user: every console request reads both.
    return db.session.scalar(select(ConsoleSession).options(joinedload(ConsoleSession.user))
                             .where(ConsoleSession.token_hash == token_hash(token)))


def live(token: str | None, user_id: str | int) -> ConsoleSession | None:
    """The row of `token` if it is not ended and belongs to `user_id` (which the cookie names too)."""
    row = find(token)
    if row is None or row.ended_at is not None or str(row.user_id) != str(user_id):
        return None
    return row


def expiry(row: ConsoleSession, now: datetime | None = None) -> str | None:
    """Which limit the session is past: "session_limit", "idle", or None."""
    now = now or utcnow()
    if now - row.signed_in_at > timedelta(seconds=session_seconds()):
        return "session_limit"
    if idle_seconds() and now - row.last_active_at > timedelta(seconds=idle_seconds()):
        return "idle"
    return None


def seconds_left(row: ConsoleSession, now: datetime | None = None) -> dict:
    """What remains: before the idle limit or the absolute one, whichever is first, and whether activity can
    extend it (not when the absolute limit comes first)."""
    now = now or utcnow()
    absolute_left = int((row.signed_in_at - now).total_seconds()) + session_seconds()
    idle_left = (int((row.last_active_at - now).total_seconds()) + idle_seconds() if idle_seconds()
                 else absolute_left)
    return {"seconds_left": max(0, min(idle_left, absolute_left)), "renewable": idle_left < absolute_left}


def note_activity(row: ConsoleSession, now: datetime | None = None) -> bool:
    """Move `last_active_at` on when it is older than `activity_resolution`; True when it was written."""
    now = now or utcnow()
    if now - row.last_active_at < timedelta(seconds=activity_resolution()):
        return False
    row.last_active_at = now
    return True


def end(row: ConsoleSession, reason: str, now: datetime | None = None, *, still=None) -> bool:
    """End one row unless it is over already; True when this call ended it. Only the caller that ended a
    row records it: two requests past a limit at once, or a sign-out racing an administrator's "end all",
    both read the row live, and the update is conditional so that exactly one of them ends it. Signing out
    records its own audit entry (auth.logout), the limits theirs through `end_at_limit` (auth.timeout); the
    other endings go through `end_session` and `end_sessions`, which record auth.session_end. `still`: a
    condition the row must meet as the database has it, or it is not ended (`end_at_limit`)."""
    assert reason in END_REASONS, reason
    result = db.session.execute(update(ConsoleSession)
                                .where(ConsoleSession.id == row.id, ConsoleSession.ended_at.is_(None),
                                       *([] if still is None else [still]))
                                .values(ended_at=now or utcnow(), end_reason=reason)
                                .execution_options(synchronize_session=False))
    db.session.expire(row, ["ended_at", "end_reason"])  # read again: as this call or the other ended it
    return result.rowcount == 1


def end_at_limit(row: ConsoleSession, reason: str, now: datetime | None = None, *,
                 actor: str | None = None, still_over: bool = False) -> bool:
    """End `row` at the limit `expiry` named ("idle", "session_limit") and record auth.timeout, when this call
    ended it (`end`: of a request and the scheduler's job racing, one records). The record's shape is the same
    whoever noticed: the limit, its length in minutes, and the last activity in whole seconds. `actor`: whose
    request or process noticed, when not the console's signed-in user (the job says "scheduler"). `still_over`
    (the job): ended only while the database still has it past that limit, since a request inside the idle
    limit may have noted activity after the row was read; a request, or an end of all sessions, ends it anyway."""
    now = now or utcnow()
    still = None
    if still_over:
        still = (ConsoleSession.last_active_at < now - timedelta(seconds=idle_seconds()) if reason == "idle"
                 else ConsoleSession.signed_in_at < now - timedelta(seconds=session_seconds()))
    if not end(row, reason, now, still=still):
        return False
    minutes = (idle_seconds() if reason == "idle" else session_seconds()) // 60
    audit.record("auth.timeout", row.user.username,
                 {"reason": reason, "minutes": minutes, "last_active": row.last_active_at.replace(microsecond=0)},
                 actor=actor)
    return True


def expire_over_limit(now: datetime | None = None, *, actor: str = "scheduler") -> int:
    """End every live session past a limit, with that limit's reason, and record each (`end_at_limit`); returns
    how many this call ended. MLPS 2.0 asks that every sign-in's end be auditable: a session whose holder never
    comes back would otherwise stay live on paper until pruned, with no end in the audit log."""
    now = now or utcnow()
    over = [ConsoleSession.signed_in_at < now - timedelta(seconds=session_seconds())]
    if idle_seconds():
        over.append(ConsoleSession.last_active_at < now - timedelta(seconds=idle_seconds()))
    rows = db.session.scalars(select(ConsoleSession).options(joinedload(ConsoleSession.user))
                              .where(ConsoleSession.ended_at.is_(None), or_(*over))
                              .order_by(ConsoleSession.id)).all()
    return sum(end_at_limit(row, reason, now, actor=actor, still_over=True)
               for row in rows if (reason := expiry(row, now)))


def expire_job() -> str:
    """Scheduler job: end the sessions past a limit, then delete the rows ended long ago. In this order, and
    only here, so that no row is deleted before its end is recorded."""
    now = utcnow()
    expired = expire_over_limit(now)
    pruned = prune(now)
    db.session.commit()
    return f"ended {expired} past a limit, deleted {pruned} ended over {KEEP_ENDED_DAYS} days ago"


def live_sessions(user: User, now: datetime | None = None) -> list[ConsoleSession]:
    """The user's sessions that are neither ended nor past a limit, the most recently active first."""
    now = now or utcnow()
    rows = db.session.scalars(select(ConsoleSession).where(ConsoleSession.user_id == user.id,
                                                           ConsoleSession.ended_at.is_(None))
                              .order_by(ConsoleSession.last_active_at.desc(), ConsoleSession.id.desc()))
    return [row for row in rows if expiry(row, now) is None]


def end_session(user: User, session_id: int, *, current: ConsoleSession | None = None) -> ConsoleSession:
    """The user ends one of their other live sessions ("my sessions"); NotFound for anyone else's, for
    one already over, and for the session asking (that one signs out). One past a limit but not yet marked
    (a page listed it before) ends at that limit, recorded as auth.timeout, as `end_sessions` ends it."""
    row = get_by_number(ConsoleSession, session_id)
    if (row is None or row.user_id != user.id or row.ended_at is not None
            or (current is not None and row.id == current.id)):
        raise NotFound(_l("No such sign-in session of yours is live."), code="console_session_not_found")
    if expired := expiry(row):
        end_at_limit(row, expired)
        return row
    if not end(row, "ended_by_user"):  # over since it was read
        raise NotFound(_l("No such sign-in session of yours is live."), code="console_session_not_found")
    audit.record("auth.session_end", user.username, {"reason": "ended_by_user", "sessions": [row.id]})
    return row


def end_sessions(user: User, reason: str, *, keep: ConsoleSession | None = None,
                 actor: str | None = None) -> list[int]:
    """End every live session of `user` but `keep` (the one asking, when it is theirs); returns the ids this
    call ended, and records auth.session_end when there were any. A session already past a limit but not yet
    marked (its holder has not come back, the scheduler's job not yet run) ends at that limit, recorded as
    auth.timeout (`end_at_limit`), and is not counted here. `actor`: who, when not the console's signed-in user
    (the CLI says "cli")."""
    now = utcnow()
    rows = db.session.scalars(select(ConsoleSession).where(ConsoleSession.user_id == user.id,
                                                           ConsoleSession.ended_at.is_(None))
                              .order_by(ConsoleSession.id))
    ended = []
    for row in rows:
        if keep is not None and row.id == keep.id:
            continue
        if expired := expiry(row, now):
            end_at_limit(row, expired, now, actor=actor)
        elif end(row, reason, now):  # not one another request ended meanwhile
            ended.append(row.id)
    if ended:
        audit.record("auth.session_end", user.username, {"reason": reason, "sessions": ended}, actor=actor)
    return ended


def prune(now: datetime | None = None) -> int:
    """Delete the rows ended more than KEEP_ENDED_DAYS ago; returns how many. Never a live row, even one long
    past a limit: that one is ended and recorded first (`expire_job`), the audit log keeps every end for good."""
    cutoff = (now or utcnow()) - timedelta(days=KEEP_ENDED_DAYS)
    return db.session.execute(delete(ConsoleSession).where(ConsoleSession.ended_at < cutoff)).rowcount


# Checked in order: Edge and the Chinese browsers also say "Chrome/", and every Chromium says "Safari/".
_BROWSERS = (("Edg/", "Edge"), ("OPR/", "Opera"), ("QQBrowser/", "QQ Browser"), ("Firefox/", "Firefox"),
             ("Chromium/", "Chromium"), ("Chrome/", "Chrome"), ("Version/", "Safari"))
_SYSTEMS = (("Windows", "Windows"), ("Android", "Android"), ("iPhone", "iOS"), ("iPad", "iPadOS"),
            ("Mac OS X", "macOS"), ("Kylin", "Kylin"), ("UOS", "UOS"), ("CrOS", "ChromeOS"), ("Linux", "Linux"))


def readable_agent(raw: str) -> str:
    """A browser's User-Agent as a person tells one machine from another ("Chrome 131, Windows"); anything
    not recognised as it came, without control characters, cut to 120 characters."""
    browser = next((f"{name} {match.group(1)}" for marker, name in _BROWSERS
                    if (match := re.search(re.escape(marker) + r"(\d+)", raw))), None)
    system = next((name for marker, name in _SYSTEMS if marker in raw), None)
    if browser:
        return f"{browser}, {system}" if system else browser
    return "".join(ch for ch in raw if ch.isprintable())[:120]
