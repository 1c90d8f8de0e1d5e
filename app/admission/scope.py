"""What a provincial admin's division prefixes reach: SQL filters, and the provinces they touch."""

from __future__ import annotations

from sqlalchemy import false, or_, true

from app.auth.models import division_prefix


def scoped(user) -> bool:
    """Whether `division_filter` filters anything for this user: a query may leave out the join it needs."""
    return user.role == "provincial_admin"


def division_filter(user, column):
    if not scoped(user):
        return true()
    # false() first: `or_()` of nothing is no condition at all, every division (a user with no scopes is never
    # stored, but one edited into the database must reach nothing, as `can_access_division` says).
    return or_(false(), *[_within(column, division_prefix(code)) for code in user.scopes])


def _within(column, prefix: str):
    """`column` starts with `prefix`, said so that an index on `column` serves it: `LIKE prefix || '%'` (what
    `startswith` renders) is no index range on SQLite, which then walks every row of the whole country. Codes
    are digits: the range up to the next prefix of the same length holds exactly the strings that start with it."""
    if not prefix.isdigit() or set(prefix) == {"9"}:
        return column.startswith(prefix)  # no next prefix of the same length; no such code in GB/T 2260
    return (column >= prefix) & (column < str(int(prefix) + 1).zfill(len(prefix)))


def provinces_within(user) -> set[str] | None:
    """The province prefixes a provincial admin's divisions reach; None for a role that sees every province
    (the same rule as `division_filter`, at the province level: the dashboard's tile map)."""
    if not scoped(user):
        return None
    return {code[:2] for code in user.scopes}
