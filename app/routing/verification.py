"""SPEC §5 on the application node: whether a signed routing document may be held, and the table it gives.

The route client's checks of one signed document: its size before anything is parsed, the signer certificate
(its profile, its validity, its chain to the trust anchor), the signature over the exact body bytes, then the
contents, a delta applying only to the version it was made from, and the node's own entry. `_Held` is what a
document that passes becomes, with the signed documents that verify it again when it is read back from
storage. Kept apart from client.py, which orders these checks with the version and expiry checks (TUF's
order) and holds the result, and from client_storage.py, which verifies a stored table with them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from app import strict_json
from app.errors import DomainError
from app.routing import document as route_document
from app.routing.document import MalformedDocument
from app.routing.storage import SignedDocument

MAX_CHAIN_DEPTH = 4

Certificates = bytes | x509.Certificate | Sequence[x509.Certificate]


class RouteRejected(DomainError):
    """§5: the node refuses this table; `code` says why (too_large, bad_signer, signer_revoked,
    intermediate_revoked, revocation_unknown, bad_signature, rollback, expired, malformed, own_entry_mismatch,
    delta_base_mismatch; for a stored table only, storage_corrupt and storage_unverified; for a CRL, bad_crl)."""

    code = "route_rejected"
    status = 422

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class OwnEntryMismatch(RouteRejected):
    """`own_entry_mismatch`: the table lists this node with `listed_sha256`, not the certificate it holds
    (after an admin renewal the node may fetch and install the listed certificate, then pull again)."""

    def __init__(self, node_id: str, listed_sha256: str, own_sha256: str):
        super().__init__("own_entry_mismatch", f"the table lists {node_id} with certificate {listed_sha256}, "
                         f"this node holds {own_sha256}")
        self.listed_sha256 = listed_sha256


@dataclass(frozen=True)
class _Held:
    """One accepted table with its lookups and the signed documents it was built from (to store them
    with it), swapped in whole so readers never see half an update."""

    table: dict
    documents: tuple[SignedDocument, ...] = field(repr=False)
    expires_at: datetime
    by_id: dict[str, dict] = field(repr=False)
    by_fingerprint: dict[str, dict] = field(repr=False)

    @classmethod
    def of(cls, table: dict, documents: tuple[SignedDocument, ...]) -> _Held:
        return cls(table, documents, route_document.parse_time(table["expires_at"], "expires_at"),
                   {entry["node_id"]: entry for entry in table["nodes"]},
                   {entry["cert_sha256"]: entry for entry in table["nodes"]})


def _load_certificates(value: Certificates | None) -> list[x509.Certificate]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return x509.load_pem_x509_certificates(value) if value.strip() else []
    if isinstance(value, x509.Certificate):
        return [value]
    return list(value)


class VerificationMixin:
    """The checks of one signed document for a `RouteClient`. Relies on the client's `max_body_size`, `now`,
    `signer_usage`, `node_id`, `own_fingerprint`, `_roots` and `_intermediates`, and on `_check_revocation` and
    `_check_chain_revocation` (RevocationMixin)."""

    def _verified_document(self, signed: SignedDocument, *, pulled: bool = False) -> dict[str, Any]:
        """Size, signer and signature, then just enough parsing to order the remaining checks. `pulled`: a new
        document, rather than one the client holds or stored (they differ in what a missing CRL means)."""
        if len(signed.body) > self.max_body_size:
            raise RouteRejected("too_large", f"routing table of {len(signed.body)} bytes exceeds "
                                f"{self.max_body_size}")
        signer = self._verify_signer(signed.signer_cert_pem, signed.chain_pem, signed.signer_fingerprint,
                                     pulled=pulled)
        self._verify_signature(signer, signed.body, signed.signature_b64)
        return _parse(signed.body)

    def _verify_signer(self, signer_cert_pem: bytes, chain_pem: bytes | None, fingerprint: str, *,
                       pulled: bool = False) -> x509.Certificate:
        """§5: the certificate named by `X-Route-Signer`, fit to sign tables, chaining to the anchor, not on
        its issuer's CRL, and chaining through no CA its own issuer's CRL lists."""
        return self._verified_chain(signer_cert_pem, chain_pem, fingerprint, pulled=pulled)[0]

    def _verified_chain(self, signer_cert_pem: bytes, chain_pem: bytes | None, fingerprint: str, *,
                        pulled: bool = False) -> list[x509.Certificate]:
        """`_verify_signer`'s checks; the path they found: the signer, its issuer and so on, a trust anchor last."""
        try:
            signer = x509.load_pem_x509_certificate(signer_cert_pem)
            pool = self._intermediates + _load_certificates(chain_pem)
        except ValueError:
            raise RouteRejected("bad_signer", "the signer certificate or chain is not valid PEM") from None
        actual = route_document.certificate_fingerprint(signer)
        if actual != fingerprint.strip().lower():
            raise RouteRejected("bad_signer", "the signer certificate does not match X-Route-Signer")
        now = self.now()
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            raise RouteRejected("bad_signer", "the signer certificate is outside its validity period")
        self._check_signer_profile(signer)
        chain = [signer]  # then its issuer, and so on up to a trust anchor
        for _ in range(MAX_CHAIN_DEPTH):
            root = next((root for root in self._roots if _issued_by(chain[-1], root)), None)
            if root is not None:
                chain.append(root)
                self._check_chain_revocation(chain[1:])  # first: a revoked CA's CRL of the signer proves nothing
                self._check_revocation(signer, chain[1], pulled=pulled)
                return chain
            issuer = next((ca for ca in pool if _is_usable_ca(ca, now) and _issued_by(chain[-1], ca)), None)
            if issuer is None:
                break
            chain.append(issuer)
        raise RouteRejected("bad_signer", "the signer certificate does not chain to the trust anchor")

    def _check_signer_profile(self, signer: x509.Certificate) -> None:
        if not isinstance(signer.public_key(), ec.EllipticCurvePublicKey):
            raise RouteRejected("bad_signer", "the signer certificate does not hold an EC key")
        constraints = _extension(signer, x509.BasicConstraints)
        if constraints is not None and constraints.ca:
            raise RouteRejected("bad_signer", "a CA certificate may not sign routing tables")
        key_usage = _extension(signer, x509.KeyUsage)
        if key_usage is not None and not key_usage.digital_signature:
            raise RouteRejected("bad_signer", "the signer certificate may not make digital signatures")
        if self.signer_usage is not None:
            usages = _extension(signer, x509.ExtendedKeyUsage)
            if usages is None or self.signer_usage not in usages:
                raise RouteRejected("bad_signer", "the signer certificate is not a route-signing certificate")

    @staticmethod
    def _verify_signature(signer: x509.Certificate, body: bytes, signature_b64: str) -> None:
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            signer.public_key().verify(signature, body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            raise RouteRejected("bad_signature", "X-Route-Signature does not verify over the body") from None

    def _next_table(self, document: dict, held: _Held | None) -> dict:
        """The full table to hold: the document itself, or the held table with a delta applied."""
        if not route_document.is_delta(document):
            route_document.check_table(document)
            return {**document, "nodes": sorted(document["nodes"], key=lambda entry: entry["node_id"])}
        route_document.check_delta(document)
        if held is None or document["since"] != held.table["version"]:
            raise RouteRejected("delta_base_mismatch", f"delta since {document['since']} does not apply to the "
                                f"held version {held.table['version'] if held else None}; pull the full table")
        nodes = dict(held.by_id)
        for node_id in document["removed"]:
            if nodes.pop(node_id, None) is None:
                raise RouteRejected("delta_base_mismatch", f"delta removes {node_id}, absent from the held table")
        nodes.update((entry["node_id"], entry) for entry in document["changed"])
        table = route_document.full_table(document["version"], nodes.values(), issuer=document["issuer"],
                                          issued_at=route_document.parse_time(document["issued_at"], "issued_at"),
                                          expires_at=route_document.parse_time(document["expires_at"], "expires_at"))
        route_document.check_table(table)
        return table

    def _check_own_entry(self, table: dict) -> None:
        if not (self.node_id and self.own_fingerprint):
            return
        own = next((entry for entry in table["nodes"] if entry["node_id"] == self.node_id), None)
        if own is not None and own["cert_sha256"] != self.own_fingerprint:
            raise OwnEntryMismatch(self.node_id, own["cert_sha256"], self.own_fingerprint)


def _documents_after(held: _Held | None, document: dict[str, Any],
                     signed: SignedDocument) -> tuple[SignedDocument, ...]:
    """What verifies the table `document` leads to: a full table alone, a delta after those of its base."""
    if held is None or not route_document.is_delta(document):
        return (signed,)
    return (*held.documents, signed)


def _parse(body: bytes) -> dict[str, Any]:
    """Just enough to order the checks: a JSON object with an integer version, read strictly (app.strict_json,
    docs/protocol.md §2.5): a name given twice is refused, never read as its last value."""
    try:
        document = strict_json.parse(body)
    except strict_json.NotStrictJSON as error:
        raise MalformedDocument(f"the routing table is not strict JSON: {error}") from None
    if not isinstance(document, dict) or type(document.get("version")) is not int:
        raise MalformedDocument("the routing table has no integer version")
    return document


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_usable_ca(certificate: x509.Certificate, now: datetime) -> bool:
    constraints = _extension(certificate, x509.BasicConstraints)
    return (constraints is not None and constraints.ca
            and certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc)


def _extension(certificate: x509.Certificate, kind: type) -> Any:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
