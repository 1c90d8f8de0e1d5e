"""RFC 6960 OCSP responder core: request bytes in, signed response bytes out, never an exception.

* Responses are signed by the issuing intermediate itself (a CA-signed response, RFC 6960
  §4.2.2.2), responder id by key hash, so clients need no delegated responder certificate; the
  intermediate carries digitalSignature for this.
* `thisUpdate` is now, `nextUpdate` now + `validity` (an hour by default). A request nonce of 1 to
  128 octets is echoed; one of 0 octets or more is `malformedRequest`, as RFC 9654 §2.1 requires (it
  replaced RFC 8954's 32-octet bound with 128), so the CA key never signs a 60 KB string a caller chose.
* A request that does not parse (or holds several CertIDs, or is over 64 KB) gets
  `malformedRequest`.
* A request about a certificate of another issuer gets `unauthorized`, not a signed `unknown`:
  RFC 5019 §2.2.3 asks exactly this of a responder that is not authoritative for the issuer, and
  it says "not ours" without signing a claim about someone else's certificate. `unknown` is kept
  for serials of *our* issuer that the lookup does not know.
* A "revoked" answer for a serial never issued (the lookup's `non_issued`) follows RFC 6960 §2.2: reason
  certificateHold, revocationTime 1970-01-01, and the extended revoked definition (§4.4.8) in
  responseExtensions, non-critical, so a verifier knows "revoked" here also covers certificates never issued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

from app.errors import DomainError
from app.pki.crl import reason_flag
from app.pki.keys import SigningKey, now_utc, signature_hash

RESPONSE_VALIDITY = timedelta(hours=1)
MAX_REQUEST_BYTES = 64 * 1024
NONCE_OCTETS = range(1, 129)  # RFC 9654 §2.1: Nonce ::= OCTET STRING (SIZE(1..128))
Status = Literal["good", "revoked", "unknown"]
# RFC 6960 §4.4.8: id-pkix-ocsp-extended-revoke, its extnValue a DER NULL.
EXTENDED_REVOKED_DEFINITION = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.9"), b"\x05\x00")
NON_ISSUED_REVOKED_AT = datetime(1970, 1, 1, tzinfo=UTC)
_CERT_STATUS = {"good": ocsp.OCSPCertStatus.GOOD, "revoked": ocsp.OCSPCertStatus.REVOKED,
                "unknown": ocsp.OCSPCertStatus.UNKNOWN}


@dataclass(frozen=True)
class CertStatusInfo:
    """What the lookup says about one serial. `reason` is a `ReasonFlags` or its name; `non_issued` marks a
    "revoked" answer about a serial never issued (see `revoked_non_issued`)."""

    status: Status
    revoked_at: datetime | None = None
    reason: x509.ReasonFlags | str | None = None
    non_issued: bool = False

    def __post_init__(self):
        if self.status not in _CERT_STATUS:
            raise ValueError(f"OCSP status must be good, revoked or unknown, not {self.status!r}")
        if (self.status == "revoked") != (self.revoked_at is not None):
            raise ValueError("revoked_at is given exactly when the status is revoked")

    @classmethod
    def good(cls) -> CertStatusInfo:
        return cls("good")

    @classmethod
    def revoked(cls, revoked_at: datetime, reason: x509.ReasonFlags | str | None = None) -> CertStatusInfo:
        return cls("revoked", revoked_at, reason)

    @classmethod
    def revoked_non_issued(cls) -> CertStatusInfo:
        """RFC 6960 §2.2's fixed answer for a serial never issued: certificateHold at 1970-01-01."""
        return cls("revoked", NON_ISSUED_REVOKED_AT, x509.ReasonFlags.certificate_hold, non_issued=True)

    @classmethod
    def unknown(cls) -> CertStatusInfo:
        return cls("unknown")


CertStatus = CertStatusInfo  # the name the service layer first used


# Request extensions this responder acts on or honours: the nonce (echoed) and the acceptable response types (it
# only ever answers the basic type, which every client accepts).
UNDERSTOOD_EXTENSIONS = (x509.OCSPNonce, x509.OCSPAcceptableResponses)


def issuer_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """RFC 6960 §4.1.1 CertID: the hash of the issuer's DER name and of its subjectPublicKey bits."""
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


def unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    """An unsigned error response (RFC 6960 §2.3), DER."""
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(serialization.Encoding.DER)


def respond(request_der: bytes, lookup: Callable[[int], CertStatusInfo], *, issuer: x509.Certificate,
            signing_key: SigningKey, validity: timedelta = RESPONSE_VALIDITY,
            clock: Callable[[], datetime] = now_utc) -> bytes:
    """Answer one DER OCSP request about a certificate of `issuer`, signing with `signing_key`.

    `lookup(serial)` is asked only for requests about `issuer`; if it raises a `DomainError`
    (for example, the CA is not ready) the answer is `internalError`."""
    if len(request_der) > MAX_REQUEST_BYTES:
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    try:
        request = ocsp.load_der_ocsp_request(request_der)
        serial, algorithm = request.serial_number, request.hash_algorithm
        name_hash, key_hash = request.issuer_name_hash, request.issuer_key_hash
        extensions = list(request.extensions)
    except (ValueError, TypeError, NotImplementedError, UnsupportedAlgorithm, x509.DuplicateExtension):
        # cryptography raises NotImplementedError for requests it does not support (more than one
        # certificate in a request, unknown hash algorithms), DuplicateExtension for an extension given twice
        # (it was a 500 anyone could log a traceback with): to us those are malformed requests.
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    # RFC 6960 §4.4 after RFC 5280 §4.2: an extension not understood is ignored unless it is critical.
    if any(extension.critical and not isinstance(extension.value, UNDERSTOOD_EXTENSIONS)
           for extension in extensions):
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    nonces = [extension.value for extension in extensions if isinstance(extension.value, x509.OCSPNonce)]
    # RFC 5280 §4.1.2.2: a serial is positive (a negative one parses, and no response can be signed for it).
    if serial < 0 or any(len(nonce.nonce) not in NONCE_OCTETS for nonce in nonces):
        return unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
    if (name_hash, key_hash) != issuer_hashes(issuer, algorithm):
        return unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
    try:
        info = lookup(serial)
        reason = reason_flag(info.reason) if info.status == "revoked" else None
    except DomainError:
        return unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)
    now = clock().replace(microsecond=0)
    builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
        issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial, algorithm=algorithm,
        cert_status=_CERT_STATUS[info.status], this_update=now, next_update=now + validity,
        revocation_time=info.revoked_at, revocation_reason=reason,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer)
    for nonce in nonces[:1]:
        builder = builder.add_extension(nonce, critical=False)
    if info.non_issued:
        builder = builder.add_extension(EXTENDED_REVOKED_DEFINITION, critical=False)
    response = builder.sign(signing_key.signer(), signature_hash(signing_key))
    return response.public_bytes(serialization.Encoding.DER)
