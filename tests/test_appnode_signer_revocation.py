"""A revoked route signer (SPEC §5, docs/protocol.md §4): the reference node checks the certificate that signed a
routing table against the management node's CRL, refuses a table its revoked key signed, and drops a table it holds
that such a key signed; a CRL it cannot get keeps the table it holds but takes no new one.

The key leaks; whoever holds it answers the node's pulls in the management node's place (`Interposer`, passing
everything else on to the real management node). The ministry revokes the signer through the service function the
console's and the CLI's revoke call, which replaces the signer in use at once."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from werkzeug.serving import make_server

from app.appnode.node import Node
from app.extensions import db
from app.pki import own_keys, profiles, revocation
from app.pki import service as pki
from app.routing import document
from app.routing import service as routing
from app.routing.verification import RouteRejected
from tests.conftest import stop_serving
from tests.test_appnode import history, network  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)

HOP_BY_HOP = {"connection", "transfer-encoding", "content-length", "keep-alive"}


class Exchange(NamedTuple):
    """One request as the interposer saw it pass: what the node asked, and what went back on the wire."""

    path: str
    if_none_match: str | None
    status: int
    body_bytes: int


class Interposer:
    """What a node reaches in place of the management node: every request passed on to it, except the paths
    whose answers are set in `answers` (path → (status, headers, body)). Each exchange is kept in `exchanges`."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.answers: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.exchanges: list[Exchange] = []
        self.server = make_server("127.0.0.1", 0, self, threaded=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def __call__(self, environ, start_response):
        path = environ["PATH_INFO"]
        if path in self.answers:
            status, headers, body = self.answers[path]
        else:
            status, headers, body = self._passed_on(environ)
        self.exchanges.append(Exchange(path, environ.get("HTTP_IF_NONE_MATCH"), status, len(body)))
        start_response(f"{status} Answer", [(name, value) for name, value in headers.items()
                                            if name.lower() not in HOP_BY_HOP])
        return [body]

    def _passed_on(self, environ) -> tuple[int, dict[str, str], bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        query = environ.get("QUERY_STRING")
        headers = {key[5:].replace("_", "-"): value for key, value in environ.items()
                   if key.startswith("HTTP_") and key != "HTTP_HOST"}
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        request = urllib.request.Request(self.upstream + environ["PATH_INFO"] + (f"?{query}" if query else ""),
                                         data=environ["wsgi.input"].read(length) if length else None,
                                         method=environ["REQUEST_METHOD"], headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return response.status, dict(response.headers.items()), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers.items()), error.read()

    def stop(self) -> None:
        stop_serving(self.server, self.thread)


@pytest.fixture
def interposer(live_server):
    interposer = Interposer(live_server)
    yield interposer
    interposer.stop()


def in_use_signer():
    """The route signer's pair as whoever copied its key holds it, and its certificate's row."""
    key, certificate = own_keys.route_signer()
    return key, certificate, pki.get(format(certificate.serial_number, "x"))


def forged_table(key, certificate, *, version: int, moved: str) -> tuple[int, dict[str, str], bytes]:
    """The current table, `version` and `moved`'s endpoint changed, signed with `key` as the management node signs."""
    head = routing.head()
    entries = routing.entries_of(head)
    entries[moved] = {**entries[moved], "endpoint": "https://127.0.0.1:9/"}
    issued_at = head.issued_at
    body = document.serialise(document.full_table(version, entries.values(), issuer=routing.issuer(),
                                                  issued_at=issued_at, expires_at=issued_at + timedelta(days=365)))
    return 200, {"Content-Type": "application/json", **document.signature_headers(body, key, certificate)}, body


def answer_with_forged_table(interposer, key, certificate, *, version: int, moved: str) -> None:
    """Whoever holds `key` (certified by `certificate`) answers the node's pulls: `forged_table`, and the signer
    certificate its headers name."""
    interposer.answers["/api/v1/routes"] = forged_table(key, certificate, version=version, moved=moved)
    interposer.answers["/ca/route-signer.pem"] = (200, {"Content-Type": "application/x-pem-file"},
                                                 certificate.public_bytes(Encoding.PEM))


def revoke_in_use_signer(minister, reason: str = "key_compromise"):
    """What the console's and the CLI's revoke do (`flask ca revoke SERIAL --reason key_compromise`)."""
    _, _, row = in_use_signer()
    revoked = revocation.revoke(row, reason, by=minister)
    db.session.commit()
    assert revoked.replacement is not None  # it was in use: replaced at once, the table re-signed
    return revoked


def test_a_table_signed_with_a_revoked_signers_leaked_key_is_refused(network, interposer):  # noqa: F811
    a, b = network["a"], network["b"]
    key, certificate, _ = in_use_signer()  # copied by someone who should not have it
    revoke_in_use_signer(network["minister"])
    genuine = routing.head().version
    assert a.node.sync_routes().version == genuine  # the next pull: the new signer, and the CRL listing the old one

    a.node.registry.base_url = interposer.url  # whoever holds the old key now answers A's pulls
    answer_with_forged_table(interposer, key, certificate, version=genuine + 100, moved=b.id)
    with pytest.raises(RouteRejected) as refused:
        a.node.sync_routes()
    assert refused.value.code == "signer_revoked"
    assert format(certificate.serial_number, "x") in refused.value.message
    assert a.node.routes.version == genuine
    assert a.node.routes.peek(b.id)["endpoint"] == b.node.config.endpoint

    a.node.registry.base_url = interposer.upstream
    a.node.sync_routes()
    message = a.node.send_text("zhangsan", b.user("lisi"), "吊销之后")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "吊销之后"


def test_a_table_the_leaked_key_signed_before_the_revocation_is_dropped_for_the_genuine_one(network,  # noqa: F811
                                                                                           interposer):
    """Taken while the signer was good, a forged table of a high version made the node refuse every genuine table
    as a rollback until the forger's expiry; the CRL that lists its signer ends it."""
    a, b = network["a"], network["b"]
    key, certificate, _ = in_use_signer()
    genuine = routing.head().version
    a.node.registry.base_url = interposer.url
    interposer.answers["/api/v1/routes"] = forged_table(key, certificate, version=genuine + 1000, moved=b.id)
    assert a.node.sync_routes().version == genuine + 1000  # nothing told it the key had leaked yet
    a.node.registry.base_url = interposer.upstream

    revoke_in_use_signer(network["minister"])
    pulled = a.node.sync_routes()
    assert (pulled.outcome, pulled.version) == ("accepted", routing.head().version)
    assert a.node.routes.peek(b.id)["endpoint"] == b.node.config.endpoint
    message = a.node.send_text("zhangsan", b.user("lisi"), "回到真表")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "回到真表"

    a.node.reload_routes()  # as the node's CLI or a restart reads it: the genuine table, stored
    assert a.node.routes.version == routing.head().version


def test_without_a_crl_the_held_table_is_kept_and_no_new_table_is_taken(network, interposer):  # noqa: F811
    """Fail-open for the table it holds, fail-closed for a new one: a CRL that cannot be fetched never costs the
    node the table it verified, and no table is taken unchecked (a leaked key's holder could block the CRL)."""
    a, b = network["a"], network["b"]
    held = a.node.routes.version
    crl_file = a.node.identity.dir / "crl.crl"
    crl_file.unlink(missing_ok=True)  # a node upgraded from a version that kept none, or a lost file
    a.node.reload_routes()
    assert a.node.routes.peek(b.id) is not None
    routing.publish("drill", force=True)
    db.session.commit()

    a.node.registry.base_url = interposer.url
    interposer.answers["/ca/crl.crl"] = (503, {"Content-Type": "application/json", "Retry-After": "30"},
                                         b'{"error": {"code": "ca_unavailable", "message": "later"}}')
    with pytest.raises(RouteRejected) as refused:
        a.node.sync_routes()
    assert refused.value.code == "revocation_unknown"
    assert a.node.routes.version == held and a.node.routes.peek(b.id) is not None

    a.node.registry.base_url = interposer.upstream
    assert a.node.sync_routes().version == routing.head().version
    assert crl_file.exists()


def foreign_pki():
    """Whoever sits between a node and an http:// management node (or runs a TLS-terminating proxy) makes a root,
    an intermediate and a route signer of their own, named as the management node names its own, with their
    CRLs: each the profile the node asks for, none chaining to the root the node took at join."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    loaded = pki.authority()
    now = datetime.now(UTC)
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]

    def certificate(subject, key, issuer, issuer_key, *, ca):
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
                   .not_valid_after(now + timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:  # a CA's profile in full: a root the operator installs with `trust-root` must show keyCertSign
            builder = builder.add_extension(profiles.key_usage(ca=True), critical=True)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([document.ROUTE_SIGNER_USAGE]), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    def revocation_list(issuer, key):
        return (x509.CertificateRevocationListBuilder().issuer_name(issuer).last_update(now - timedelta(minutes=1))
                .next_update(now + timedelta(days=7)).add_extension(x509.CRLNumber(999999), critical=False)
                .sign(key, hashes.SHA256()).public_bytes(Encoding.DER))

    root_name, intermediate_name = loaded.root_certificate.subject, loaded.intermediate_certificate.subject
    root = certificate(root_name, keys[0], root_name, keys[0], ca=True)
    intermediate = certificate(intermediate_name, keys[1], root_name, keys[0], ca=True)
    signer = certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "route signer")]), keys[2],
                         intermediate_name, keys[1], ca=False)
    return {"key": keys[2], "signer": signer, "ca.pem": root.public_bytes(Encoding.PEM),
            "chain.pem": intermediate.public_bytes(Encoding.PEM),
            "crl.crl": revocation_list(intermediate_name, keys[1]),
            "root-crl.crl": revocation_list(root_name, keys[0])}


def test_a_registry_answering_another_root_changes_no_trust_anchor_and_its_table_is_refused(network,  # noqa: F811
                                                                                          interposer):
    """A table refused as `bad_signer` was taken for a rotation, and the node wrote whatever root, chain and signer
    the management node's address served over its trust anchor (tls/ca.pem) and its peers' bundle: the next process
    trusted the forger's root and took its table, pointing a peer at the forger. The root taken at join is kept;
    a signer fetched is taken only if it chains to it."""
    a, b = network["a"], network["b"]
    tls = a.node.identity
    kept_files = (tls.ca_file, tls.chain_file, tls.bundle_file, tls.signer_file)
    kept = {path.name: path.read_bytes() for path in kept_files}
    genuine = routing.head().version
    forged = foreign_pki()
    a.node.registry.base_url = interposer.url
    answer_with_forged_table(interposer, forged["key"], forged["signer"], version=genuine + 1000, moved=b.id)
    for name in ("ca.pem", "chain.pem", "crl.crl", "root-crl.crl"):
        interposer.answers[f"/ca/{name}"] = (200, {"Content-Type": "application/octet-stream"}, forged[name])

    for _ in range(2):  # `routes pull` twice
        with pytest.raises(RouteRejected) as refused:
            a.node.sync_routes()
        assert refused.value.code == "bad_signer"
    assert {path.name: path.read_bytes() for path in kept_files} == kept
    assert not any(exchange.path == "/ca/ca.pem" for exchange in interposer.exchanges)

    restarted = Node(a.dir)  # the next process over the same data directory
    try:
        restarted.registry.base_url = interposer.url
        with pytest.raises(RouteRejected) as refused:
            restarted.sync_routes()
        assert refused.value.code == "bad_signer"
        assert restarted.routes.version == genuine
        assert restarted.routes.peek(b.id)["endpoint"] == b.node.config.endpoint
    finally:
        restarted.close()
    assert {path.name: path.read_bytes() for path in kept_files} == kept


def test_a_rotated_signer_is_kept_without_the_stray_certificates_served_beside_it(network, interposer):  # noqa: F811
    """A genuine rotation, the signer and chain served with another root appended: the new signer is kept, and
    nothing else served reaches the trust anchor, the chain or the bundle peers are checked against."""
    a = network["a"]
    tls = a.node.identity
    kept_files = (tls.ca_file, tls.chain_file, tls.bundle_file)
    kept = {path.name: path.read_bytes() for path in kept_files}
    stray = foreign_pki()["ca.pem"]
    version = a.node.routes.version
    rotated = own_keys.rotate_route_signer(actor="tests")
    db.session.commit()
    a.node.registry.base_url = interposer.url
    _, certificate = own_keys.route_signer()
    genuine_chain = pki.authority().intermediate_certificate.public_bytes(Encoding.PEM)
    interposer.answers["/ca/route-signer.pem"] = (200, {}, certificate.public_bytes(Encoding.PEM) + stray)
    interposer.answers["/ca/chain.pem"] = (200, {}, genuine_chain + stray)

    assert a.node.sync_routes().version == version + 1
    assert tls.signer_file.read_bytes() == certificate.public_bytes(Encoding.PEM)
    assert document.certificate_fingerprint(certificate) == rotated.sha256
    assert {path.name: path.read_bytes() for path in kept_files} == kept
