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


def require_division_scope(user, code: str) -> None:
    """Services call this before acting on anything that belongs to a division."""
    if not user.can_access_division(code):
        raise PermissionDenied(_l("Division %(code)s is outside your scope.", code=code), code="out_of_scope",
                               field="division_code")
