"""A new trust anchor for a joined node (docs/protocol.md §10, docs/operations.md "A new root for the nodes").

The node takes its root once, at `join`, and never from the network. When the management node's root changes,
its operators hand the new root certificate over out of band and the node's operator installs it here
(`python -m app.appnode trust-root FILE`): only a single self-signed CA certificate, and only once the route
signer the management node serves chains to it, so that a mistyped file or a root nobody serves changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from app.appnode.registry import NotJoined, write_atomic
from app.errors import Conflict, DomainError, ValidationFailed
from app.routing.client import RouteClient
from app.routing.verification import RouteRejected


class NotARoot(ValidationFailed):
    code = "not_a_root"


class RootNotServed(DomainError):
    """The route signer the management node serves does not chain to the root given: nothing is changed."""

    code, status = "root_not_served", 409


class StillCertified(Conflict):
    code = "still_certified"


@dataclass(frozen=True)
class Rerooted:
    """What `replace_trust_anchor` did: both roots as `describe` gives them, whether the node's own certificate
    chains to the new one (and if not, what to do), and whether the routing table held was forgotten."""

    new_root: dict
    old_root: dict | None
    certificate_problem: str | None
    routes_forgotten: bool


def describe(certificate: x509.Certificate) -> dict:
    return {"sha256": certificate.fingerprint(hashes.SHA256()).hex(), "subject": certificate.subject.rfc4514_string()}


def read_root(pem: bytes, name: str) -> x509.Certificate:
    """The one certificate of `pem` if it is a root: a CA (basicConstraints CA, keyCertSign), self-signed, valid
    now. NotARoot otherwise, naming the file `name`."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise NotARoot(f"{name} holds no PEM certificate") from None
    if len(certificates) != 1:
        raise NotARoot(f"{name} holds {len(certificates)} certificates: give the root certificate alone")
    root = certificates[0]
    what = f"the certificate in {name} ({root.subject.rfc4514_string()})"
    try:
        constraints = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        usage = root.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        raise NotARoot(f"{what} is no CA certificate (basicConstraints and keyUsage are required)") from None
    if not constraints.ca or not usage.key_cert_sign:
        raise NotARoot(f"{what} is no CA certificate (basicConstraints CA and keyUsage keyCertSign are required)")
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature):
        raise NotARoot(f"{what} is not self-signed (issued by {root.issuer.rfc4514_string()}): an intermediate, "
                       "not a root") from None
    now = datetime.now(UTC)
    if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
        raise NotARoot(f"{what} is not valid now ({root.not_valid_before_utc:%Y-%m-%d} to "
                       f"{root.not_valid_after_utc:%Y-%m-%d})")
    return root


def chains_to(pem_chain: bytes, root: x509.Certificate, intermediates: list[x509.Certificate]) -> bool:
    """Whether the first certificate of `pem_chain` (a node certificate, then the chain it came with) chains to
    `root` as a client certificate valid now."""
    certificates = x509.load_pem_x509_certificates(pem_chain)
    verifier = PolicyBuilder().store(Store([root])).time(datetime.now(UTC)).build_client_verifier()
    try:
        verifier.verify(certificates[0], certificates[1:] + intermediates)
    except VerificationError:
        return False
    return True


class TrustAnchorMixin:
    """`trust-root` on a `Node`. Relies on the node's `identity`, `registry`, `data_dir`, `peers`, and on `routes`
    and `reload_routes` (RouteTableMixin)."""

    def replace_trust_anchor(self, pem: bytes, name: str) -> Rerooted:
        """§10: `pem` (the file `name`) becomes the node's root, with the route signer and the issuing chain the
        management node serves, once the signer passes the checks of a table's signer against it
        (`RouteClient.verified_signer_chain`); only the certificates on that path are kept. The old root's CRLs go
        (the next pull fetches the new CA's), and the routing table held goes if it does not verify under the new
        root. NotARoot or RootNotServed (nothing changed) otherwise. The caller pulls."""
        root = read_root(pem, name)
        tls = self.identity
        if not tls.ca_file.exists():
            raise NotJoined("this node holds no root yet: `join` takes the first one")
        held = x509.load_pem_x509_certificates(tls.ca_file.read_bytes())
        signer_pem, chain_pem = self.registry.fetch_signer()
        try:
            path = RouteClient(root.public_bytes(Encoding.PEM)).verified_signer_chain(signer_pem, chain_pem)
        except RouteRejected as error:
            raise RootNotServed(f"the route signer the management node at {self.registry.base_url} serves does not "
                                f"chain to root {describe(root)['sha256']} ({error.message}); nothing was changed: "
                                "check the file and its fingerprint with the management node's operators") from None
        root_pem = root.public_bytes(Encoding.PEM)
        chain = b"".join(ca.public_bytes(Encoding.PEM) for ca in path[1:-1])
        # The root last: a run cut short leaves the old root beside the new chain, and the next run mends it.
        write_atomic(tls.chain_file, chain)
        write_atomic(tls.signer_file, path[0].public_bytes(Encoding.PEM))
        write_atomic(tls.bundle_file, root_pem + chain)
        write_atomic(tls.ca_file, root_pem)
        for revocation_list in (tls.crl_file, tls.root_crl_file):  # the old CA's
            revocation_list.unlink(missing_ok=True)
        self.reload_routes()
        self.peers.reset()  # new connections check peers against the new bundle
        storage = self.data_dir / "routes.json"
        forgotten = self.routes.version is None and storage.exists()
        if forgotten:  # it does not verify under the new root: it protects against no rollback any more
            storage.unlink()
            self.reload_routes()
        problem = None
        if tls.has_certificate() and not chains_to(tls.cert_file.read_bytes(), root, path[1:-1]):
            problem = (f"this node's certificate {tls.fingerprint()} was issued under the old root and does not "
                       "chain to the new one, so peers trusting the new root refuse it: if the management node "
                       "still knows this node, hand `csr --out node.csr` to a ministry admin to renew it from (the "
                       "next route pull installs the certificate; `renew` alone waits for the last third of the "
                       "validity); if it is a new CA with a new database, ask for a new enrollment token and run "
                       "`join --again --token …` (docs/operations.md)")
        return Rerooted(describe(root), describe(held[0]) if held else None, problem, forgotten)

    def check_enrol_again(self) -> str:
        """`join --again` is for a node whose certificate no longer serves: expired, not chaining to the root it
        holds (after `trust-root`), or revoked, on the management node's CRL, fetched first (§10). It returns which,
        to tell the operator; StillCertified otherwise, saying why, since enrolling a certified node would make a
        second node."""
        self._refresh_revocation_list(force=True)  # a CRL not fetched is logged: the one held is used
        tls = self.identity
        certificate = tls.certificate()
        fingerprint = tls.fingerprint()
        named = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if named and named[0].value != self.node_id:  # installed, but the run was cut short before recording it
            return (f"this node's certificate {fingerprint} names node {named[0].value}, not {self.node_id}: an "
                    "enrolment again was cut short after installing it; finishing it")
        until = certificate.not_valid_after_utc
        if until < datetime.now(UTC):
            return f"this node's certificate {fingerprint} expired on {until:%Y-%m-%d %H:%M} UTC"
        roots = x509.load_pem_x509_certificates(tls.ca_file.read_bytes())
        chain = x509.load_pem_x509_certificates(tls.chain_file.read_bytes()) if tls.chain_file.exists() else []
        if not any(chains_to(tls.cert_file.read_bytes(), root, chain) for root in roots):
            return f"this node's certificate {fingerprint} does not chain to the root it holds (or is not valid yet)"
        revocation_list = _held_revocation_list(tls.crl_file, certificate, chain)
        if revocation_list is None:
            crl = "no CRL of its issuer is held (the management node could not be asked for one)"
        else:
            number = revocation_list.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
            listed = revocation_list.get_revoked_certificate_by_serial_number(certificate.serial_number)
            if listed is not None:
                return (f"this node's certificate {fingerprint} was revoked on "
                        f"{listed.revocation_date_utc:%Y-%m-%d %H:%M} UTC (the management node's CRL number {number})")
            issued = revocation_list.last_update_utc
            crl = f"it is not on the CRL held (number {number}, of {issued:%Y-%m-%d %H:%M} UTC)"
        raise StillCertified(f"this node's certificate {fingerprint} chains to the root it trusts, is valid until "
                             f"{until:%Y-%m-%d} and {crl}: enrolling it again would make a second node; `renew` "
                             "replaces a certificate, and after a new root `trust-root FILE` comes first")


def _held_revocation_list(path, certificate: x509.Certificate,
                          chain: list[x509.Certificate]) -> x509.CertificateRevocationList | None:
    """The CRL kept in `path` if its issuer issued `certificate` and its signature verifies with that issuer's key
    (one of `chain`); None otherwise."""
    try:
        held = x509.load_der_x509_crl(path.read_bytes())
        held.extensions.get_extension_for_class(x509.CRLNumber)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    issuers = [ca for ca in chain if ca.subject == held.issuer == certificate.issuer]
    return held if any(held.is_signature_valid(ca.public_key()) for ca in issuers) else None
