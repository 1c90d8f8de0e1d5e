"""The node's own certificate when the routing table names another one (docs/protocol.md §4).

A ministry admin may renew a node's certificate at any time, from a CSR the node's operator handed over
(`python -m app.appnode csr`). From then on the table lists the node with the new certificate while the node
still presents the old one. The node fetches what the management node issued, checks it here, and installs
it only if it holds the certificate's key: its current key, or the pending key `csr --new-key` made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from app.errors import DomainError

NODE_URN = "urn:mpim:node:"


class CertificateNotInstalled(DomainError):
    """The certificate the table lists for this node cannot be installed: the node keeps its certificate
    and the table it holds."""

    code, status = "certificate_not_installed", 409


class KeyNotHeld(CertificateNotInstalled):
    code = "certificate_key_not_held"


@dataclass(frozen=True)
class Issued:
    """A checked certificate for this node, with the PEM (leaf, then chain) to store as it came."""

    pem_chain: bytes
    certificate: x509.Certificate
    fingerprint: str


def check_issued(pem_chain: bytes, *, node_id: str, listed_sha256: str | None, root_pem: bytes, chain_pem: bytes,
                 now: datetime | None = None) -> Issued:
    """The first certificate of `pem_chain` must have the fingerprint the table lists (when one does), chain to
    the root this node trusts (as a client certificate, valid now) and name `node_id` (CN and `urn:mpim:node:`
    SAN)."""
    try:
        certificates = x509.load_pem_x509_certificates(pem_chain)
    except ValueError:
        raise CertificateNotInstalled("the management node sent no PEM certificate") from None
    leaf = certificates[0]
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    if listed_sha256 is not None and fingerprint != listed_sha256.lower():
        raise CertificateNotInstalled(
            f"the routing table lists certificate {listed_sha256} for {node_id}, but the management node serves "
            f"{fingerprint} as its current one; the next route pull tries again")
    verifier = (PolicyBuilder().store(Store(x509.load_pem_x509_certificates(root_pem)))
                .time(now or datetime.now(UTC)).build_client_verifier())
    try:
        verifier.verify(leaf, certificates[1:] + x509.load_pem_x509_certificates(chain_pem))
    except VerificationError as error:
        raise CertificateNotInstalled(f"certificate {fingerprint} does not chain to this node's CA: {error}") from None
    common_names = [attribute.value for attribute in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    if common_names != [node_id] or f"{NODE_URN}{node_id}" not in uris:
        raise CertificateNotInstalled(f"certificate {fingerprint} does not name node {node_id}")
    return Issued(pem_chain, leaf, fingerprint)


def public_key_bytes(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_holder(certificate: x509.Certificate, current_key, pending_key) -> Literal["current", "pending"] | None:
    """Which of the node's keys the certificate certifies (`pending_key` may be None), or None."""
    wanted = public_key_bytes(certificate.public_key())
    if public_key_bytes(current_key.public_key()) == wanted:
        return "current"
    if pending_key is not None and public_key_bytes(pending_key.public_key()) == wanted:
        return "pending"
    return None
