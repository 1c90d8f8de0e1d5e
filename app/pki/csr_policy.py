"""CSR policy (issue 4): what the CA accepts as a node's key, with a clear reason for refusals.

Accepted: a PEM PKCS#10 request with a valid self-signature whose key is EC P-256, EC P-384 or
RSA of 2048 to 8192 bits. Refused: everything else, including DSA, other curves (P-192,
secp256k1, ...) and Ed25519/Ed448. Ed25519 is refused on purpose: A.2 node sessions (SPEC §4)
define ECDSA-SHA256 and RSASSA-PKCS1-v1_5-SHA256 signatures only, so an Ed25519 node could never
open a session, and TLS stacks in the field still handle it unevenly.
Whatever else a CSR asks for (subject, SANs, CA:true, key usages) is read for the reviewer and
otherwise ignored: the CA decides the certificate's contents.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from app.errors import ValidationFailed

MAX_PEM_BYTES = 64 * 1024
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192


class InvalidCSR(ValidationFailed):
    code = "invalid_csr"

    def __init__(self, message: str):
        super().__init__(message, field="csr")


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    data = pem.encode("utf-8", errors="replace") if isinstance(pem, str) else bytes(pem)
    if len(data) > MAX_PEM_BYTES:
        raise InvalidCSR(f"The CSR is larger than {MAX_PEM_BYTES // 1024} KB.")
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise InvalidCSR("This is a certificate, not a certificate signing request (CSR).")
    if b"-----BEGIN CERTIFICATE REQUEST-----" not in data and b"-----BEGIN NEW CERTIFICATE REQUEST-----" not in data:
        raise InvalidCSR("This is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----).")
    try:
        return x509.load_pem_x509_csr(data.replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"))
    except ValueError as error:
        raise InvalidCSR(f"The CSR could not be parsed: {error}.") from error


def describe_key(public_key) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {ALLOWED_CURVES.get(public_key.curve.name, public_key.curve.name)}"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size}"
    if isinstance(public_key, dsa.DSAPublicKey):
        return f"DSA {public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(public_key).__name__


def check_key(public_key) -> None:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_CURVES:
            raise InvalidCSR(f"EC curve {public_key.curve.name} is refused: use P-256 or P-384.")
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidCSR(f"RSA keys below {MIN_RSA_BITS} bits are refused (this one has {public_key.key_size}).")
        if public_key.key_size > MAX_RSA_BITS:
            raise InvalidCSR(f"RSA keys above {MAX_RSA_BITS} bits are refused.")
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise InvalidCSR(f"{describe_key(public_key)} keys are refused: node sessions (A.2) need ECDSA or RSA.")
    raise InvalidCSR(f"{describe_key(public_key)} keys are refused: use EC P-256, P-384 or RSA ≥ 2048 bits.")


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    try:
        public_key = csr.public_key()
    except (ValueError, TypeError) as error:
        raise InvalidCSR(f"The CSR's key type is not supported: {error}.") from error
    check_key(public_key)
    if not csr.is_signature_valid:
        raise InvalidCSR("The CSR's self-signature does not verify: it was altered or signed by another key.")


def requested_names(csr: x509.CertificateSigningRequest) -> list[str]:
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [str(getattr(name, "value", name)) for name in extension.value]


def describe_csr(csr: x509.CertificateSigningRequest) -> dict:
    """What the review page shows: key type and size, subject, names asked for."""
    key = csr.public_key()
    return {
        "key_type": "EC" if isinstance(key, ec.EllipticCurvePublicKey) else
        "RSA" if isinstance(key, rsa.RSAPublicKey) else describe_key(key),
        "key_size": key.key_size if hasattr(key, "key_size") else None,
        "curve": ALLOWED_CURVES.get(key.curve.name, key.curve.name) if isinstance(key, ec.EllipticCurvePublicKey)
        else None,
        "key": describe_key(key),
        "subject": csr.subject.rfc4514_string() or "(empty)",
        "requested_sans": requested_names(csr),
    }
