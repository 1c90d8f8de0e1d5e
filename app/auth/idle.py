"""The console's side of its sessions (app/auth/console_sessions.py): the cookie's token, and the limits.

MLPS 2.0 (GB/T 22239-2019, 8.1.4.1) asks a system to sign out a login connection that has timed out; an
unattended console in a police office should not stay signed in all day. Two limits, decided from the
session's row on the server, not from anything the cookie says:
- idle: `MPIM_IDLE_MINUTES` (30) without a console request ends the session (0 turns this off);
- absolute: `MPIM_SESSION_MINUTES` (480) after sign-in, however active (also the cookie's own lifetime).
Each page a user opens counts as activity; the page's script asks `/session/status` (which does not count)
and warns shortly before the idle limit, with a button that counts (`/session/keepalive`), so a half-typed
form is not lost to the timeout; a key typed into a field while it shows (or in the 5 s before it is due)
counts as that button does. An ended session is an audit record, like a sign-out.

A cookie whose session is over (signed out, ended from another session or by an administrator, or from
before sessions were held on the server) signs nobody in: its holder is sent to sign in, told why.
"""

from __future__ import annotations

from flask import current_app, flash, g, jsonify, redirect, request, session, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, logout_user
from flask_wtf.csrf import generate_csrf

from app.audit import service as audit
from app.auth import console_sessions
from app.auth.models import ConsoleSession, User
from app.console import pages
from app.database import utcnow
from app.extensions import db

TOKEN = "console_session"  # the session key holding this sign-in's token
CSRF_OWNER = "csrf_user"  # the session key naming the user whose sign-in the CSRF token was made for
NOT_ACTIVITY = {"auth.session_status"}  # asked by the page's script, not by the user
SKIPPED_PREFIXES = ("/api/", "/ca/", "/static/", "/healthz")  # no console session there
WARNING_SECONDS = 120


def warning_seconds() -> int:
    """How long before the idle limit the page warns: two minutes, or half the limit when it is short."""
    return min(WARNING_SECONDS, max(1, console_sessions.idle_seconds() // 2))


def load_user(user_id: str) -> User | None:
    """Flask-Login's user loader: the user whose live session the cookie's token names, if still active."""
    row = console_sessions.live(session.get(TOKEN), user_id)
    if row is None or not row.user.active:
        return None
    g.console_session = row
    return row.user


def current_row() -> ConsoleSession | None:
    """This request's console session, when it is signed in."""
    return g.get("console_session") if current_user.is_authenticated else None


def start(user: User) -> None:
    """Call right after `login_user` at sign-in: the session's row, and its token in the cookie. The row is this
    request's session from now on (`current_row`): a page drawn in this request (an error page) shows its
    clock."""
    token = console_sessions.start(user, remote_addr=request.remote_addr or "",
                                   user_agent=request.headers.get("User-Agent", ""))
    db.session.commit()
    session[TOKEN] = token
    g.console_session = console_sessions.find(token)
    if session.get(CSRF_OWNER) != user.id:
        _forget_csrf()
        generate_csrf()  # now, in the sign-in's own cookie: the pages after it write none
    session[CSRF_OWNER] = user.id


def sign_out() -> None:
    """The sign-out button: the row ends first, so the cookie is dead even if copied or written back."""
    row = current_row()
    if row is None or console_sessions.end(row, "logout"):  # not when a limit or an administrator ended it first
        audit.record("auth.logout", current_user.username)
    db.session.commit()
    _forget()
    _forget_csrf()


def seconds_left() -> dict:
    """For the page and its script: what remains of this session."""
    return console_sessions.seconds_left(current_row())


def enforce() -> object | None:
    """before_request: turn away a cookie whose session is over, end a session past either limit, else note
    the activity (at most about once a minute)."""
    if request.path.startswith(SKIPPED_PREFIXES):
        return None
    if not current_user.is_authenticated:
        if session.get("_user_id") is None:
            if TOKEN in session:  # signed out by Flask-Login's session protection: its row ends too
                _end_orphan(session.pop(TOKEN))
            return None
        row = console_sessions.find(session.get(TOKEN))  # why it is over, to say so
        _forget()
        if request.endpoint == "auth.login":
            return None
        return _signed_out(_ended_message(row.end_reason if row else None))
    row = current_row()
    now = utcnow()
    if reason := console_sessions.expiry(row, now):
        # Recorded unless another request, or the scheduler's job, ended it since it was read.
        console_sessions.end_at_limit(row, reason, now)
        db.session.commit()
        message = _ended_message(row.end_reason)  # as it ended, whichever request ended it
        _forget()
        return _signed_out(message)
    if request.endpoint not in NOT_ACTIVITY and console_sessions.note_activity(row, now):
        db.session.commit()
    return None


def _end_orphan(token: str) -> None:
    """Flask-Login's strong session protection signs a browser out when its address or User-Agent changes (a
    browser update does) by dropping the user's id from the cookie, not this module's token: the row would stay
    live, for any copy of the old cookie sent from the old address and browser, until a limit. It ends now, as
    a sign-out, or at its limit (auth.timeout, its actor the user as at the limit) when it is past one."""
    row = console_sessions.find(token)
    if row is None or row.ended_at is not None:
        return
    if expired := console_sessions.expiry(row):
        console_sessions.end_at_limit(row, expired, actor=row.user.username)  # no user signed in to name
    elif console_sessions.end(row, "logout"):
        audit.record("auth.logout", row.user.username)
    db.session.commit()


def _forget() -> None:
    logout_user()
    session.pop(TOKEN, None)
    g.pop("console_session", None)


def _forget_csrf() -> None:
    """Drop Flask-WTF's CSRF secret: the next page makes a new one. At sign-out, and at a sign-in by anyone
    but the user it was made for: kept, the anonymous sign-in page's token served the signed-in forms, and
    the last user's the next user's on the same browser. Kept when a limit or another session ended the
    sign-in and the same user signs in again: a form typed before the limit is then sent as it is."""
    field = current_app.config.get("WTF_CSRF_FIELD_NAME", "csrf_token")
    session.pop(field, None)
    session.pop(CSRF_OWNER, None)
    g.pop(field, None)


def _ended_message(reason: str | None) -> str:
    if reason == "idle":
        return ngettext("You were signed out after %(num)d minute without activity; sign in again to go on.",
                        "You were signed out after %(num)d minutes without activity; sign in again to go on.",
                        console_sessions.idle_seconds() // 60)
    if reason == "session_limit":
        seconds = console_sessions.session_seconds()
        if seconds % 1800:  # "0.333333 hours": a limit that is no whole number of half hours is said in minutes
            return ngettext("Your sign-in ended %(num)d minute after it began; sign in again to go on.",
                            "Your sign-in ended %(num)d minutes after it began; sign in again to go on.",
                            round(seconds / 60))
        hours = seconds / 3600
        # A part of an hour takes the plural, as English counts it: "0.5 hours", "1.5 hours".
        return ngettext("Your sign-in ended %(hours)s hour after it began; sign in again to go on.",
                        "Your sign-in ended %(hours)s hours after it began; sign in again to go on.",
                        int(hours) if hours.is_integer() else 2, hours=f"{hours:g}")
    if reason == "ended_by_user":
        return _("This sign-in was ended from another of your sessions; sign in again to go on.")
    if reason in ("ended_by_admin", "password_reset", "disabled"):
        return _("An administrator ended this sign-in; sign in again to go on.")
    if reason == "database_restore":
        return _("The registry's database was restored from a backup; sign in again to go on.")
    if reason == "password_change":
        return _("Your password was changed in another session; sign in with the new one to go on.")
    return str(current_app.login_manager.login_message)


def _signed_out(message: str):
    flash(message, "info")  # also when the page's script asked: the next page it opens says why
    if request.accept_mimetypes.best == "application/json" or request.endpoint in NOT_ACTIVITY:
        return jsonify({"error": {"code": "signed_out", "message": message}, "seconds_left": 0}), 401
    return redirect(url_for("auth.login", next=_return_path()))


def _return_path() -> str | None:
    """Where to come back to after signing in again: this page, or for a form sent after the limit, the
    page that held the form (its own URL may answer only POST; so may the address of a refused form's page,
    which `pages.page_address` turns into the page's own)."""
    if request.method == "GET":
        return request.full_path.rstrip("?")
    return pages.page_address(request.referrer)
