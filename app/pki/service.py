"""The CA's issuing rules as the console, the API and the CLI call them: configuration, the loaded
authority, one key per node, issuance and renewal.

Crypto lives in `authority.py` / `csr_policy.py` / `ocsp.py` (no database); this module adds
persistence and audit. Beside it: `inventory.py` (each certificate's state, the lists), `revocation.py`
(revoke, CRLs, OCSP), `own_keys.py` (the route signer and the management node's TLS identity) and
`lifecycle.py` (`flask ca init` and admission's hooks: issue on approval, revoke with the node).
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from flask import current_app
from flask_babel import LazyString
from flask_babel import lazy_gettext as _l
from sqlalchemy import and_, case, or_, select
from sqlalchemy.orm import make_transient_to_detached

from app.audit import service as audit
from app.config import read_or_create_secret
from app.database import serialise, utcnow
from app.errors import Conflict, DomainError, NotFound, PermissionDenied
from app.extensions import db
from app.labels import status_word
from app.pki import authority as ca
from app.pki import csr_policy, keys
from app.pki.models import INTERMEDIATE_CRL, Certificate, CRLState

INSERT_CERTIFICATE = Certificate.__table__.insert()
CERTIFICATE_COLUMNS = tuple(Certificate.__table__.columns.keys())

# Functions (node_id) run after a node's current certificate changed (routing re-publishes).
certificate_changed: list = []
# Functions (node_id) run after an admin revoked one of a node's certificates, or a move to another host
# superseded them: its sessions end, and routing publishes a new version even if the table is unchanged, as
# the session cache expects. Not run for revocations that come with the node's own revocation: its status
# change ends its sessions and changes the table anyway.
certificate_revoked: list = []
# Functions (actor) run after the route signer was rotated (routing re-signs the table as a new version).
route_signer_changed: list = []


class CANotReady(DomainError):
    code = "ca_not_initialised"
    status = 503


def ca_directory() -> Path:
    return Path(current_app.config["MPIM_CA_DIR"])


def passphrase() -> bytes:
    """MPIM_CA_PASSPHRASE, else the text of MPIM_CA_PASSPHRASE_FILE. Refused (`CANotReady`, passphrase_missing, as
    /healthz names the state: `readiness`) without one; a file set explicitly (not the default under instance/,
    which `make run` writes) that is absent or empty is named with what is wrong: a typo, an unmounted volume."""
    value = current_app.config.get("MPIM_CA_PASSPHRASE")
    if value:
        return value.encode()
    setting = current_app.config.get("MPIM_CA_PASSPHRASE_FILE")
    path = Path(setting) if setting else None
    if path is not None and path.exists():
        value = _read_passphrase_file(path)
        if not value:
            raise CANotReady(_l("MPIM_CA_PASSPHRASE_FILE %(path)s is empty: no CA passphrase.", path=str(path)),
                             code="passphrase_missing")
        return value.encode()
    if path is not None and path != Path(current_app.config["MPIM_INSTANCE_PATH"]) / "ca_passphrase":
        raise CANotReady(_l("MPIM_CA_PASSPHRASE_FILE %(path)s does not exist: no CA passphrase (is its volume "
                            "mounted?).", path=str(path)), code="passphrase_missing")
    raise CANotReady(_l("No CA passphrase: set MPIM_CA_PASSPHRASE or MPIM_CA_PASSPHRASE_FILE."),
                     code="passphrase_missing")


def _read_passphrase_file(path: Path) -> str:
    """The passphrase file's text, or `CANotReady` naming the setting: a directory or an unreadable file there
    was an OSError out of `flask ca init` and a 500 on every page that asks for the CA."""
    try:
        return path.read_text().strip()
    except OSError as error:
        raise CANotReady(_l("MPIM_CA_PASSPHRASE_FILE %(path)s could not be read: %(error)s.", path=str(path),
                            error=keys.os_error_reason(error)), code="passphrase_missing") from error
    except ValueError as error:  # UnicodeDecodeError
        raise CANotReady(_l("MPIM_CA_PASSPHRASE_FILE %(path)s is not text.", path=str(path)),
                         code="passphrase_missing") from error


def create_passphrase_file() -> None:
    """`flask ca init --generate-passphrase`: a random passphrase in MPIM_CA_PASSPHRASE_FILE, unless it holds one
    already (which must be readable: it is the one the CA is made with)."""
    path = Path(current_app.config["MPIM_CA_PASSPHRASE_FILE"])
    if path.exists():
        _read_passphrase_file(path)
        return
    try:
        read_or_create_secret(path, 32)
    except OSError as error:
        raise CANotReady(_l("MPIM_CA_PASSPHRASE_FILE %(path)s could not be written: %(error)s.", path=str(path),
                            error=keys.os_error_reason(error))) from error


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
            raise CANotReady(missing_ca_message())
        cached = current_app.extensions["mpim_authority"] = ca.Authority.load(ca_directory(), passphrase(),
                                                                              ca_config())
    else:
        cached.refresh_service_keys()
    return cached


def authority_loaded() -> bool:
    """Whether this process holds the loaded CA (so it can sign without opening a key file)."""
    return "mpim_authority" in current_app.extensions


def is_ready() -> bool:
    return ca.is_initialised(ca_directory())


def root_key_offline() -> bool:
    """The CA is here and its root key is not (`flask ca root-offline`): what signs with the root needs
    `--root-key`."""
    return is_ready() and not (ca_directory() / "root.key").exists()


NOT_INITIALISED = "The CA is not initialised: run `flask ca init`."


def database_holds_ca() -> bool:
    """`flask ca init` stores the first CRL: a database with one belongs to a CA, whatever the directory holds."""
    return db.session.scalar(select(CRLState.id).where(CRLState.id == INTERMEDIATE_CRL)) is not None


def missing_ca_message() -> str | LazyString:
    """Why there is no CA to load (a lazy translation, as the other reasons the CA cannot sign). When the
    database already belongs to one, its files are what is missing: `flask ca init` would make a second CA,
    which no admitted node trusts."""
    if database_holds_ca():
        return _l("The database holds this CA's CRL, but %(directory)s has no intermediate.pem: mount the CA "
                  "directory or restore it from the backup (is MPIM_CA_DIR right?).", directory=str(ca_directory()))
    return NOT_INITIALISED


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def key_fingerprint(public_key) -> str:
    """SHA-256 of the SubjectPublicKeyInfo (DER): a CSR and the certificates issued for it share it."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def key_lock_name(key_sha256: str) -> str:
    """The name issuance and admission queue on (`app.database.serialise`) while they check a key."""
    return f"key:{key_sha256}"


def key_conflict(key_sha256: str, node_id: str | None) -> Certificate | None:
    """A certificate that keeps this key from being certified for `node_id`: one revoked as `key_compromise`
    (for any node: whoever holds the key now, it is not the node), else one not revoked that certifies it for
    another node or for the CA's own services. One query: every issuance asks."""
    certified_elsewhere = Certificate.revoked_at.is_(None)
    if node_id:
        certified_elsewhere = and_(certified_elsewhere,
                                   or_(Certificate.node_id.is_(None), Certificate.node_id != node_id))
    compromised = Certificate.revocation_reason == "key_compromise"
    return db.session.scalar(select(Certificate).where(Certificate.key_sha256 == key_sha256,
                                                       or_(compromised, certified_elsewhere))
                             .order_by(case((compromised, 0), else_=1), Certificate.issued_at).limit(1))


def require_key_unused(key_sha256: str, node_id: str | None, *, by=None) -> None:
    """One key, one node: a second node with the same key could open sessions and sign as the first.
    And never a key once reported compromised, for any node: a revocation for another reason (the node
    retired, the certificate superseded) frees the key, that one does not. `key_in_use` names the holder and
    its certificate only to `by`, an admin whose scope covers the holder (docs/protocol.md §4)."""
    from app.admission.models import Node
    from app.admission.uniqueness import may_see

    other = key_conflict(key_sha256, node_id)
    if other is not None and other.revocation_reason == "key_compromise":
        raise Conflict(_l("This CSR's key was reported compromised when certificate %(serial)s was revoked: it is "
                          "never certified again. Generate a new key and CSR.", serial=other.serial),
                       code="key_compromised", field="csr")
    if other is not None:
        division = other.node_id and db.session.scalar(select(Node.division_code).where(
            Node.node_id == other.node_id))
        message = _l("This CSR's key is already certified for %(holder)s (certificate %(serial)s): every node needs "
                     "its own key. Generate a new key and CSR.", holder=other.node_id or other.kind,
                     serial=other.serial) if may_see(by, division) else \
            _l("This CSR's key is already certified for another node: every node needs its own key. Generate a new "
               "key and CSR.")
        raise Conflict(message, code="key_in_use", field="csr")


def store(certificate: x509.Certificate, kind: str, node_id: str | None, actor: str, *,
          key_sha256: str | None = None, action: str = "certificate.issue",
          issued_at: datetime | None = None, detail: dict | None = None) -> Certificate:
    """Insert the certificate's row and its audit entry (`action`, with `detail` added to what it says); returns
    the row, persistent in the session.
    `key_sha256`: the key's fingerprint when the caller has it already (issuance checked it). `issued_at`: for a
    certificate issued before, which the database did not know ("certificate.record"); else now.

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
        issued_at=issued_at or utcnow(), issued_by=actor, revoked_at=None, revocation_reason=None)
    db.session.flush()  # a plain insert does not autoflush: a just-admitted node's row goes in first
    db.session.execute(INSERT_CERTIFICATE, {column: getattr(row, column) for column in CERTIFICATE_COLUMNS})
    make_transient_to_detached(row)
    db.session.add(row)
    audit.record(action, row.serial, {"kind": kind, "node": node_id, "sha256": row.sha256,
                                      "not_after": row.not_after, **(detail or {})}, actor=actor)
    return row


# --- node certificates ---------------------------------------------------------------------------

def issue_for_node(node, csr_pem: str, *, actor: str, by=None) -> Certificate:
    csr = csr_policy.load_csr(csr_pem)
    csr_policy.check_csr(csr)
    return _issue_checked(node, csr, key_fingerprint(csr.public_key()), actor=actor, by=by)


def _issue_checked(node, csr: x509.CertificateSigningRequest, key_sha256: str, *, actor: str,
                   by=None) -> Certificate:
    """Issue for a CSR that passed the policy; `key_sha256` is its key's (the certificate certifies it). `by`:
    the admin issuing it, to whom a `key_in_use` refusal may name the holder."""
    from app.admission.information import endpoint_host
    from app.pki import intermediate

    intermediate.require_not_revoked()  # a certificate no node would accept
    serialise(key_lock_name(key_sha256))  # an approval and a renewal racing with one key: one wins
    require_key_unused(key_sha256, node.node_id, by=by)
    certificate = authority().issue_node_certificate(
        csr, node_id=node.node_id, org_name=node.org_name, endpoint_host=endpoint_host(node.endpoint),
        validity_days=current_app.config["MPIM_CERT_DAYS"])
    return store(certificate, "node", node.node_id, actor, key_sha256=key_sha256)


def node_certificates(node_id: str) -> list[Certificate]:
    return list(db.session.scalars(select(Certificate).where(Certificate.node_id == node_id)
                                   .order_by(Certificate.issued_at.desc())))


def service_certificates(kind: str) -> list[Certificate]:
    """The management node's own certificates of one kind ("route_signer", "management"), newest first."""
    return list(db.session.scalars(select(Certificate).where(Certificate.kind == kind)
                                   .order_by(Certificate.issued_at.desc())))


def _valid_now():
    """The one rule for a certificate that counts now: not revoked, inside its validity."""
    now = utcnow()
    return and_(Certificate.revoked_at.is_(None), Certificate.not_before <= now, Certificate.not_after > now)


def valid_certificates(node_id: str) -> list[Certificate]:
    """The node's certificates valid now, newest first (the first is `current_certificate`)."""
    return list(db.session.scalars(select(Certificate).where(Certificate.node_id == node_id, _valid_now())
                                   .order_by(Certificate.not_before.desc(), Certificate.issued_at.desc())))


def current_certificate(node_id: str) -> Certificate | None:
    """The newest certificate that is valid now and not revoked."""
    return db.session.scalar(select(Certificate).where(Certificate.node_id == node_id, _valid_now())
                             .order_by(Certificate.not_before.desc(), Certificate.issued_at.desc()).limit(1))


def holds_current_certificate(node_id_column):
    """A WHERE clause: the node has a valid, unrevoked certificate now, what the routing table requires."""
    return select(Certificate.serial).where(Certificate.node_id == node_id_column, Certificate.kind == "node",
                                            _valid_now()).exists()


def current_fingerprints() -> dict[str, str]:
    """node id → SHA-256 of its newest valid certificate (what the routing table carries)."""
    rows = db.session.execute(select(Certificate.node_id, Certificate.sha256).where(
        Certificate.kind == "node", _valid_now()).order_by(Certificate.node_id, Certificate.not_before,
                                                           Certificate.issued_at))
    result: dict[str, str] = {}
    for node_id, sha256 in rows:
        result[node_id] = sha256  # ordered oldest first: the newest wins
    return result


def revoked_fingerprints() -> dict[str, frozenset[str]]:
    """node id → SHA-256 of its revoked certificates not yet expired, for every node in one query.

    The health poller refuses a node presenting one of them: the TLS chain check does not consult revocation.
    An expired one is left out, as the chain check refuses it anyway."""
    rows = db.session.execute(select(Certificate.node_id, Certificate.sha256).where(
        Certificate.kind == "node", Certificate.revoked_at.is_not(None), Certificate.not_after > utcnow()))
    result: dict[str, set[str]] = {}
    for node_id, sha256 in rows:
        result.setdefault(node_id, set()).add(sha256)
    return {node_id: frozenset(fingerprints) for node_id, fingerprints in result.items()}


def session_certificates(node_id: str) -> dict:
    """What A.2 may verify a session signature with ("usable"), and why nothing, when nothing: the node's other
    certificates ("unusable": revoked, expired, not valid yet) and whether any is revoked, any expired.

    The database answers what each row is (`_valid_now`, the one rule), and the PEM is parsed through
    `parsed_certificate`: loading Certificate rows, reading their times and parsing their PEM on every request
    cost a known node's id more time the more certificates it had, before any verification, and an unknown id
    none (docs/protocol.md §4: the time the answer takes must not tell them apart)."""
    rows = db.session.execute(select(Certificate.pem, _valid_now().label("valid"),
                                     Certificate.revoked_at.is_not(None).label("revoked"),
                                     (Certificate.not_after <= utcnow()).label("expired"))
                              .where(Certificate.node_id == node_id).order_by(Certificate.issued_at.desc())).all()
    return {"usable": [parsed_certificate(row.pem) for row in rows if row.valid],
            "unusable": [parsed_certificate(row.pem) for row in rows if not row.valid],
            "revoked": any(row.revoked for row in rows), "expired": any(row.expired for row in rows)}


@functools.lru_cache(maxsize=2048)
def parsed_certificate(pem: str) -> x509.Certificate:
    """A stored certificate, parsed once per process while among the last 2048 asked for: a PEM never changes
    (what may, its revocation and validity, is read from its row each time)."""
    return x509.load_pem_x509_certificate(pem.encode())


def renew(node, csr_pem: str | None, *, by=None, still_entitled: Callable[[], object] | None = None,
          expected_current: str | None = None) -> Certificate:
    """A node renews in the last third of its certificate's validity; an admin (`by`) any time.
    The old certificate stays valid until it expires; the route table carries the new one.
    One key, one node, as for an application: a key another node's pending application carries is refused
    too (`key_pending`), or approving that application would find its key certified for someone else.
    `still_entitled`: the caller's credentials checked again once the node is held, raising to refuse (the API
    door's node session, which a revocation of one of the node's certificates ends while the request waits).
    `expected_current`: the serial the caller renews, refused (`newer_certificate`) unless it is still the
    node's newest once the node is held: two tabs posting one renewal at once issue one certificate."""
    from app.admission import information, nodes, uniqueness

    if by is not None and by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    csr = information.checked_csr(csr_pem)  # bad input is reported before the window, as an application's is
    # Queue behind a revocation of the node deciding at the same moment (it then refuses this renewal,
    # or revokes the new certificate too); the key's name too, in the order every other caller takes them.
    key_sha256 = key_fingerprint(csr.public_key())
    nodes.lock(node, key_lock_name(key_sha256))
    if still_entitled is not None:
        # Read before the node was ours, the session may have ended since: revoking a certificate as
        # key_compromise ends it, and leaves no current certificate, so no renewal window, to refuse with.
        still_entitled()
    if expected_current is not None and node_certificates(node.node_id)[0].serial != expected_current:
        raise Conflict(_l("Node %(node)s has a newer certificate: renew from its page if it is still needed.",
                          node=node.node_id), code="newer_certificate")
    if node.status != "active":
        raise Conflict(_l("A %(status)s node cannot renew its certificate.", status=status_word(node.status)),
                       code=f"node_{node.status}")
    uniqueness.require_not_the_management_host(node.endpoint)  # a node admitted there before it was refused
    current = current_certificate(node.node_id)
    if by is None and current is None:  # a session ends with its certificate (sessions.open_session): a backstop
        raise Conflict(_l("The node has no valid certificate to renew: a ministry admin issues it a new one."),
                       code="no_certificate")
    if by is None:
        lifetime = current.not_after - current.not_before
        opens = current.not_after - lifetime / 3
        if utcnow() < opens:
            raise Conflict(_l("Renewal opens at %(when)s, in the last third of the validity.",
                              when=opens.isoformat(timespec="seconds")), code="renewal_too_early")
    uniqueness.require_key_free(key_sha256, node.node_id, by=by)
    actor = by.username if by else f"node:{node.node_id}"
    audit.act_as(actor)  # the route version the hooks publish is this renewal's too
    row = _issue_checked(node, csr, key_sha256, actor=actor, by=by)
    for hook in certificate_changed:
        hook(node.node_id)
    return row


def get(serial: str) -> Certificate:
    """The certificate of a serial given in hex as `flask ca list` prints it, or as openssl does: upper case,
    leading zeros, octets separated by colons (`openssl x509 -text`) or spaces."""
    key = re.sub(r"[\s:]", "", serial).lower().lstrip("0") or "0"
    row = db.session.get(Certificate, key) if len(key) <= 40 else None
    if row is None:
        raise not_found(serial)
    return row


def not_found(serial: str) -> NotFound:
    """The answer for a serial there is no certificate for, and for one the asker may not see: the two must
    not be told apart."""
    return NotFound(_l("No certificate with serial %(serial)s.", serial=serial), code="certificate_not_found")
