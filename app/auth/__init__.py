"""Console users, roles (ministry_admin, provincial_admin, auditor) and sign-in."""

from __future__ import annotations

import hashlib

from flask import request

from app.extensions import login_manager


@login_manager.user_loader
def load_user(user_id: str):
    """Signed in only while the cookie's console session is live (app/auth/idle.py)."""
    from app.auth import idle

    return idle.load_user(user_id)


def session_identifier() -> str:
    """What strong session protection compares: the client's address as the console sees it (ProxyFix sets
    it from X-Forwarded-For only behind MPIM_TRUSTED_PROXIES) and its User-Agent. Flask-Login's own takes the
    first X-Forwarded-For entry, which any client writes: a copied cookie sent with the victim's address there
    passed. The text hashed is spelled as Flask-Login spells it (bytes reprs, None for a missing value), so a
    session opened before this change, from an address no X-Forwarded-For contradicted, is still recognised. A port
    a proxy wrote after the address is left out (`throttle.without_port`): each new connection has another, and
    the browser was signed out at each one."""
    from app.auth.throttle import without_port

    address = without_port(request.remote_addr).encode("utf-8") if request.remote_addr is not None else None
    user_agent = request.headers.get("User-Agent")
    base = f"{address}|{user_agent.encode('utf-8') if user_agent is not None else None}"
    return hashlib.sha512(base.encode("utf-8", errors="replace")).hexdigest()


def init_app(app) -> None:
    from flask_babel import lazy_gettext

    from app.auth import idle, password_due, service
    from app.auth.cli import cli
    from app.auth.views import bp
    from app.divisions import service as divisions
    from app.scheduler import registry

    login_manager.login_view = "auth.login"
    login_manager.login_message = lazy_gettext("Please sign in to see this page.")
    login_manager.session_protection = "strong"
    login_manager._session_identifier_generator = session_identifier  # Flask-Login 0.6's hook, no public one
    app.register_blueprint(bp)
    app.before_request(idle.enforce)
    app.before_request(password_due.enforce)
    app.context_processor(lambda: {"session_clock": idle.seconds_left,
                                   "session_warning_seconds": idle.warning_seconds,
                                   "password_change_due": password_due.due_now})
    app.cli.add_command(cli)
    if service.retired_scopes_in_use not in divisions.retirement_checks:
        divisions.retirement_checks.append(service.retired_scopes_in_use)
    # Every few minutes: a session's end is recorded that long after its limit at most, its holder back or not.
    registry.register(registry.Job("auth.expire_sessions", maintenance_job, 300))


def maintenance_job() -> str:
    """Scheduler job auth.expire_sessions: the console sessions past a limit or long ended
    (`console_sessions.expire_job`), then the sign-in counters spent (`throttle.prune_job`)."""
    from app.auth import console_sessions, throttle

    return f"{console_sessions.expire_job()}, {throttle.prune_job()}"
