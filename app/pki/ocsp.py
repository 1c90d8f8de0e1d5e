"""RFC 6960 OCSP responder core: request bytes in, signed response bytes out.

Answers are signed by the issuing intermediate itself (a CA-signed response, RFC 6960 §4.2.2.2),
so clients need no separate responder certificate. A malformed request gets a
`malformedRequest` response, a request about another issuer `unauthorized`; neither raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from app.database import utcnow


@dataclass(frozen=True)
class CertStatus:
    status: str  # good | revoked | unknown
    revoked_at: datetime | None = None
    reason: str | None = None


def _issuer_hashes(issuer: x509.Certificate, algorithm) -> tuple[bytes, bytes]:
    """RFC 6960 CertID: hash of the issuer's DER name and of its subjectPublicKey bits."""
    name_hash = hashes.Hash(algorithm)
    name_hash.update(issuer.subject.public_bytes())
    key = issuer.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    else:
        bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    key_hash = hashes.Hash(algorithm)
    key_hash.update(bits)
    return name_hash.finalize(), key_hash.finalize()


def respond(request_der: bytes, lookup: Callable[[int], CertStatus], *, issuer: x509.Certificate, signing_key,
            validity: timedelta = timedelta(hours=1)) -> bytes:
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        serial, algorithm = request.serial_number, request.hash_algorithm
    except (ValueError, TypeError):
        return _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    name_hash, key_hash = _issuer_hashes(issuer, algorithm)
    if request.issuer_name_hash != name_hash or request.issuer_key_hash != key_hash:
        return _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    status = lookup(serial)
    now = utcnow().replace(microsecond=0)
    cert_status = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                   "unknown": ocsp.OCSPCertStatus.UNKNOWN}[status.status]
    reason = x509.ReasonFlags[status.reason] if status.status == "revoked" and status.reason and \
        status.reason != "unspecified" else None
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial, algorithm=algorithm,
        cert_status=cert_status, this_update=now, next_update=now + validity,
        revocation_time=status.revoked_at if status.status == "revoked" else None, revocation_reason=reason,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    for extension in request.extensions:
        if isinstance(extension.value, x509.OCSPNonce):
            builder = builder.add_extension(extension.value, critical=False)
    response = builder.sign(signing_key.signer(), hashes.SHA256())
    return response.public_bytes(serialization.Encoding.DER)


def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)
