"""Console users, roles (ministry_admin, provincial_admin, auditor) and sign-in."""

from __future__ import annotations

from app.extensions import login_manager


@login_manager.user_loader
def load_user(user_id: str):
    """Signed in only while the cookie's console session is live (app/auth/idle.py)."""
    from app.auth import idle

    return idle.load_user(user_id)


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
