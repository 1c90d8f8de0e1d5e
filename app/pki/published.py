"""SPEC §4 `/ca/*`: the certificates the CA publishes, read from their files in the CA directory.

Publishing a certificate needs no private key, so these are read as files, never through
`service.authority()`, which decrypts the intermediate and service keys: with a wrong passphrase a
joining node could not even fetch the trust anchor. A rotated route signer (`flask ca rotate-route-signer`
in another process) is seen on the next request: its certificate file is replaced by one atomic rename,
the last step of a rotation, after the key the new tables are signed with is in place.

Anonymous callers get `CAUnavailable` without the reason (file names, "wrong passphrase"): that is for
the log and the ministry admins' banner (`readiness.condition`), as /healthz has it.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from app.errors import Unavailable
from app.pki import authority as ca
from app.pki import keys, service

ROOT, INTERMEDIATE, ROUTE_SIGNER = "root.pem", "intermediate.pem", "route-signer.pem"
RETRY_SECONDS = 30  # an operator has to act (a passphrase, a file restored): no point asking sooner


class CAUnavailable(Unavailable):
    code = "ca_unavailable"

    def __init__(self):
        super().__init__("The CA cannot answer now; try again later.", retry_after=RETRY_SECONDS)


def certificate_pem(name: str) -> bytes:
    """One published certificate (ROOT, INTERMEDIATE or ROUTE_SIGNER), PEM. Parsed before it goes out, so
    a file cut short is a 503 rather than garbage a node would store as its trust anchor."""
    directory = service.ca_directory()
    if not ca.is_initialised(directory) and not service.database_holds_ca():
        raise service.CANotReady(service.NOT_INITIALISED)
    try:
        certificate = x509.load_pem_x509_certificate(keys.read_ca_file(directory / name))
    except (keys.CAKeyUnreadable, ValueError) as error:
        raise CAUnavailable() from error
    return certificate.public_bytes(Encoding.PEM)


def chain_pem() -> bytes:
    """Intermediate then root: what follows a node's certificate when it is handed out."""
    return certificate_pem(INTERMEDIATE) + certificate_pem(ROOT)
