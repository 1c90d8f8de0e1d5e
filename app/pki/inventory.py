"""The certificate inventory: each certificate's state, and the lists the console, `flask ca list` and the
dashboard read, by one rule.

A certificate's holder is its node (node certificates) or, for the management node's own certificates, its
service role: the kind (route_signer, management), their node id being empty. A holder renews before its
certificate expires (a node in the last third of its 90 days, just as the old one enters the 30-day window)
and the old one stays valid until it expires: replaced by a newer valid certificate of the same holder, it
is *superseded*, not *expiring*, so "expiring" names the holders that still have to renew.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from sqlalchemy import ColumnElement, Select, and_, case, false, func, not_, or_, select
from sqlalchemy.orm import aliased

from app.database import utcnow
from app.extensions import db
from app.pki.models import CERTIFICATE_KINDS, Certificate

EXPIRING_DAYS = 30
# What the inventory filters on: "valid" is every certificate that still validates (see `_state_filter`).
STATES = ("valid", "expiring", "superseded", "expired", "revoked")


class Listed(NamedTuple):
    """A row of the inventory: the certificate and its state, read in the same query."""

    certificate: Certificate
    state: str


def superseded(now: datetime) -> ColumnElement[bool]:
    """A WHERE clause on `Certificate`: its holder has a newer certificate valid now (not revoked, inside
    its validity). "Newer" orders as `service.current_certificate` does (not_before, then issued_at), so
    every valid certificate but the holder's current one is superseded.

    One correlated EXISTS per branch, each on an equality the node_id index serves (a node's certificates;
    the service roles' rows, whose node id is NULL), so a list of thousands costs no query per row."""
    newer = aliased(Certificate, name="newer")
    valid = and_(newer.revoked_at.is_(None), newer.not_before <= now, newer.not_after > now)
    later = or_(newer.not_before > Certificate.not_before,
                and_(newer.not_before == Certificate.not_before, newer.issued_at > Certificate.issued_at))
    of_node = select(newer.serial).where(newer.node_id == Certificate.node_id, valid, later).exists()
    of_role = select(newer.serial).where(newer.node_id.is_(None), newer.kind == Certificate.kind, valid,
                                         later).exists()
    # A node certificate no node on record holds (`recording`) has no holder to be superseded within.
    return or_(and_(Certificate.node_id.is_not(None), of_node),
               and_(Certificate.node_id.is_(None), Certificate.kind != "node", of_role))


def state_expression(now: datetime) -> ColumnElement[str]:
    """The state as SQL: revoked, else expired, else superseded, else expiring (within EXPIRING_DAYS), else
    valid. Revocation and expiry come first: a revoked or expired certificate is that, replaced or not."""
    return case((Certificate.revoked_at.is_not(None), "revoked"),
                (Certificate.not_after <= now, "expired"),
                (superseded(now), "superseded"),
                (Certificate.not_after <= now + timedelta(days=EXPIRING_DAYS), "expiring"),
                else_="valid")


def _state_filter(state: str, now: datetime) -> ColumnElement[bool] | None:
    """"valid" lists every certificate that still validates, the expiring and superseded ones included: a
    superseded certificate is accepted until it expires or is revoked (the CRL and OCSP call it good), so
    it belongs in the list an admin reads to know what a leaked key could still open, or to revoke it."""
    live = and_(Certificate.revoked_at.is_(None), Certificate.not_after > now)
    return {
        "revoked": Certificate.revoked_at.is_not(None),
        "expired": and_(Certificate.revoked_at.is_(None), Certificate.not_after <= now),
        "superseded": and_(live, superseded(now)),
        "expiring": and_(live, Certificate.not_after <= now + timedelta(days=EXPIRING_DAYS), not_(superseded(now))),
        "valid": live,
    }.get(state)


def inventory_query(*, state: str = "", node_id: str = "", kind: str = "", now: datetime | None = None) -> Select:
    """select(Certificate, state), newest first. An empty state or kind filters nothing; one it does not know
    (not in STATES, CERTIFICATE_KINDS) lists nothing, never everything: the console says so at its box, and
    `flask ca list` offers the known ones only."""
    now = now or utcnow()
    # Ties (whole seconds from `flask ca record`, a bulk approval's second) by serial: one order on every page.
    query = select(Certificate, state_expression(now).label("state")).order_by(Certificate.issued_at.desc(),
                                                                                Certificate.serial)
    if node_id:
        query = query.where(Certificate.node_id == node_id)
    if kind:
        query = query.where(Certificate.kind == kind if kind in CERTIFICATE_KINDS else false())
    if state:
        condition = _state_filter(state, now)
        query = query.where(false() if condition is None else condition)
    return query


def visible_to(query: Select, user) -> Select:
    """The inventory a user may read: a provincial admin, their divisions' nodes' certificates only (not the
    management node's own)."""
    if user.role != "provincial_admin":
        return query
    from app.admission.models import Node
    from app.admission.scope import division_filter

    return query.join(Node, Node.node_id == Certificate.node_id).where(division_filter(user, Node.division_code))


def count(query: Select) -> int:
    """How many rows an `inventory_query` lists (the state column is not computed for it)."""
    return db.session.scalar(query.with_only_columns(func.count(), maintain_column_froms=True)
                             .order_by(None)) or 0


def listed(row) -> Listed:
    """`paginate`'s decode for an `inventory_query`."""
    return Listed(row[0], row[1])


def state_of(row: Certificate, now: datetime | None = None) -> str:
    """One certificate's state, by the same rule as the lists."""
    return db.session.scalar(select(state_expression(now or utcnow())).where(Certificate.serial == row.serial))
