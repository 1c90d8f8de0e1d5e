"""Node certificates the CA issued that the database does not know, put back on record (`flask ca record FILE`).

A database restored from a backup forgets what the CA directory signed since: `flask ca revoke` cannot find
those certificates, so no CRL can list them, and the division's serial counter goes back, so their node ids are
handed out again. The node holds its certificate; the operator collects it and records it here. Recording does
not admit the node: the certificate is on record so it can be listed and revoked (docs/operations.md, Backup).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from flask_babel import lazy_gettext as _l

from app.database import serialise
from app.errors import Conflict, ValidationFailed
from app.extensions import db
from app.pki import authority as ca
from app.pki import service
from app.pki.models import Certificate

NODE_URN = "urn:mpim:node:"
WHOLE_SECOND = timedelta(seconds=1)  # X.509 times drop the fraction of a second


@dataclass(frozen=True)
class Recorded:
    """The row stored, and the node id its certificate names (`row.node_id` is None when no node on record
    holds it: see `_holder`)."""

    row: Certificate
    names_node: str


def record(pem: str, *, actor: str) -> Recorded:
    """Store a node certificate this CA's intermediate signed that the database does not know, as issuance would
    have (audited as "certificate.record"), and raise its division's serial counter to its node id's serial.
    Refused, with nothing stored: no PEM certificate (`not_a_certificate`), another issuer's (`not_this_ca`), one
    that is no node's (`not_a_node_certificate`: the CA's own service certificates are recorded by their
    rotation), one already on record (`already_recorded`)."""
    from app.admission import nodes

    certificate = _load(pem)
    intermediate = service.authority().intermediate_certificate
    try:
        certificate.verify_directly_issued_by(intermediate)  # the issuer name, then the signature
    except (ValueError, TypeError, InvalidSignature):
        raise Conflict(_l("Certificate %(serial)s was not issued by this CA's intermediate (%(issuer)s): only a "
                          "certificate it signed is recorded.", serial=_serial(certificate),
                          issuer=certificate.issuer.rfc4514_string()), code="not_this_ca", field="file") from None
    serial = _serial(certificate)
    serialise(f"certificate:{serial}")  # the same file recorded twice at once: one row, one audit record
    if db.session.get(Certificate, serial) is not None:
        raise Conflict(_l("Certificate %(serial)s is on record already.", serial=serial), code="already_recorded",
                       field="file")
    node_id = _named_node(certificate)
    nodes.keep_node_id_used(node_id)
    row = service.store(certificate, "node", _holder(node_id, certificate), actor, action="certificate.record",
                        issued_at=certificate.not_valid_before_utc + ca.BACKDATE,
                        detail={"names_node": node_id})
    return Recorded(row, node_id)


def _serial(certificate: x509.Certificate) -> str:
    return format(certificate.serial_number, "x")


def _load(pem: str) -> x509.Certificate:
    """The node's certificate: the first of the file, which may go on with this CA's chain (a node's
    `tls/node.pem`, the console's download), and nothing else."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, x509.InvalidVersion):  # the latter no ValueError: it was a traceback
        certificates = []
    loaded = service.authority()
    chain = {loaded.intermediate_certificate, loaded.root_certificate}
    if not certificates or not all(certificate in chain for certificate in certificates[1:]):
        raise ValidationFailed(_l("The file must hold one PEM certificate (-----BEGIN CERTIFICATE-----), the node's "
                                  "own, followed by this CA's chain or nothing."), code="not_a_certificate",
                               field="file")
    return certificates[0]


def _named_node(certificate: x509.Certificate) -> str:
    """The node id a node certificate names (CN and `urn:mpim:node:` SAN, the same application node id, TLS
    client and server use), else `not_a_node_certificate`."""
    from app.admission.nodes import APPLICATION_NODE, NODE_ID

    common_names = [attribute.value for attribute in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        uris = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
            .get_values_for_type(x509.UniformResourceIdentifier)
        usages = set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        uris, usages, is_ca = [], set(), True
    node_id = common_names[0] if len(common_names) == 1 else ""
    if (is_ca or not NODE_ID.fullmatch(node_id) or node_id[10:13] != APPLICATION_NODE
            or uris != [f"{NODE_URN}{node_id}"]
            or not {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= usages):
        raise Conflict(_l("Certificate %(serial)s is not an application node's certificate (%(subject)s): only those "
                          "are recorded here; the route signer and the management node's certificate are recorded by "
                          "their rotation.", serial=_serial(certificate), subject=certificate.subject.rfc4514_string()),
                       code="not_a_node_certificate", field="file")
    return node_id


def _holder(node_id: str, certificate: x509.Certificate) -> str | None:
    """The node on record the certificate is filed under, or None. Only a node admitted before the certificate
    was issued (a renewal since the backup): one admitted after it got the id again from the restored counter, and
    the certificate is its earlier holder's; filed under it, the routing table and its sessions would take it as
    theirs. None keeps it out of every node's certificates while it waits to be revoked."""
    from app.admission.models import Node

    node = db.session.get(Node, node_id)
    if node is None or node.approved_at > certificate.not_valid_before_utc + ca.BACKDATE + WHOLE_SECOND:
        return None
    return node_id
