"""SQL filters that keep a provincial admin inside its division prefixes."""

from __future__ import annotations

from sqlalchemy import or_, true

from app.auth.models import division_prefix


def division_filter(user, column):
    if user.role != "provincial_admin":
        return true()
    return or_(*[column.startswith(division_prefix(code)) for code in user.scopes])
