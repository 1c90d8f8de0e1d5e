"""CA keys at rest, and the one signing interface every CA operation goes through.

`SigningKey` is what certificates, CRLs, OCSP responses and route tables are signed with; callers
never touch a private key object directly. `FileSigningKey` is the implementation used today: an
encrypted PKCS#8 PEM file (PBES2: PBKDF2-HMAC-SHA256 with 2048 rounds and AES-256-CBC, which is what
cryptography's `BestAvailableEncryption` writes; the rounds are few, so the protection is the
passphrase's entropy: use a random one) that only its owner may read (0600).

A PKCS#11 (HSM) or KMS key replaces the file by implementing `SigningKey`:

* `sign(data)` (route tables, A.2-style raw signatures) is plain Python: forward it to the device.
* `signer()` must return an object cryptography's X.509/CRL/OCSP builders accept. Checked against
  cryptography 50: the builders refuse a duck-typed object ("Key must be an rsa, dsa, ec, ...
  private key"), but they accept a *user subclass* of `ec.EllipticCurvePrivateKey` (or
  `rsa.RSAPrivateKey`) and call its Python `sign(data, algorithm)` method for the signature. So an
  HSM adapter subclasses `ec.EllipticCurvePrivateKey`, implements `sign()`, `public_key()`, `curve`
  and `key_size` by asking the device, and raises for `private_bytes()`, `private_numbers()` and
  `exchange()`. `tests/test_pki_core.py` issues a certificate through such a subclass.
"""

from __future__ import annotations

import errno
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from flask_babel import lazy_gettext as _l

from app.errors import DomainError, ValidationFailed

KeyType = Literal["ec", "rsa"]
KeyRole = Literal["root", "intermediate", "service"]
RSA_BITS = 3072


# The system's reasons a CA file cannot be read, in the reader's language (the banner shows them to ministry
# admins; strerror is English). Others keep the system's words.
OS_ERROR_REASONS = {
    errno.EACCES: _l("permission denied"), errno.EPERM: _l("permission denied"),
    errno.ENOENT: _l("no such file"), errno.EISDIR: _l("it is a directory"),
    errno.ENOTDIR: _l("a part of its path is not a directory"), errno.EIO: _l("input/output error"),
    errno.ELOOP: _l("too many levels of symbolic links"),
    errno.ESTALE: _l("stale network file handle (is the share still mounted?)"),
}


def os_error_reason(error: OSError):
    """Why the system refused, as a (lazily) translated phrase where we know the error."""
    return OS_ERROR_REASONS.get(error.errno) or error.strerror or str(error)


def read_ca_file(path: Path) -> bytes:
    """The bytes of a CA certificate file, or `CAKeyUnreadable` naming it: a 503, not a traceback."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise CAKeyUnreadable(_l("The CA file %(file)s could not be read: %(error)s.", file=path.name,
                                 error=os_error_reason(error))) from error


class CAKeyUnreadable(DomainError):
    """A CA key file is missing, not a key, or the passphrase does not open it."""

    code = "ca_key_unreadable"
    status = 503


class SigningKey(Protocol):
    """A private key the CA can sign with, wherever it lives (file, HSM, KMS)."""

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey: ...

    def signer(self) -> CertificateIssuerPrivateKeyTypes:
        """What cryptography's certificate, CRL and OCSP builders are given to `sign()` with."""
        ...

    def sign(self, data: bytes) -> bytes:
        """A detached signature over `data`: ECDSA-SHA256 (DER) for EC, RSASSA-PKCS1-v1_5-SHA256 for RSA."""
        ...


def now_utc() -> datetime:
    """The default clock of the CA: aware UTC."""
    return datetime.now(UTC)


def signature_hash(key: SigningKey) -> hashes.HashAlgorithm:
    """SHA-384 for a P-384 key (matching its strength), SHA-256 otherwise."""
    public_key = key.public_key()
    if isinstance(public_key, ec.EllipticCurvePublicKey) and public_key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


class FileSigningKey:
    """A `SigningKey` held in memory after being read from an encrypted PKCS#8 file."""

    def __init__(self, private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        self._key = private_key

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> FileSigningKey:
        """Read and decrypt `path`; `CAKeyUnreadable` when it is missing or the passphrase is wrong."""
        try:
            data = path.read_bytes()
        except FileNotFoundError as error:
            raise CAKeyUnreadable(_l("The CA key file %(file)s is missing.", file=path.name)) from error
        except OSError as error:  # permissions, a directory in its place, an unmounted share
            raise CAKeyUnreadable(_l("The CA key file %(file)s could not be read: %(error)s.", file=path.name,
                                     error=os_error_reason(error))) from error
        try:
            key = serialization.load_pem_private_key(data, password=passphrase)
        except (TypeError, ValueError) as error:
            raise CAKeyUnreadable(_l("The CA key file %(file)s could not be opened: wrong passphrase or not an "
                                     "encrypted PKCS#8 key.", file=path.name)) from error
        if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
            raise CAKeyUnreadable(_l("The CA key file %(file)s holds a %(kind)s, not an EC or RSA key.",
                                     file=path.name, kind=type(key).__name__))
        return cls(key)

    def public_key(self) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._key.public_key()

    def signer(self) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def generate(key_type: KeyType, role: KeyRole) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """EC P-384 for a root, EC P-256 for everything else; RSA 3072 for CA keys when key_type is 'rsa'.

    Service keys (route signer, management node) are always EC P-256: SPEC §5 fixes ECDSA-SHA256
    for route-table signatures."""
    if key_type not in ("ec", "rsa"):
        raise ValidationFailed(f"Unknown CA key type {key_type!r}: use 'ec' or 'rsa'.", code="invalid_key_type",
                               field="key_type")
    if key_type == "rsa" and role != "service":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    return ec.generate_private_key(ec.SECP384R1() if role == "root" else ec.SECP256R1())


def encrypted_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, passphrase: bytes) -> bytes:
    if not passphrase:
        raise ValidationFailed("An empty passphrase would leave the CA key unencrypted.", code="empty_passphrase")
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase))


def write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create `path` with exactly `mode`; `FileExistsError` rather than overwrite (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)  # whatever the umask says
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, passphrase: bytes) -> None:
    """Encrypted at rest and readable by the owner only (0600); never overwrites."""
    write_new_file(path, encrypted_pem(key, passphrase), 0o600)


def write_public_file(path: Path, data: bytes) -> None:
    """A certificate: world-readable (0644); never overwrites."""
    write_new_file(path, data, 0o644)
