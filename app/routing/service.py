"""Publishing the signed routing table (SPEC §5).

`publish()` runs inside the transaction of whatever changed (approval, suspension, health
round, certificate renewal): the version rises by one exactly when the change commits. The table
is built, serialised and signed once per version; the delta from the previous version is signed
then too. Workers serve those stored bytes and never rebuild the table per request.

Re-signing: a table expires 24 h after issue (MPIM_ROUTE_TTL_HOURS). The scheduler re-signs
before half of that has passed; a re-signed table is a new version with no entry changes,
because its `issued_at`/`expires_at` differ and a node must be able to tell the fresher table
by its version alone (rollback protection compares versions).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import defer

from app.admission.models import Node
from app.audit import service as audit
from app.database import get_by_number, require_number_above, serialise, utcnow
from app.errors import Conflict
from app.extensions import db
from app.routing import document
from app.routing.models import RouteChange, RouteVersion

ROUTES_LOCK_KEY = 0x524F5554
KEEP_BODIES = 20
# `delta_since` folds at most as many kept changes as the table has entries, or this many for a small table.
FOLD_MIN_ROWS = 100
# How far ahead of this process's clock a version may be dated and still count as issued within the last 7 days
# (another worker's clock a little ahead); further ahead, it was published while a clock ran fast.
FUTURE_MARGIN = timedelta(minutes=5)


def _lock() -> None:
    """One publication at a time, from reading the head to commit. On SQLite that is the write lock, taken now:
    a caller that wrote nothing yet (the re-signing job, the CLI) would otherwise take it only at its insert,
    after another process may have published the number it read as next."""
    if db.session.get_bind().dialect.name == "postgresql":
        db.session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ROUTES_LOCK_KEY})
    else:
        serialise()


def issuer() -> str:
    from app.admission.nodes import management_node_id

    return management_node_id()


def current_entries() -> dict[str, dict]:
    """Every active node that holds a current certificate, with its health status."""
    from app.health.models import NodeHealth
    from app.pki import service as pki
    fingerprints = pki.current_fingerprints()
    rows = db.session.execute(
        select(Node, NodeHealth.status).outerjoin(NodeHealth, NodeHealth.node_id == Node.node_id)
        .where(Node.status == "active")).all()
    entries = {}
    for node, health in rows:
        if node.node_id not in fingerprints:
            continue  # no certificate of ours: nobody could verify it, so it is not routable
        entries[node.node_id] = {
            "node_id": node.node_id, "division_code": node.division_code, "org_name": node.org_name,
            "system_name": node.system_name, "endpoint": node.endpoint, "status": health or "unknown",
            "cert_sha256": fingerprints[node.node_id], "capabilities": list(node.capabilities),
        }
    return entries


def head() -> RouteVersion | None:
    return db.session.scalar(select(RouteVersion).order_by(RouteVersion.version.desc()).limit(1))


def head_summary() -> RouteVersion | None:
    """`head()` without its bodies (loaded if read after all): the full table and its delta are about 1 MB
    each with 3,000 nodes, and the re-signing banner asks for the head on every page."""
    return db.session.scalar(without_bodies(select(RouteVersion)).order_by(RouteVersion.version.desc()).limit(1))


def without_bodies(query):
    return query.options(defer(RouteVersion.body), defer(RouteVersion.delta_body))


def head_version() -> int:
    return db.session.scalar(select(func.max(RouteVersion.version))) or 0


def entries_of(version: RouteVersion | None) -> dict[str, dict]:
    if version is None or version.body is None:
        return {}
    return document.nodes_by_id(json.loads(version.body)["nodes"])


def sign(body: bytes) -> tuple[str, str]:
    """(signature, signer fingerprint) for `body`; refused while the route signer in use is revoked."""
    from app.pki import own_keys
    key, certificate = own_keys.route_signer_to_sign_with()
    return base64.b64encode(document.sign_body(body, key)).decode(), document.certificate_fingerprint(certificate)


# A version column holds no more (PostgreSQL integer); `publish(above=...)` refuses to reach it.
MAX_VERSION = 2**31 - 1
# `above` leaves a million publications before MAX_VERSION: a publication past it would fail, a revocation's too.
HIGHEST_ABOVE = MAX_VERSION - 1_000_000


def publish(reason: str, *, force: bool = False, actor: str | None = None,
            above: int | None = None) -> RouteVersion | None:
    """A new version if what nodes would see changed (or `force`, for re-signing); else None.

    `above`: after restoring a backup, nodes hold versions the restored database never saw, and refuse
    every lower one as a rollback (a version they hold with other contents they would even keep as
    unchanged). The new version is then `above + 1` (at least), skipping the numbers nodes may hold."""
    _lock()
    previous = head()
    old, new = entries_of(previous), current_entries()
    changed, removed = document.compute_delta(old, new)
    if previous is not None and not changed and not removed and not force and above is None:
        return None
    require_number_above(above, HIGHEST_ABOVE)
    number = max(previous.version if previous else 0, above or 0) + 1
    if number > MAX_VERSION:
        raise Conflict(f"A routing table version cannot exceed {MAX_VERSION}.", code="versions_exhausted")
    issued_at = utcnow().replace(microsecond=0)
    expires_at = issued_at + timedelta(hours=current_app.config["MPIM_ROUTE_TTL_HOURS"])
    meta = {"issuer": issuer(), "issued_at": issued_at, "expires_at": expires_at}
    body = document.serialise(document.full_table(number, new.values(), **meta))
    signature, signer = sign(body)
    delta_body = delta_signature = None
    if previous is not None:
        delta_body = document.serialise(document.delta_document(number, previous.version, changed, removed, **meta))
        delta_signature, _ = sign(delta_body)
    lines = document.describe_changes(old, new) or ["re-signed" if previous else "first table"]
    version = RouteVersion(version=number, issued_at=issued_at, expires_at=expires_at, node_count=len(new),
                           reason=reason[:64], changes=lines[:500], body=body, signature=signature,
                           signer_sha256=signer, delta_body=delta_body, delta_signature=delta_signature)
    db.session.add(version)
    db.session.add_all([RouteChange(version=number, node_id=entry["node_id"], entry=entry) for entry in changed])
    db.session.add_all([RouteChange(version=number, node_id=node_id, entry=None) for node_id in removed])
    _prune(number)
    db.session.flush()
    if db.session.get_bind().dialect.name == "postgresql":
        # Delivered at commit to every worker's listener (serving.py): no query per pull.
        db.session.execute(text("SELECT pg_notify('mpim_routes', :v)"), {"v": str(number)})
    audit.record("routes.publish", f"v{number}", {"reason": reason, "changes": lines[:20]},
                 **({"actor": actor} if actor else {}))
    return version


def _prune(number: int) -> None:
    """Keep bodies of the last 20 versions; keep changes from the first of the last 1,000 versions or of the last
    7 days on, whichever is older."""
    # Only rows still holding a body: rewriting every old row each time slowed each publication as history grew.
    db.session.execute(update(RouteVersion).where(RouteVersion.version <= number - KEEP_BODIES,
                                                  RouteVersion.body.is_not(None))
                       .values(body=None, delta_body=None).execution_options(synchronize_session=False))
    # Only a run of the oldest goes, below the first version either rule keeps. Per version, a version issued
    # while the clock was behind lost its changes while earlier ones stayed, and a delta folded across that hole
    # (oldest_delta_base looks at the oldest kept) left out what it changed. Two index reads, not a history scan.
    recent = db.session.scalar(select(func.min(RouteVersion.version)).where(RouteVersion.version > number - 1000))
    now = utcnow()
    cutoff = now - timedelta(days=7)
    # Not a version dated ahead of the clock (published while it ran fast): counted young until the clock caught
    # up, it kept every later change with it. The last 1,000 versions are kept whatever their dates.
    young = db.session.scalar(select(func.min(RouteVersion.version)).where(
        RouteVersion.issued_at >= cutoff, RouteVersion.issued_at <= now + FUTURE_MARGIN))
    first_kept = min(filter(None, (recent, young, number)))
    db.session.execute(delete(RouteChange).where(RouteChange.version < first_kept).execution_options(
        synchronize_session=False))


def oldest_delta_base() -> int:
    """`since` values below this get the full table: their changes are no longer kept."""
    first = db.session.scalar(select(func.min(RouteChange.version)))
    return (first - 1) if first else head_version()


def delta_since(since: int, current: RouteVersion) -> bytes | None:
    """The delta from `since` to `current`, folded from the kept per-version changes; None (the caller sends
    the full table) when the kept history cannot tell which nodes the table of `since` listed, or when more
    changes were kept after `since` than `current` has entries (at least FOLD_MIN_ROWS): folding them would
    cost more than the full table, which is stored signed, and a busy week's history held a worker for a minute.

    `removed` names only nodes that table listed: a node added and removed again after `since` is in
    neither list, else a client holding `since` would be told to remove a node it never had."""
    after = select(RouteChange).where(RouteChange.version > since, RouteChange.version <= current.version)
    bound = max(current.node_count, FOLD_MIN_ROWS)
    # Counted no further than the bound: a count of the whole history would be a scan of it too.
    if db.session.scalar(select(func.count()).select_from(
            after.with_only_columns(RouteChange.version).limit(bound + 1).subquery())) > bound:
        return None
    final: dict[str, dict | None] = {}
    first: dict[str, dict | None] = {}
    for row in db.session.scalars(after.order_by(RouteChange.version)):
        final[row.node_id] = row.entry
        first.setdefault(row.node_id, row.entry)
    if not _consecutive(since, current.version):
        return None
    gone = [node_id for node_id, entry in final.items() if entry is None]
    listed = _listed_at(since, gone, first)
    if listed is None:
        return None
    changed = [entry for entry in final.values() if entry is not None]
    removed = [node_id for node_id in gone if node_id in listed]
    return document.serialise(document.delta_document(
        current.version, since, changed, removed, issuer=issuer(), issued_at=current.issued_at,
        expires_at=current.expires_at))


def _consecutive(since: int, version: int) -> bool:
    """Whether this database published `since` and every version up to `version`. Not so across the numbers
    skipped after a restore (`publish(above=...)`): a node holding one of them holds a table this database
    never built, and no delta from its history applies to it. Version 0 is the empty table before the first."""
    lowest = max(since, 1)
    count = db.session.scalar(select(func.count()).select_from(RouteVersion)
                              .where(RouteVersion.version >= lowest, RouteVersion.version <= version))
    return count == version - lowest + 1


def _listed_at(since: int, node_ids: list[str], first: dict[str, dict | None]) -> set[str] | None:
    """Which of `node_ids` the table of version `since` listed; None if the kept history cannot tell."""
    if not node_ids:
        return set()
    base = find(since)
    if base is not None and base.body is not None:
        return set(entries_of(base)) & set(node_ids)
    latest: dict[str, dict | None] = {}
    for row in db.session.scalars(select(RouteChange).where(RouteChange.version <= since,
                                                            RouteChange.node_id.in_(node_ids))
                                  .order_by(RouteChange.version)):
        latest[row.node_id] = row.entry
    listed = set()
    for node_id in node_ids:
        if node_id in latest:  # its last change up to `since` says whether it was listed then
            if latest[node_id] is not None:
                listed.add(node_id)
        elif first[node_id] is None:  # unchanged until removed after `since`: listed then
            listed.add(node_id)
        else:  # added or changed after `since`, its earlier changes pruned: cannot tell
            return None
    return listed


def resign_job() -> str:
    """Scheduler job: re-sign before half the table's lifetime has passed. Meanwhile, a table that lists
    a node whose certificate has expired since is published again without it: an expiry is no event
    that publishes, and a node already down changes nothing a health round would publish."""
    current = head_summary()
    if current is None and not current_entries():  # the console says the first approval publishes the first
        return "nothing to do: no table published yet"
    ttl = timedelta(hours=current_app.config["MPIM_ROUTE_TTL_HOURS"])
    if current is not None and current.expires_at - utcnow() > ttl / 2:
        version = publish("certificate expired")
        db.session.commit()
        if version is not None:
            return f"published v{version.version}: {'; '.join(version.changes[:20])}"
        return f"v{current.version} fresh until {current.expires_at.isoformat()}"
    version = publish("re-sign", force=True)
    db.session.commit()
    return f"published v{version.version}" if version else "nothing to do"


# The re-signing job runs every 10 minutes once half the table's lifetime has passed; this much later, it is not.
RESIGN_GRACE = timedelta(minutes=30)


def resigning_overdue(now: datetime | None = None) -> tuple[str, RouteVersion] | None:
    """("expired" | "late", head) when the table was not re-signed on time (`resign_job`), else None: every node
    refuses an expired table, and a stopped scheduler fails no request, so nothing else would say so."""
    current = head_summary()
    if current is None:
        return None
    now = now or utcnow()
    if now >= current.expires_at:
        return "expired", current
    if now - current.issued_at > (current.expires_at - current.issued_at) / 2 + RESIGN_GRACE:
        return "late", current
    return None


def history_query():
    """Newest first, without the bodies: the lists show what changed, and a download reads one body (`find`)."""
    return without_bodies(select(RouteVersion)).order_by(RouteVersion.version.desc())


def find(version_number: int) -> RouteVersion | None:
    return get_by_number(RouteVersion, version_number)


@dataclass(frozen=True)
class SignerFound:
    """Which of our route signers signed a body: `current` is the signer in use (SHA-256); `signer`
    the one whose signature verifies (None when none does), and that certificate's state."""

    current: str
    signer: str | None = None
    signer_state: str | None = None


def signer_of(body: bytes, signature_der: bytes) -> SignerFound:
    """The current route signer first, then the earlier ones (a table kept from before a rotation
    is authentic, but nodes take only tables signed by the current one). Certificates only: no key is
    opened, so a table is checked while the CA key cannot be."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from app.pki import inventory, own_keys
    from app.pki import service as pki
    def verifies(certificate: x509.Certificate) -> bool:
        try:
            certificate.public_key().verify(signature_der, body, ec.ECDSA(hashes.SHA256()))
            return True
        except (InvalidSignature, TypeError):  # TypeError: a key that is not EC
            return False

    certificate = own_keys.route_signer_certificate()
    current = document.certificate_fingerprint(certificate)
    if verifies(certificate):
        return SignerFound(current, current, "valid")
    for row in pki.service_certificates("route_signer"):
        if row.sha256 != current and verifies(x509.load_pem_x509_certificate(row.pem.encode())):
            return SignerFound(current, row.sha256, inventory.state_of(row))
    return SignerFound(current)

