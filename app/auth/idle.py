"""Console sessions end after a spell without activity and at a fixed time after sign-in.

MLPS 2.0 (GB/T 22239-2019, 8.1.4.1) asks a system to sign out a login connection that has timed out; an
unattended console in a police office should not stay signed in all day. Two limits:
- idle: `MPIM_IDLE_MINUTES` (30) without a console request ends the session (0 turns this off);
- absolute: `MPIM_SESSION_MINUTES` (480) after sign-in, however active (also the cookie's own lifetime).
Each page a user opens counts as activity; the page's script asks `/session/status` (which does not count)
and warns shortly before the idle limit, with a button that counts (`/session/keepalive`), so a half-typed
form is not lost to the timeout. An ended session is an audit record, like a sign-out.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import current_app, flash, jsonify, redirect, request, session, url_for
from flask_babel import gettext as _
from flask_login import current_user, logout_user

from app.audit import service as audit
from app.extensions import db

ACTIVE_AT = "active_at"  # session keys, seconds since the epoch
SIGNED_IN_AT = "signed_in_at"
NOT_ACTIVITY = {"auth.session_status"}  # asked by the page's script, not by the user
SKIPPED_PREFIXES = ("/api/", "/ca/", "/static/", "/healthz")  # no console session there
WARNING_SECONDS = 120


def idle_seconds() -> int:
    return current_app.config["MPIM_IDLE_SECONDS"]


def session_seconds() -> int:
    return int(current_app.permanent_session_lifetime.total_seconds())


def warning_seconds() -> int:
    """How long before the idle limit the page warns: two minutes, or half the limit when it is short."""
    return min(WARNING_SECONDS, max(1, idle_seconds() // 2))


def start(now: float | None = None) -> None:
    """Call right after `login_user` at sign-in: both clocks start."""
    now = int(now if now is not None else time.time())
    session[SIGNED_IN_AT] = session[ACTIVE_AT] = now


def seconds_left(now: float | None = None) -> dict:
    """What remains of this session: before the idle limit, before the absolute one, and whether activity
    can extend it (not when the absolute limit comes first)."""
    now = int(now if now is not None else time.time())
    absolute_left = session.get(SIGNED_IN_AT, now) + session_seconds() - now
    idle_left = session.get(ACTIVE_AT, now) + idle_seconds() - now if idle_seconds() else absolute_left
    return {"seconds_left": max(0, min(idle_left, absolute_left)), "renewable": idle_left < absolute_left}


def enforce() -> object | None:
    """before_request: end a session past either limit, else note the activity. A session from before
    these limits existed (no clocks yet) starts its clocks now."""
    if request.path.startswith(SKIPPED_PREFIXES) or not current_user.is_authenticated:
        return None
    now = int(time.time())
    if ACTIVE_AT not in session or SIGNED_IN_AT not in session:
        start(now)
        return None
    if now - session[SIGNED_IN_AT] > session_seconds():
        return _end("session_limit", now)
    if idle_seconds() and now - session[ACTIVE_AT] > idle_seconds():
        return _end("idle", now)
    if request.endpoint not in NOT_ACTIVITY and now - session[ACTIVE_AT] >= activity_resolution():
        session[ACTIVE_AT] = now
    return None


def activity_resolution() -> int:
    """How stale the recorded activity may be before a request writes it again (so sets the cookie): a
    minute, or a quarter of a short limit. Sessions live in the cookie, so a response still in flight when
    the user signs out writes its cookie back; writing it once a minute, not on every response, leaves that
    only to a response that is also the first in a minute. The idle limit may come that much early."""
    return min(60, max(1, idle_seconds() // 4)) if idle_seconds() else 60


def _end(reason: str, now: int):
    minutes = (idle_seconds() if reason == "idle" else session_seconds()) // 60
    # The session keeps seconds since the epoch; the record a moment an auditor can read, as other records do.
    last_active = datetime.fromtimestamp(session[ACTIVE_AT], UTC)
    audit.record("auth.timeout", current_user.username,
                 {"reason": reason, "minutes": minutes, "last_active": last_active})
    db.session.commit()
    logout_user()
    session.pop(ACTIVE_AT, None)
    session.pop(SIGNED_IN_AT, None)
    if reason == "idle":
        message = _("You were signed out after %(minutes)d minutes without activity; sign in again to go on.",
                    minutes=minutes)
    else:
        message = _("Your sign-in ended %(hours)s hours after it began; sign in again to go on.",
                    hours=f"{minutes / 60:g}")
    flash(message, "info")  # also when the page's script asked: the next page it opens says why
    if request.accept_mimetypes.best == "application/json" or request.endpoint in NOT_ACTIVITY:
        return jsonify({"error": {"code": "signed_out", "message": message}, "seconds_left": 0}), 401
    return redirect(url_for("auth.login", next=_return_path()))


def _return_path() -> str | None:
    """Where to come back to after signing in again: this page, or for a form sent after the limit, the
    page that held the form (its own URL may answer only POST)."""
    if request.method == "GET":
        return request.full_path.rstrip("?")
    referrer = urlsplit(request.referrer or "")
    if referrer.netloc == request.host and referrer.path.startswith("/"):
        return referrer.path + (f"?{referrer.query}" if referrer.query else "")
    return None
