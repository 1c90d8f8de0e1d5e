"""Role and scope checks shared by every console view and service."""

from __future__ import annotations

from functools import wraps

from flask_babel import lazy_gettext as _l
from flask_login import current_user, login_required

from app.errors import PermissionDenied


def roles_required(*roles: str):
    """Console views: the signed-in user must hold one of `roles`."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(*args, **kwargs):
            if current_user.role not in roles:
                raise PermissionDenied(_l("Your role does not allow this page."), code="role_forbidden")
            return view(*args, **kwargs)

        return wrapper

    return decorator


ADMIN_ROLES = ("ministry_admin", "provincial_admin")


def require_admin(user) -> None:
    """Services call this before an admin's action (a token, an application, a request): auditors read only.
    The console's pages refuse them by role already; the CLI, which names its user, reaches the service."""
    if user.role not in ADMIN_ROLES:
        raise PermissionDenied(_l("Your role does not allow this action."), code="role_forbidden")


def require_division_scope(user, code: str) -> None:
    """Services call this before acting on anything that belongs to a division."""
    if not user.can_access_division(code):
        raise PermissionDenied(_l("Division %(code)s is outside your scope.", code=code), code="out_of_scope",
                               field="division_code")


def admin_lapse(user, code: str) -> str | None:
    """Why `user` could not act as an admin in division `code` now: "disabled" (the account), "not_admin" (the
    role) or "out_of_scope" (the scope; a ministry admin's is the nation); None while they could. What an admin
    issued in their own name and is used later (an enrollment token) stands only while this is None."""
    if not user.active:
        return "disabled"
    if user.role not in ADMIN_ROLES:
        return "not_admin"
    if not user.can_access_division(code):
        return "out_of_scope"
    return None
