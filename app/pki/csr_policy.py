"""CSR policy (SPEC §3.2-3.4): which PKCS#10 requests the CA accepts, and why it refuses the rest.

Accepted: one PEM certificate signing request, at most 64 KB, whose self-signature verifies
(SHA-256 or stronger), holding an EC P-256, EC P-384 or RSA 2048-8192 bit key (public exponent odd, at least
65537 and at most 32 bits, CA/B Baseline Requirements §6.1.6 and what Go verifies with).

Refused, each with its own reason: not PEM or not parsable; several CSRs in one text; text other than white space
around the PEM block; a certificate where a CSR belongs;
over 64 KB; a self-signature that does not verify or uses MD5/SHA-1; RSA below 2048 bits; an RSA public exponent
below 65537 (e = 3); RSASSA-PSS keys (id-RSASSA-PSS: the certificate would name them rsaEncryption); DSA;
any other curve (P-192, secp256k1, SM2, ...); Ed25519 and Ed448; a subject or extensions that cannot be
read (a value of a type X.509 names do not allow, an extension present twice, an x400Address or
EDIPartyName subject alternative name).

Ed25519/Ed448 are refused on purpose: a node must open A.2 node sessions (SPEC §4), which define
ECDSA-SHA256 and RSASSA-PKCS1-v1_5-SHA256 signatures only, so an EdDSA node could be certified
and then never log in; and TLS stacks in the field still handle EdDSA client certificates unevenly.

Whatever else a CSR asks for (subject, SANs, CA:true, key usages) is shown to the reviewer by
`describe_csr` and otherwise ignored: the CA decides a certificate's contents (`authority.py`).
"""

from __future__ import annotations

import re

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import PublicKeyAlgorithmOID, SignatureAlgorithmOID
from flask_babel import lazy_gettext as _l

from app.errors import ValidationFailed

MAX_PEM_BYTES = 64 * 1024
ALLOWED_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384"}
MIN_RSA_BITS, MAX_RSA_BITS = 2048, 8192
MIN_RSA_EXPONENT = 65537  # CA/B Baseline Requirements §6.1.6 (with NIST SP 800-89): odd, at least 2**16 + 1
# BR §6.1.6 allows up to 2**256 - 1, but Go's crypto/rsa and other stacks verify with 32-bit exponents at most:
# a key certified past that could not be verified by their peers.
MAX_RSA_EXPONENT_BITS = 32
WEAK_SIGNATURES = {SignatureAlgorithmOID.RSA_WITH_MD5: "MD5", SignatureAlgorithmOID.RSA_WITH_SHA1: "SHA-1",
                   SignatureAlgorithmOID.ECDSA_WITH_SHA1: "SHA-1", SignatureAlgorithmOID.DSA_WITH_SHA1: "SHA-1"}
_CSR_BEGIN = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----")
_CSR_BLOCK = re.compile(rb"-----BEGIN (NEW )?CERTIFICATE REQUEST-----.*?-----END (NEW )?CERTIFICATE REQUEST-----",
                        re.DOTALL)


class InvalidCSR(ValidationFailed):
    """A CSR the CA refuses; the message says why, in words a provincial admin can act on."""

    code = "invalid_csr"

    def __init__(self, message):
        super().__init__(message, field="csr")


NOT_V1 = _l("The CSR's version field is not v1 (0), the only version of PKCS#10.")


def pem_from_file(data: bytes) -> str:
    """An uploaded or CLI-read CSR file, PEM or DER, as PEM text for `load_csr`. A DER file that is
    not a CSR is refused here, where we still know it was binary, with a reason that fits it."""
    if not data.strip():
        return ""
    if data.lstrip().startswith(b"-----BEGIN") or len(data) > MAX_PEM_BYTES:
        return data.decode("utf-8", errors="replace")  # load_csr judges PEM text and size
    try:
        return x509.load_der_x509_csr(data).public_bytes(serialization.Encoding.PEM).decode("ascii")
    except x509.InvalidVersion:
        raise InvalidCSR(NOT_V1) from None
    except ValueError:
        pass
    try:
        x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion):
        raise InvalidCSR(_l("This file is neither a PEM nor a DER certificate signing request (CSR).")) from None
    raise InvalidCSR(_l("This is a certificate, not a certificate signing request (CSR): "
                        "send the PKCS#10 request generated with the node's key."))


def pem_block_of(stored: str | None) -> str | None:
    """The PEM block of a CSR kept by an application, without what stood around it. Applications stored before
    the check on text around the block (`load_csr`) kept that text (`openssl req -text` output, a stray control
    character): approving them, and their review page, read the stored text through `load_csr` and refused it
    with words meant for the applicant. Text with no whole block is returned as it is, for `load_csr` to refuse."""
    if stored is None:
        return None
    block = _CSR_BLOCK.search(stored.encode("utf-8", errors="surrogateescape"))
    return block.group(0).decode("ascii", errors="replace") + "\n" if block else stored


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    """Parse a PEM PKCS#10 request; `InvalidCSR` for anything that is not one."""
    data = pem.encode("utf-8", errors="replace") if isinstance(pem, str) else bytes(pem)
    if not data.strip():
        raise InvalidCSR(_l("No CSR was given: a PEM certificate signing request made with the node's key is "
                            "required."))
    if len(data) > MAX_PEM_BYTES:
        raise InvalidCSR(_l("The CSR is larger than %(kb)s KB; a real one is 1-3 KB.", kb=MAX_PEM_BYTES // 1024))
    if b"-----BEGIN CERTIFICATE-----" in data or b"-----BEGIN X509 CERTIFICATE-----" in data:
        raise InvalidCSR(_l("This is a certificate, not a certificate signing request (CSR): "
                            "send the PKCS#10 request generated with the node's key."))
    if not _CSR_BEGIN.search(data):
        raise InvalidCSR(_l("This is not a PEM certificate signing request: it must start with "
                            "-----BEGIN CERTIFICATE REQUEST-----."))
    if (count := len(_CSR_BEGIN.findall(data))) > 1:  # the parser would take the first and drop the rest
        raise InvalidCSR(_l("Send one certificate signing request (CSR), not %(count)s.", count=count))
    # The parser reads the block and ignores what is around it, which then went on to be stored: a NUL there failed
    # PostgreSQL's INSERT, a bidi override or a control character reached the review. Only ASCII white space
    # (bytes.strip's) may stand around the block; one without its END line is the parser's to refuse.
    if (block := _CSR_BLOCK.search(data)) and (data[:block.start()].strip() or data[block.end():].strip()):
        raise InvalidCSR(_l("Send the CSR's PEM block alone: nothing but white space may come before "
                            "-----BEGIN CERTIFICATE REQUEST----- or after -----END CERTIFICATE REQUEST----- "
                            "(this one has other text or control characters there)."))
    try:
        return x509.load_pem_x509_csr(data.replace(b"NEW CERTIFICATE REQUEST", b"CERTIFICATE REQUEST"))
    except x509.InvalidVersion:  # no ValueError: it answered 500 at every door that reads a CSR
        raise InvalidCSR(NOT_V1) from None
    except ValueError as error:
        raise InvalidCSR(_l("The CSR could not be parsed: its PEM block is damaged (broken base64) or "
                            "does not hold a PKCS#10 structure.")) from error


def describe_key(public_key: CertificatePublicKeyTypes) -> str:
    """A short human name of a key: 'EC P-256', 'RSA 3072', 'DSA 2048', 'Ed25519'."""
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


def check_key(public_key: CertificatePublicKeyTypes) -> None:
    """`InvalidCSR` unless the key is EC P-256, EC P-384 or RSA 2048-8192 whose public exponent is odd and at least
    65537."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        if public_key.curve.name not in ALLOWED_CURVES:
            raise InvalidCSR(_l("EC curve %(curve)s is refused: use P-256 (prime256v1) or P-384.",
                                curve=public_key.curve.name))
        return
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < MIN_RSA_BITS:
            raise InvalidCSR(_l("RSA keys below %(limit)s bits are refused (this one has %(bits)s).",
                                limit=MIN_RSA_BITS, bits=public_key.key_size))
        if public_key.key_size > MAX_RSA_BITS:
            raise InvalidCSR(_l("RSA keys above %(limit)s bits are refused (this one has %(bits)s).",
                                limit=MAX_RSA_BITS, bits=public_key.key_size))
        exponent = public_key.public_numbers().e
        if exponent < MIN_RSA_EXPONENT or exponent % 2 == 0 or exponent.bit_length() > MAX_RSA_EXPONENT_BITS:
            digits = str(exponent)  # a 32-bit exponent has 10 digits; a longer one is shown by its ends
            shown = digits if len(digits) <= 20 else f"{digits[:10]}…{digits[-6:]}"
            raise InvalidCSR(_l("RSA keys with public exponent %(exponent)s are refused: the exponent must be odd, "
                                "at least 65537 and at most 32 bits long. Make the key again (openssl and most "
                                "tools use 65537 unless told otherwise), or use EC P-256.", exponent=shown))
        return
    if isinstance(public_key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        raise InvalidCSR(_l("%(key)s keys are refused: node sessions (A.2) are signed with ECDSA or RSA only. "
                            "Use EC P-256.", key=describe_key(public_key)))
    raise InvalidCSR(_l("%(key)s keys are refused: use EC P-256, EC P-384 or RSA of at least 2048 bits.",
                        key=describe_key(public_key)))


def _public_key(csr: x509.CertificateSigningRequest) -> CertificatePublicKeyTypes:
    try:
        return csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as error:
        raise InvalidCSR(_l("The CSR's key algorithm or curve is not supported (SM2 and other curves are "
                            "refused): use EC P-256, EC P-384 or RSA of at least 2048 bits.")) from error


def check_csr_key(csr: x509.CertificateSigningRequest) -> None:
    """`InvalidCSR` unless the CSR's key passes `check_key` and is not an RSASSA-PSS key. Such a key (SPKI
    id-RSASSA-PSS, `openssl genpkey -algorithm RSA-PSS`) loads as any RSA key, but the certificate names its key
    rsaEncryption, and OpenSSL and Python then refuse to pair the node's key with it: the node could not serve
    TLS, nor sign A.2 node sessions (RSASSA-PKCS1-v1_5 only) with it."""
    if csr.public_key_algorithm_oid == PublicKeyAlgorithmOID.RSASSA_PSS:
        raise InvalidCSR(_l("RSA-PSS keys (id-RSASSA-PSS, as openssl genpkey -algorithm RSA-PSS makes) are "
                            "refused: TLS could not use the key with the certificate issued for it, and node "
                            "sessions (A.2) are signed with ECDSA or RSA PKCS#1 v1.5 only. Use EC P-256."))
    check_key(_public_key(csr))


def check_csr(csr: x509.CertificateSigningRequest) -> None:
    """`InvalidCSR` unless the key passes `check_csr_key`, the self-signature verifies with SHA-256+ and the
    subject and the extensions can be read."""
    check_csr_key(csr)
    if csr.signature_algorithm_oid in WEAK_SIGNATURES:
        raise InvalidCSR(_l("The CSR is signed with %(algorithm)s, which is refused (MD5 and SHA-1 are broken): "
                            "sign it with SHA-256.", algorithm=WEAK_SIGNATURES[csr.signature_algorithm_oid]))
    try:
        valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm):
        valid = False
    if not valid:
        raise InvalidCSR(_l("The CSR's self-signature does not verify: it was altered, or signed by a key "
                            "other than the one it carries."))
    try:  # read lazily: an attribute of a type no name allows, or a UTF8String that is not UTF-8, fails here
        csr.subject.rfc4514_string()
    except ValueError as error:
        # Ignored for issuance, but the review page shows it, and a CSR that breaks its own rules is no CSR.
        raise InvalidCSR(_l("The CSR's subject cannot be read: it holds a value of a type or encoding that "
                            "X.509 names do not allow. Make the CSR again with a plain subject such as "
                            "CN=<node id>.")) from error
    _check_extensions(csr)


def _check_extensions(csr: x509.CertificateSigningRequest) -> None:
    """`InvalidCSR` unless the CSR's extensions can be read. cryptography reads them lazily and raises on the
    first use, with exceptions that are no ValueError: an extension present twice, or a subject alternative
    name of a type it does not read (x400Address, EDIPartyName). The CA issues none of them, but the review
    page shows them, and a CSR that breaks X.509's own rules is refused at every door alike."""
    try:
        csr.extensions  # noqa: B018 (reading is the check)
    except x509.DuplicateExtension as error:
        raise InvalidCSR(_l("The CSR's extensions cannot be read: it carries the %(name)s extension twice, and "
                            "X.509 allows each extension once. Make the CSR again without the repeated "
                            "extension.", name=getattr(error.oid, "_name", None) or error.oid.dotted_string)) \
            from error
    except (x509.UnsupportedGeneralNameType, ValueError) as error:
        raise InvalidCSR(_l("The CSR's extensions cannot be read: one is damaged, or holds a subject alternative "
                            "name of a type certificates here do not use (x400Address, EDIPartyName). Make the "
                            "CSR again with DNS or IP names only, or none: the CA sets the certificate's names "
                            "itself.")) from error


def requested_names(csr: x509.CertificateSigningRequest) -> list[str]:
    """The SANs a CSR asks for, OpenSSL-style ('DNS:a.example', 'IP:10.0.0.1'); shown, never issued."""
    try:
        extension = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (x509.ExtensionNotFound, ValueError):
        return []
    prefixes = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.UniformResourceIdentifier: "URI",
                x509.RFC822Name: "email"}
    return [f"{prefixes.get(type(name), type(name).__name__)}:{getattr(name, 'value', name)}"
            for name in extension.value]


def requests_ca(csr: x509.CertificateSigningRequest) -> bool:
    """Whether the CSR asks for CA:TRUE (never granted; the reviewer should see that it asked)."""
    try:
        return csr.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def describe_csr(csr: x509.CertificateSigningRequest) -> dict:
    """What the review console shows: key type, size and curve, subject, names and CA:TRUE asked for."""
    try:
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):
        key = None
    is_ec = isinstance(key, ec.EllipticCurvePublicKey)
    return {
        "key_type": "EC" if is_ec else "RSA" if isinstance(key, rsa.RSAPublicKey) else
        (describe_key(key) if key is not None else "unsupported"),
        "key_size": getattr(key, "key_size", None),
        "curve": ALLOWED_CURVES.get(key.curve.name, key.curve.name) if is_ec else None,
        "key": describe_key(key) if key is not None else "unsupported",
        "subject": csr.subject.rfc4514_string() or "(empty)",
        "requested_sans": requested_names(csr),
        "requests_ca": requests_ca(csr),
    }
