"""A.2 node session: a node proves possession of its certificate's key and gets a bearer token.

The signature is over the UTF-8 bytes of node_id + "\\n" + timestamp + "\\n" + nonce (ECDSA-SHA256
DER for EC keys, RSASSA-PKCS1-v1_5 SHA-256 for RSA); the timestamp must lie within 5 minutes of
our clock; a nonce is accepted once; the certificate must be valid and not revoked, the node active.
Every refusal of a well-formed request is a 401 with its own code (a malformed one is a 400); but what a
refusal says of the node (whether the id names one, whether it is suspended, revoked, without a valid
certificate) is told only to a signature that verifies with one of its certificates. Any other gets
`bad_signature`, the same for every node id: the ids are public, their state is not.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from flask import current_app
from sqlalchemy import delete, select, update

from app.admission.nodes import NODE_ID, lock
from app.database import utcnow
from app.errors import Unauthorized, ValidationFailed
from app.extensions import db
from app.sessions import nonces
from app.sessions.models import NodeSession

# Matched whole (fullmatch: `$` also matches before a final newline) and in ASCII digits only.
NONCE = re.compile(r"[A-Za-z0-9_\-]{8,128}")
# RFC 3339 UTC (SPEC §4): `Z` or a zero offset; `-00:00` says the local offset is unknown (RFC 3339 §4.3).
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|\+00:00)")
SIGNATURE = re.compile(r"[A-Za-z0-9+/=]{16,1400}")
# What each pattern asks, in the 400 invalid_request a field that does not match it gets.
RULES = {
    "node_id": "node_id must be a node id: 20 digits.",
    "timestamp": "timestamp must be an RFC 3339 time in UTC, ending in Z or +00:00 (0 to 6 fractional digits), "
                 "as in 2025-06-12T02:15:30Z.",
    "nonce": "nonce must be 8 to 128 characters of A-Z, a-z, 0-9, _ and - (base64url without padding).",
    "signature": "signature must be base64 (A-Z, a-z, 0-9, +, / and =) of 16 to 1400 characters.",
}
SKEW = timedelta(minutes=5)
# Signature verifications a bad_signature answer costs, whatever the node id: a node has one certificate to try,
# two while a renewal overlaps, four after three renewals in a row; the stand-in key makes up the rest.
BAD_SIGNATURE_VERIFICATIONS = 4


class SessionRefused(Unauthorized):
    code = "session_refused"


def _text(document: dict, name: str, pattern: re.Pattern) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ValidationFailed(RULES[name], code="invalid_request", field=name)
    return value


def _moment(timestamp: str) -> datetime:
    """An RFC 3339 UTC timestamp of the right shape may still name no moment (month 13, hour 24)."""
    try:
        return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError as error:
        raise ValidationFailed("timestamp is not a real moment.", code="invalid_request",
                               field="timestamp") from error


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def signed_message(node_id: str, timestamp: str, nonce: str) -> bytes:
    return f"{node_id}\n{timestamp}\n{nonce}".encode()


def verify_signature(certificate: x509.Certificate, message: bytes, signature: bytes) -> bool:
    key = certificate.public_key()
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            return False
    except InvalidSignature:
        return False
    return True


def open_session(document) -> tuple[str, datetime, str]:
    """Returns (raw token, expires_at, node_id); the raw token exists only in this return value."""
    from app.admission.models import Node
    from app.pki import service as pki

    if not isinstance(document, dict):
        raise ValidationFailed("The body must be a JSON object.", code="invalid_body")
    node_id = _text(document, "node_id", NODE_ID)
    timestamp = _text(document, "timestamp", TIMESTAMP)
    moment = _moment(timestamp)
    nonce = _text(document, "nonce", NONCE)
    try:
        signature = base64.b64decode(_text(document, "signature", SIGNATURE), validate=True)
    except binascii.Error as error:
        raise ValidationFailed("signature is not base64.", code="invalid_request", field="signature") from error

    now = utcnow()  # before anything of the node is read: an old request, signed or not, learns nothing
    if moment < now - SKEW:
        raise SessionRefused("The timestamp is more than 5 minutes old.", code="stale_timestamp")
    if moment > now + SKEW:
        raise SessionRefused("The timestamp is more than 5 minutes ahead.", code="future_timestamp")
    message = signed_message(node_id, timestamp, nonce)
    signer, unusable = _verifying_certificate(node_id, message, signature)
    node = db.session.get(Node, node_id)  # there: one of its certificates verified
    _require_active(node)
    if unusable:
        raise SessionRefused("The node has no valid certificate.", code=unusable)
    # Queued behind a suspension, a revocation of the node or of its certificate deciding now (they hold the
    # node): read before it commits, the node's state let a session in that the decision's end of its
    # sessions never saw, and the token outlived the suspension (alive again on resume) or the stolen key.
    # Only a request whose signature verifies queues: anyone can send a node id, and unsigned requests for
    # it must not hold up an admin's decision on that node. What the wait may have changed is read again.
    lock(node)
    _require_active(node)
    if signer.serial_number not in {cert.serial_number for cert in pki.session_certificates(node_id)["usable"]}:
        _, unusable = _verifying_certificate(node_id, message, signature)  # the one that verified was revoked
        if unusable:
            raise SessionRefused("The node has no valid certificate.", code=unusable)
    if not nonces.claim(node_id, nonce, moment):
        raise SessionRefused("This nonce has been used already.", code="replayed_nonce")
    raw = secrets.token_urlsafe(32)
    # Not past the certificate that opened it: a session outliving it pulled routes, and renewed with no
    # certificate to measure the renewal window by.
    expires_at = min(now + timedelta(seconds=current_app.config["MPIM_NODE_SESSION_SECONDS"]),
                     signer.not_valid_after_utc)
    token_hash = hash_token(raw)
    db.session.add(NodeSession(token_hash=token_hash, node_id=node_id, created_at=now, expires_at=expires_at))
    _end_sessions_past_the_limit(node_id, token_hash, now)
    return raw, expires_at, node_id


def _end_sessions_past_the_limit(node_id: str, opened: str, now: datetime) -> None:
    """Keep a node to `MPIM_NODE_SESSIONS_MAX` live sessions: past it, the oldest end (their holders' next call
    is a 401 `session_revoked`, and a node opens a new session after any 401), and of the sessions ended, only
    that many are kept until cleanup, for their holders to hear why. Without it one key opened 579 sessions in
    5 s, each row kept about 25 h. Runs under the node's lock (`open_session`), so two opening at once count
    alike. A worker that cached an ended session for route pulls (routing's per-process cache) serves it until
    the next routing version; it is the same node's. The session just opened (`opened`) is never among those
    ended: dated before the lock, or after a step back of the clock, it could count as the oldest, and its 201
    handed out a token already ended."""
    limit = current_app.config["MPIM_NODE_SESSIONS_MAX"]
    db.session.flush()
    live = (select(NodeSession.token_hash)
            .where(NodeSession.node_id == node_id, NodeSession.revoked_at.is_(None), NodeSession.expires_at > now,
                   NodeSession.token_hash != opened)
            .order_by(NodeSession.created_at.desc(), NodeSession.token_hash.desc()).offset(limit - 1))
    db.session.execute(update(NodeSession).where(NodeSession.token_hash.in_(live.scalar_subquery()))
                       .values(revoked_at=now).execution_options(synchronize_session=False))
    ended = (select(NodeSession.token_hash)
             .where(NodeSession.node_id == node_id, NodeSession.revoked_at.is_not(None))
             .order_by(NodeSession.revoked_at.desc(), NodeSession.token_hash.desc()).offset(limit))
    db.session.execute(delete(NodeSession).where(NodeSession.token_hash.in_(ended.scalar_subquery()))
                       .execution_options(synchronize_session=False))


def _require_active(node) -> None:
    if node.status != "active":
        raise SessionRefused(f"Node {node.node_id} is {node.status}.", code=f"node_{node.status}")


def _verifying_certificate(node_id: str, message: bytes, signature: bytes) -> tuple[x509.Certificate, str]:
    """The node's certificate the signature verifies with, and "" when it may open a session, else the code
    that says why the node has no certificate that may (certificate_revoked, certificate_expired, no_certificate).

    Tried are the certificates that may open a session; while the node has none, all of its certificates: a key
    once certified for the node still proves that the node asks, and it hears why it cannot (after a key
    compromise, or once its certificate expired). A key whose certificate was revoked or expired while another
    is valid proves nothing. When no certificate verifies, the refusal is the same whether the node is unknown,
    suspended, revoked or active, and says nothing of it; nor does the time it takes: it costs
    BAD_SIGNATURE_VERIFICATIONS verifications, those the node's certificates leave (all of them for an id with
    no certificate, no node by that id) made against a stand-in key, their result discarded. Only a node with
    more certificates to try than that costs more."""
    from app.pki import service as pki

    candidates = pki.session_certificates(node_id)
    usable = candidates["usable"]
    tried = usable or candidates["unusable"]
    for certificate in tried:
        if verify_signature(certificate, message, signature):
            if usable:
                return certificate, ""
            return certificate, "certificate_revoked" if candidates["revoked"] else \
                "certificate_expired" if candidates["expired"] else "no_certificate"
    for _ in range(BAD_SIGNATURE_VERIFICATIONS - len(tried)):
        verify_signature(_stand_in_certificate(), message, signature)
    raise SessionRefused("The signature does not verify with the node's certificate.", code="bad_signature")


@functools.cache
def _stand_in_certificate() -> x509.Certificate:
    """A self-signed certificate of a throwaway EC P-256 key (the kind nodes are issued), made once per process:
    what the verifications a bad_signature makes up (`BAD_SIGNATURE_VERIFICATIONS`) are made against, their
    result discarded. The private key is dropped once it has signed the certificate: nobody can sign with it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "session stand-in")])
    now = datetime.now(UTC)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now)
            .sign(key, hashes.SHA256()))


def authenticate(raw: str | None, *, also=None):
    """The node id behind a bearer session token, or a 401 with the reason.

    `also`: a scalar subquery read in the same round trip (routing reads its head version so
    that the session check and the version it serves come from one consistent snapshot).
    Returns the node id, or (node id, value of `also`) when `also` is given.
    """
    from app.admission.models import Node

    if not raw:
        raise SessionRefused("A node session is required: Authorization: Bearer <token>.", code="missing_session")
    columns = [NodeSession.node_id, NodeSession.expires_at, NodeSession.revoked_at, Node.status]
    if also is not None:
        columns.append(also)
    row = db.session.execute(select(*columns).join(Node, Node.node_id == NodeSession.node_id)
                             .where(NodeSession.token_hash == hash_token(raw))).first()
    if row is None:
        raise SessionRefused("This session token is not known.", code="invalid_session")
    if row.revoked_at is not None:
        raise SessionRefused("This session has ended.", code="session_revoked")
    if row.expires_at <= utcnow():
        raise SessionRefused("This session has expired.", code="session_expired")
    if row.status != "active":
        raise SessionRefused(f"Node {row.node_id} is {row.status}.", code=f"node_{row.status}")
    return (row.node_id, row[4]) if also is not None else row.node_id


def end_sessions(node, old_status: str, new_status: str, reason: str) -> None:
    """admission hook: sessions die with the node's suspension or revocation."""
    if new_status in ("suspended", "revoked"):
        end_node_sessions(node.node_id)


def end_node_sessions(node_id: str) -> None:
    """Also the CA's hook when one of the node's certificates is revoked: a session does not record
    which certificate opened it, so all of them end (a stolen key's session must not outlive the
    revocation); the node opens a new one with a certificate still valid, as after any 401."""
    db.session.execute(update(NodeSession).where(NodeSession.node_id == node_id, NodeSession.revoked_at.is_(None))
                       .values(revoked_at=utcnow()).execution_options(synchronize_session=False))


def cleanup() -> str:
    """Scheduler job: forget expired sessions and old nonces."""
    sessions = db.session.execute(delete(NodeSession).where(NodeSession.expires_at < utcnow() - timedelta(days=1)))
    pruned = nonces.prune()
    db.session.commit()
    return f"deleted {sessions.rowcount} expired sessions, {pruned} nonces"
