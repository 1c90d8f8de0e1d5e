"""A user whose password is due for a change (`service.password_change_due`: a first password someone else
chose, or one older than MPIM_PASSWORD_MAX_DAYS) reaches only the change form until it is done.

Signing out, switching the language and the session clock stay open; everything else leads to the form, and
back to the page asked for once the password is changed.
"""

from __future__ import annotations

from flask import jsonify, redirect, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user

from app.auth import idle, service

OPEN_WHILE_DUE = {"auth.change_password", "auth.logout", "auth.login", "auth.session_status",
                  "auth.session_keepalive", "i18n.switch_language", "static"}


def enforce() -> object | None:
    """before_request, after the session clock (a session that has ended is not asked for a password)."""
    if (request.path.startswith(idle.SKIPPED_PREFIXES) or request.endpoint in OPEN_WHILE_DUE
            or not current_user.is_authenticated):
        return None
    if service.password_change_due(current_user) is None:
        return None
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"error": {"code": "password_change_required",
                                  "message": _("Change your password first.")}}), 403
    target = request.full_path.rstrip("?") if request.method == "GET" else None
    return redirect(url_for("auth.change_password", next=target))


def due_now() -> bool:
    """For templates: the signed-in user must change their password before anything else."""
    return current_user.is_authenticated and service.password_change_due(current_user) is not None


def reason_text(reason: str | None, max_days: int) -> str | None:
    """The change form's explanation."""
    if reason == "temporary":
        # Also the first ministry admin's, which `flask users ensure-admin` generated: no administrator set it.
        return _("Your password was chosen for you, by an administrator or when the registry was set up: choose "
                 "your own before going on.")
    if reason == "expired":
        return ngettext("Your password is more than %(num)d day old: choose a new one before going on.",
                        "Your password is more than %(num)d days old: choose a new one before going on.", max_days)
    return None
