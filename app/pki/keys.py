"""Key storage and the one signing interface every CA operation goes through.

`SigningKey` is what certificates, CRLs, OCSP responses and route tables are signed with. The
file implementation keeps the key as encrypted PKCS#8 (a passphrase from the environment or a
file) in a 0600 file. A PKCS#11 or KMS key replaces it by implementing the same three members:
`public_key()`, `signer()` (an object cryptography's builders accept: cryptography calls its
`sign()` method, so an `ec.EllipticCurvePrivateKey` subclass that forwards `sign()` to the HSM
works) and `sign(data)`; no caller changes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


class SigningKey(Protocol):
    def public_key(self): ...

    def signer(self): ...

    def sign(self, data: bytes) -> bytes: ...


class FileSigningKey:
    """A private key loaded from an encrypted PKCS#8 file."""

    def __init__(self, private_key):
        self._key = private_key

    @classmethod
    def load(cls, path: Path, passphrase: bytes) -> FileSigningKey:
        return cls(serialization.load_pem_private_key(path.read_bytes(), password=passphrase))

    def public_key(self):
        return self._key.public_key()

    def signer(self):
        return self._key

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 (DER) for EC keys, RSASSA-PKCS1-v1_5-SHA256 for RSA keys."""
        if isinstance(self._key, ec.EllipticCurvePrivateKey):
            return self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        return self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())


def generate(key_type: str, role: str):
    """EC P-384 for a root, EC P-256 for everything else; RSA 3072 when key_type is 'rsa'."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP384R1() if role == "root" else ec.SECP256R1())


def write_private_key(path: Path, key, passphrase: bytes) -> None:
    """Encrypted at rest and readable by the owner only; never overwrites."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(passphrase))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def write_public_file(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
