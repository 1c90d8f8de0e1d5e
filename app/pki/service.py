"""The CA's rules as the console, the API, the CLI and admission's hooks call them.

Crypto lives in `authority.py` / `csr_policy.py` / `ocsp.py` (no database); this module adds
configuration, persistence, audit and the lifecycle rules (issue on approval, renew in the last
third, revoke with the node, CRL regenerated on every revocation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import or_, select
from sqlalchemy.orm import make_transient_to_detached

from app.audit import service as audit
from app.database import serialise, utcnow
from app.errors import Conflict, DomainError, NotFound, PermissionDenied, ValidationFailed
from app.extensions import db
from app.labels import status_word
from app.pki import authority as ca
from app.pki import csr_policy, ocsp
from app.pki.models import Certificate, CRLState

INSERT_CERTIFICATE = Certificate.__table__.insert()
CERTIFICATE_COLUMNS = tuple(Certificate.__table__.columns.keys())

# Functions (node_id) run after a node's current certificate changed (routing re-publishes).
certificate_changed: list = []
# Functions (actor) run after the route signer was rotated (routing re-signs the table as a new version).
route_signer_changed: list = []

ROOT_CRL_WARNING_DAYS = 60
INTERMEDIATE_CRL, ROOT_CRL = 1, 2  # CRLState rows
# RFC 5280 reasons an admin may give. certificateHold is left out: a hold is meant to be lifted, and
# a revocation here is final (nothing ever takes a certificate off the CRL).
REASONS = ("unspecified", "key_compromise", "affiliation_changed", "superseded", "cessation_of_operation",
           "privilege_withdrawn")


class CANotReady(DomainError):
    code = "ca_not_initialised"
    status = 503


def ca_directory() -> Path:
    return Path(current_app.config["MPIM_CA_DIR"])


def passphrase() -> bytes:
    value = current_app.config.get("MPIM_CA_PASSPHRASE")
    path = current_app.config.get("MPIM_CA_PASSPHRASE_FILE")
    if not value and path and Path(path).exists():
        value = Path(path).read_text().strip()
    if not value:
        raise CANotReady("No CA passphrase: set MPIM_CA_PASSPHRASE or MPIM_CA_PASSPHRASE_FILE.")
    return value.encode()


def ca_config() -> ca.CAConfig:
    from urllib.parse import urlsplit

    config = current_app.config
    base = config["MPIM_BASE_URL"].rstrip("/")
    return ca.CAConfig(
        management_host=urlsplit(base).hostname or "127.0.0.1",
        organisation=config["MPIM_CA_ORGANISATION"], root_common_name=config["MPIM_CA_ROOT_NAME"],
        intermediate_common_name=config["MPIM_CA_INTERMEDIATE_NAME"], key_type=config["MPIM_CA_KEY_TYPE"],
        crl_url=f"{base}/ca/crl.crl", root_crl_url=f"{base}/ca/root-crl.crl", ocsp_url=f"{base}/ca/ocsp",
        node_validity_days=config["MPIM_CERT_DAYS"],
    )


def authority() -> ca.Authority:
    """The loaded CA, cached per app (decrypting the key file costs a key derivation); a service key
    rotated by another process (`flask ca rotate-route-signer`) is picked up here, on next use."""
    cached = current_app.extensions.get("mpim_authority")
    if cached is None:
        if not ca.is_initialised(ca_directory()):
            raise CANotReady("The CA is not initialised: run `flask ca init`.")
        cached = current_app.extensions["mpim_authority"] = ca.Authority.load(ca_directory(), passphrase(),
                                                                              ca_config())
    else:
        cached.refresh_service_keys()
    return cached


def is_ready() -> bool:
    return ca.is_initialised(ca_directory())


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def key_fingerprint(public_key) -> str:
    """SHA-256 of the SubjectPublicKeyInfo (DER): a CSR and the certificates issued for it share it."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_lock_name(key_sha256: str) -> str:
    """The name issuance and admission queue on (`app.database.serialise`) while they check a key."""
    return f"key:{key_sha256}"


def key_certified_elsewhere(key_sha256: str, node_id: str | None) -> Certificate | None:
    """A certificate, not revoked, that certifies this key for another node (or for the CA's own services)."""
    query = select(Certificate).where(Certificate.key_sha256 == key_sha256, Certificate.revoked_at.is_(None))
    if node_id:
        query = query.where(or_(Certificate.node_id.is_(None), Certificate.node_id != node_id))
    return db.session.scalar(query.order_by(Certificate.issued_at).limit(1))


def require_key_unused(key_sha256: str, node_id: str | None) -> None:
    """One key, one node: a second node with the same key could open sessions and sign as the first."""
    other = key_certified_elsewhere(key_sha256, node_id)
    if other is not None:
        raise Conflict(_l("This CSR's key is already certified for %(holder)s (certificate %(serial)s): every node "
                          "needs its own key. Generate a new key and CSR.",
                          holder=other.node_id or other.kind, serial=other.serial),
                       code="key_in_use", field="csr")


def store(certificate: x509.Certificate, kind: str, node_id: str | None, actor: str, *,
          key_sha256: str | None = None) -> Certificate:
    """Insert the certificate's row and its audit entry; returns the row, persistent in the session.
    `key_sha256`: the key's fingerprint when the caller has it already (issuance checked it).

    The row goes in as a plain table insert and is then attached to the session as already loaded
    (`make_transient_to_detached`), so it behaves like any queried row (changes to it are flushed)
    without the unit of work's flush, which cost more than signing the certificate."""
    row = Certificate(
        serial=format(certificate.serial_number, "x"), kind=kind, node_id=node_id,
        subject=certificate.subject.rfc4514_string()[:300], sha256=fingerprint(certificate),
        key_sha256=key_sha256 or key_fingerprint(certificate.public_key()),
        key_description=csr_policy.describe_key(certificate.public_key()),
        pem=certificate.public_bytes(serialization.Encoding.PEM).decode(),
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        issued_at=utcnow(), issued_by=actor, revoked_at=None, revocation_reason=None)
    db.session.flush()  # a plain insert does not autoflush: a just-admitted node's row goes in first
    db.session.execute(INSERT_CERTIFICATE, {column: getattr(row, column) for column in CERTIFICATE_COLUMNS})
    make_transient_to_detached(row)
    db.session.add(row)
    audit.record("certificate.issue", row.serial, {"kind": kind, "node": node_id, "sha256": row.sha256,
                                                   "not_after": row.not_after}, actor=actor)
    return row


def initialise(*, key_type: str | None = None, actor: str = "cli") -> dict:
    """`flask ca init`: root + intermediate, then the route signer and the management node's TLS
    certificate, then the first CRL. Refuses to overwrite an existing CA."""
    config = ca_config()
    if key_type:
        config = ca.CAConfig(**{**config.__dict__, "key_type": key_type})
    ca.init_ca(ca_directory(), passphrase(), config)
    current_app.extensions.pop("mpim_authority", None)
    loaded = authority()
    audit.record("ca.init", loaded.intermediate_certificate.subject.rfc4514_string(),
                 {"key_type": config.key_type, "root_not_after": loaded.root_certificate.not_valid_after_utc},
                 actor=actor)
    signer = store(loaded.route_signer_certificate, "route_signer", None, actor)
    management = store(loaded.management_certificate, "management", None, actor)
    regenerate_crl(actor=actor)
    regenerate_root_crl(actor=actor)
    return {"root": fingerprint(loaded.root_certificate), "intermediate": fingerprint(loaded.intermediate_certificate),
            "route_signer": signer.sha256, "management": management.sha256}


# --- node certificates ---------------------------------------------------------------------------

def issue_for_node(node, csr_pem: str, *, actor: str) -> Certificate:
    from app.admission.information import endpoint_host

    csr = csr_policy.load_csr(csr_pem)
    csr_policy.check_csr(csr)
    key_sha256 = key_fingerprint(csr.public_key())  # the certificate certifies this very key
    serialise(key_lock_name(key_sha256))  # an approval and a renewal racing with one key: one wins
    require_key_unused(key_sha256, node.node_id)
    certificate = authority().issue_node_certificate(
        csr, node_id=node.node_id, org_name=node.org_name, endpoint_host=endpoint_host(node.endpoint),
        validity_days=current_app.config["MPIM_CERT_DAYS"])
    return store(certificate, "node", node.node_id, actor, key_sha256=key_sha256)


def node_admitted(node, application) -> None:
    """admission hook: approval issues the certificate from the application's CSR."""
    issue_for_node(node, application.csr_pem, actor=application.reviewed_by or "system")


def node_status_changed(node, old: str, new: str, reason: str) -> None:
    """admission hook: revoking a node revokes all its certificates."""
    if new == "revoked":
        now = utcnow()
        for row in node_certificates(node.node_id):
            if row.revoked_at is None and row.not_after > now:
                row.revoked_at, row.revocation_reason = now, "cessation_of_operation"
                audit.record("certificate.revoke", row.serial,
                             {"node": node.node_id, "reason": "cessation_of_operation"})
        regenerate_crl()


def node_changed(node, application, changes: dict) -> None:
    """admission hook: an approved change with a new CSR gets a new certificate; when the endpoint
    host changed, the old certificates name a host the node no longer has and are superseded."""
    if not application.csr_pem:
        return
    previous = [row for row in node_certificates(node.node_id) if row.revoked_at is None]
    issue_for_node(node, application.csr_pem, actor=application.reviewed_by or "system")
    if "endpoint" in changes:
        from app.admission.information import endpoint_host

        old_host, new_host = (endpoint_host(value) for value in changes["endpoint"])
        if old_host != new_host:
            for row in previous:
                row.revoked_at, row.revocation_reason = utcnow(), "superseded"
                audit.record("certificate.revoke", row.serial, {"node": node.node_id, "reason": "superseded"})
            regenerate_crl()


def node_certificates(node_id: str) -> list[Certificate]:
    return list(db.session.scalars(select(Certificate).where(Certificate.node_id == node_id)
                                   .order_by(Certificate.issued_at.desc())))


def service_certificates(kind: str) -> list[Certificate]:
    """The management node's own certificates of one kind ("route_signer", "management"), newest first."""
    return list(db.session.scalars(select(Certificate).where(Certificate.kind == kind)
                                   .order_by(Certificate.issued_at.desc())))


def current_certificate(node_id: str) -> Certificate | None:
    """The newest certificate that is valid now and not revoked."""
    now = utcnow()
    return db.session.scalar(select(Certificate).where(
        Certificate.node_id == node_id, Certificate.revoked_at.is_(None), Certificate.not_before <= now,
        Certificate.not_after > now).order_by(Certificate.not_before.desc(), Certificate.issued_at.desc()).limit(1))


def current_fingerprints() -> dict[str, str]:
    """node id → SHA-256 of its newest valid certificate (what the routing table carries)."""
    now = utcnow()
    rows = db.session.execute(select(Certificate.node_id, Certificate.sha256).where(
        Certificate.kind == "node", Certificate.revoked_at.is_(None), Certificate.not_before <= now,
        Certificate.not_after > now).order_by(Certificate.node_id, Certificate.not_before, Certificate.issued_at))
    result: dict[str, str] = {}
    for node_id, sha256 in rows:
        result[node_id] = sha256  # ordered oldest first: the newest wins
    return result


def session_certificates(node_id: str) -> dict:
    """What A.2 may verify a session signature with, and why nothing, when nothing."""
    now = utcnow()
    rows = node_certificates(node_id)
    usable = [x509.load_pem_x509_certificate(row.pem.encode()) for row in rows
              if row.revoked_at is None and row.not_before <= now < row.not_after]
    return {"usable": usable, "revoked": any(row.revoked_at for row in rows),
            "expired": any(row.not_after <= now for row in rows)}


def renew(node, csr_pem: str, *, by=None) -> Certificate:
    """A node renews in the last third of its certificate's validity; an admin (`by`) any time.
    The old certificate stays valid until it expires; the route table carries the new one."""
    if node.status != "active":
        raise Conflict(_l("A %(status)s node cannot renew its certificate.", status=status_word(node.status)),
                       code=f"node_{node.status}")
    if by is not None and by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    csr_policy.check_csr(csr_policy.load_csr(csr_pem))  # bad input is reported before the window
    current = current_certificate(node.node_id)
    if by is None and current is not None:
        lifetime = current.not_after - current.not_before
        opens = current.not_after - lifetime / 3
        if utcnow() < opens:
            raise Conflict(_l("Renewal opens at %(when)s, in the last third of the validity.",
                              when=opens.isoformat(timespec="seconds")), code="renewal_too_early")
    row = issue_for_node(node, csr_pem, actor=by.username if by else f"node:{node.node_id}")
    for hook in certificate_changed:
        hook(node.node_id)
    return row


# --- revocation, CRL, OCSP -------------------------------------------------------------------------

@dataclass(frozen=True)
class Revoked:
    """A revocation's outcome; `replacement` is the management node's new certificate when the revoked
    one was in use (a route signer or TLS identity is replaced at once), else None."""

    certificate: Certificate
    replacement: Certificate | None = None


def revoke(certificate: Certificate, reason: str, *, by) -> Revoked:
    if by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    if reason not in REASONS:
        raise ValidationFailed(_l("Unknown revocation reason %(reason)s.", reason=reason), code="invalid_reason",
                               field="reason")
    serialise(f"certificate:{certificate.serial}")  # two admins revoking the route signer rotate it once
    db.session.refresh(certificate)
    if certificate.revoked_at is not None:
        raise Conflict(_l("This certificate is revoked already."), code="already_revoked")
    in_service = in_service_role(certificate)
    certificate.revoked_at, certificate.revocation_reason = utcnow(), reason
    audit.record("certificate.revoke", certificate.serial, {"node": certificate.node_id, "reason": reason},
                 actor=by.username)
    replacement = None
    if in_service == "route_signer":  # nodes would keep accepting tables signed by a revoked key
        replacement = rotate_route_signer(actor=by.username)
    elif in_service == "management":  # and nodes would keep accepting our polls with it
        replacement = rotate_management_certificate(actor=by.username)
    regenerate_crl(actor=by.username)
    if certificate.node_id:
        for hook in certificate_changed:
            hook(certificate.node_id)
    return Revoked(certificate, replacement)


def in_service_role(certificate: Certificate) -> str | None:
    """"route_signer" or "management" when the row is the management node's certificate in use now
    (revoking it replaces it at once), else None."""
    if certificate.kind not in ("route_signer", "management"):
        return None
    loaded = authority()
    current = loaded.route_signer_certificate if certificate.kind == "route_signer" else loaded.management_certificate
    return certificate.kind if current is not None and fingerprint(current) == certificate.sha256 else None


def get(serial: str) -> Certificate:
    row = db.session.get(Certificate, serial.lower().lstrip("0") or "0") if len(serial) <= 40 else None
    if row is None:
        raise NotFound(_l("No certificate with serial %(serial)s.", serial=serial), code="certificate_not_found")
    return row


def regenerate_crl(*, actor: str | None = None) -> CRLState:
    """The intermediate's CRL (row INTERMEDIATE_CRL): every revoked certificate it issued."""
    revoked = db.session.execute(select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason)
                                 .where(Certificate.revoked_at.is_not(None))).all()
    entries = [(int(serial, 16), at, reason) for serial, at, reason in revoked]
    return _next_crl(INTERMEDIATE_CRL, current_app.config["MPIM_CRL_DAYS"],
                     lambda number, now, until: authority().build_crl(entries, crl_number=number, this_update=now,
                                                                      next_update=until))


def regenerate_root_crl(*, root_key_path: Path | None = None, actor: str | None = None) -> CRLState:
    """The root's CRL (row ROOT_CRL), signed with the root key: from the CA directory while it is
    online, else from `root_key_path` (the exported key, brought back for this)."""
    loaded = authority()
    root_key = loaded.load_root_key(root_key_path)
    state = _next_crl(ROOT_CRL, current_app.config["MPIM_ROOT_CRL_DAYS"],
                      lambda number, now, until: loaded.build_root_crl(root_key, crl_number=number, this_update=now,
                                                                       next_update=until))
    audit.record("ca.root_crl", str(state.crl_number), {"next_update": state.next_update}, actor=actor)
    return state


def _next_crl(row_id: int, days: int, build) -> CRLState:
    """Sign the next CRL of one issuer with `build(number, this_update, next_update)` and keep it."""
    now = utcnow().replace(microsecond=0)
    state = db.session.get(CRLState, row_id)
    number = (state.crl_number + 1) if state else 1
    crl = build(number, now, now + timedelta(days=days))
    if state is None:
        state = CRLState(id=row_id)
        db.session.add(state)
    state.crl_number, state.this_update, state.next_update = number, now, crl.next_update_utc
    state.pem = crl.public_bytes(serialization.Encoding.PEM).decode()
    state.der = crl.public_bytes(serialization.Encoding.DER)
    db.session.flush()
    return state


def crl_refresh_job() -> str:
    """Scheduler job: a new CRL once half of the current one's validity has passed; the root's CRL
    too while the root key is online (offline, the dashboard warns before it runs out)."""
    if not is_ready():
        return "no CA"
    now = utcnow()
    done = []
    state = db.session.get(CRLState, INTERMEDIATE_CRL)
    half = timedelta(days=current_app.config["MPIM_CRL_DAYS"]) / 2
    if state is not None and state.next_update - now > half:
        done.append(f"CRL {state.crl_number} good until {state.next_update.isoformat()}")
    else:
        state = regenerate_crl(actor="scheduler")
        done.append(f"issued CRL {state.crl_number}")
    root_state = db.session.get(CRLState, ROOT_CRL)
    root_half = timedelta(days=current_app.config["MPIM_ROOT_CRL_DAYS"]) / 2
    if authority().root_key_online and (root_state is None or root_state.next_update - now <= root_half):
        root_state = regenerate_root_crl(actor="scheduler")
        done.append(f"issued root CRL {root_state.crl_number}")
    db.session.commit()
    return "; ".join(done)


def current_crl(which: int = INTERMEDIATE_CRL) -> CRLState:
    """The intermediate's CRL or the root's (ROOT_CRL)."""
    state = db.session.get(CRLState, which)
    if state is None:
        raise CANotReady("No root CRL has been issued: run `flask ca root-crl --root-key PATH`." if which == ROOT_CRL
                         else "No CRL has been issued: run `flask ca init`.")
    return state


def ocsp_response(request_der: bytes) -> bytes:
    def lookup(serial: int) -> ocsp.CertStatus:
        row = db.session.get(Certificate, format(serial, "x"))
        if row is None:
            return ocsp.CertStatus("unknown")
        if row.revoked_at is not None:
            return ocsp.CertStatus("revoked", row.revoked_at, row.revocation_reason)
        return ocsp.CertStatus("good")

    loaded = authority()
    return ocsp.respond(request_der, lookup, issuer=loaded.intermediate_certificate,
                        signing_key=loaded.intermediate_key)


# --- the management node's own keys ---------------------------------------------------------------

def route_signer():
    """(signing key, certificate) for routing tables."""
    loaded = authority()
    return loaded.route_signer_key.signer(), loaded.route_signer_certificate


def rotate_route_signer(*, actor: str) -> Certificate:
    """A new route-signing pair; the routing table is then re-signed with it (`route_signer_changed`)."""
    certificate = authority().create_service_certificate("route-signer")
    row = store(certificate, "route_signer", None, actor)
    for hook in route_signer_changed:
        hook(actor)
    return row


def rotate_management_certificate(*, actor: str) -> Certificate:
    """A new TLS identity for the management node (health polling picks it up on its next round)."""
    return store(authority().create_service_certificate("management"), "management", None, actor)


def service_certificates_due(now: datetime | None = None) -> list[str]:
    """The management node's own certificates in the last third of their lifetime."""
    now = now or utcnow()
    loaded = authority()
    due = []
    for role, certificate in (("route-signer", loaded.route_signer_certificate),
                              ("management", loaded.management_certificate)):
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        if certificate.not_valid_after_utc - now <= lifetime / 3:
            due.append(role)
    return due


def service_renewal_job() -> str:
    """Scheduler job: renew the route signer and the management node's TLS certificate in the last
    third of their lifetime, so neither runs out unnoticed (an expired route signer would make every
    node refuse the routing table)."""
    if not is_ready():
        return "no CA"
    due = service_certificates_due()
    for role in due:
        if role == "route-signer":
            rotate_route_signer(actor="scheduler")
        else:
            rotate_management_certificate(actor="scheduler")
    db.session.commit()
    return f"renewed {', '.join(due)}" if due else "nothing due"


def present_management_identity(context) -> None:
    """Load the management node's TLS certificate and key into `context` (an `ssl.SSLContext`), under
    the rotation lock: a renewal in another process never hands us its new key beside the old certificate."""
    directory = ca_directory()
    with authority().service_files_settled():
        context.load_cert_chain(directory / "management.pem", directory / "management.key", password=passphrase())


def management_client_ssl_context():
    """TLS context for polling nodes: trusts our CA, presents the management node's certificate."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=authority().chain_pem().decode())
    present_management_identity(context)
    return context


def expiry_warnings(now: datetime | None = None) -> list[str]:
    """Long before a CA certificate expires: a year for the root, half a year for the intermediate."""
    if not is_ready():
        return []
    now = now or utcnow()
    loaded = authority()
    warnings = []
    # The route signer and the management certificate renew themselves in their last third
    # (`service_renewal_job`); a warning for them means the scheduler is not running.
    for label, certificate, horizon in ((_l("root CA"), loaded.root_certificate, 365),
                                        (_l("intermediate CA"), loaded.intermediate_certificate, 180),
                                        (_l("route signer"), loaded.route_signer_certificate, 30),
                                        (_l("management node TLS"), loaded.management_certificate, 30)):
        left = certificate.not_valid_after_utc - now
        if left < timedelta(days=horizon):
            warnings.append(_l("The %(label)s certificate expires in %(days)s days (%(date)s).", label=label,
                               days=max(0, left.days), date=certificate.not_valid_after_utc.date().isoformat()))
    root_crl = db.session.get(CRLState, ROOT_CRL)
    if root_crl is not None and root_crl.next_update - now < timedelta(days=ROOT_CRL_WARNING_DAYS):
        warnings.append(_l("The root CRL runs out in %(days)s days (%(date)s): bring the root key online and run "
                           "`flask ca root-crl`.", days=max(0, (root_crl.next_update - now).days),
                           date=root_crl.next_update.date().isoformat()))
    return warnings


def inventory_query(*, state: str = "", node_id: str = "", now: datetime | None = None):
    now = now or utcnow()
    query = select(Certificate).order_by(Certificate.issued_at.desc())
    if node_id:
        query = query.where(Certificate.node_id == node_id)
    if state == "revoked":
        query = query.where(Certificate.revoked_at.is_not(None))
    elif state == "expired":
        query = query.where(Certificate.revoked_at.is_(None), Certificate.not_after <= now)
    elif state == "expiring":
        query = query.where(Certificate.revoked_at.is_(None), Certificate.not_after > now,
                            Certificate.not_after <= now + timedelta(days=30))
    elif state == "valid":
        query = query.where(Certificate.revoked_at.is_(None), Certificate.not_after > now)
    return query
