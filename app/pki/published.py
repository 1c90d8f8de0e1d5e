"""SPEC §4 `/ca/*`: the certificates the CA publishes, read from their files in the CA directory.

Publishing a certificate needs no private key, so these are read as files, never through
`service.authority()`, which decrypts the intermediate and service keys: with a wrong passphrase a
joining node could not even fetch the trust anchor. A rotated route signer (`flask ca rotate-route-signer`
in another process) is seen on the next request: its certificate file is replaced by one atomic rename,
the last step of a rotation, after the key the new tables are signed with is in place.

Anonymous callers get `CAUnavailable` without the reason (file names, "wrong passphrase"): that is for
the log and the ministry admins' banner (`readiness.condition`), as /healthz has it.

Each file is parsed once per version of it: the parsed certificate is kept under the file's (inode, mtime,
size), taken from the open file before it is read, so a file replaced (a rotation's rename, a restore) or
rewritten is read again on the next request, and what is kept never outlives the bytes it came from.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from app.errors import Unavailable
from app.pki import authority as ca
from app.pki import service

ROOT, INTERMEDIATE, ROUTE_SIGNER = "root.pem", "intermediate.pem", "route-signer.pem"
MANAGEMENT = "management.pem"  # not published under /ca/, but read the same way (the console's detail page)
RETRY_SECONDS = 30  # an operator has to act (a passphrase, a file restored): no point asking sooner


# path -> ((st_ino, st_mtime_ns, st_size), the certificate's PEM as parsed and written out again)
_parsed: dict[Path, tuple[tuple[int, int, int], bytes]] = {}


class CAUnavailable(Unavailable):
    code = "ca_unavailable"

    def __init__(self):
        super().__init__("The CA cannot answer now; try again later.", retry_after=RETRY_SECONDS)


def certificate_pem(name: str) -> bytes:
    """One published certificate (ROOT, INTERMEDIATE or ROUTE_SIGNER; or MANAGEMENT), PEM. Parsed before it goes out, so
    a file cut short is a 503 rather than garbage a node would store as its trust anchor."""
    directory = service.ca_directory()
    if not ca.is_initialised(directory) and not service.database_holds_ca():
        raise service.CANotReady(service.NOT_INITIALISED)
    path = directory / name
    try:
        with path.open("rb") as handle:
            status = os.fstat(handle.fileno())
            version = (status.st_ino, status.st_mtime_ns, status.st_size)
            kept = _parsed.get(path)
            if kept is not None and kept[0] == version:
                return kept[1]
            data = handle.read()
    except OSError as error:
        raise CAUnavailable() from error
    try:
        certificate = _parse(data)
    except ValueError as error:
        raise CAUnavailable() from error
    written = certificate.public_bytes(Encoding.PEM)
    _parsed[path] = (version, written)
    return written


def _parse(data: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data)


def chain_pem() -> bytes:
    """Intermediate then root: what follows a node's certificate when it is handed out."""
    return certificate_pem(INTERMEDIATE) + certificate_pem(ROOT)
