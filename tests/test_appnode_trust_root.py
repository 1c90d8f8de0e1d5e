"""A new root (docs/protocol.md §10, docs/operations.md "A new root for the nodes"): the reference node takes its
trust anchor once, at `join`, and never from the network; `python -m app.appnode trust-root FILE` replaces it with a
root its operator was handed out of band, once the route signer the management node serves chains to it.

The management node's new root is served through an `Interposer` (test_appnode_signer_revocation.py) in front of the
real management node: its chain and signer are answered, everything else (node sessions) is passed on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from app.appnode.cli import cli
from app.appnode.cli_context import NOT_ALL_DONE
from app.appnode.config import NodeConfig
from app.appnode.node import Node
from app.extensions import db
from app.pki import own_keys, profiles
from app.pki import service as pki
from app.routing import service as routing
from tests.appnode_harness import enroll
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_signer_revocation import answer_with_forged_table, foreign_pki, interposer  # noqa: F401
from tests.test_sessions import people  # noqa: F401 (fixture)


def run(served_dir, *args):
    return CliRunner().invoke(cli, ["--data", str(served_dir), "--json", *args])


def refusal(result) -> dict:
    """Under --json a refusal is the last line on stderr (progress lines may come before it)."""
    return json.loads(result.stderr.strip().splitlines()[-1])["error"]


def point_at(served, url: str) -> None:
    """The node's configured management node is `url` from now on (the CLI opens the node from config.json)."""
    path = served.dir / NodeConfig.FILE
    stored = json.loads(path.read_text("utf-8"))
    path.write_text(json.dumps({**stored, "registry_url": url}), "utf-8")


def sha256(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def tls_files(served) -> dict[str, bytes]:
    tls = served.node.identity
    return {path.name: path.read_bytes() for path in (tls.ca_file, tls.chain_file, tls.bundle_file, tls.signer_file,
                                                      tls.cert_file)}


def new_root_certifying_the_intermediate():
    """A new root (a new key, a new name) and its cross-certificate for the management node's intermediate (the
    same name and key), so that the route signer and the node certificates the intermediate issued chain to it."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "MPIM Root CA 2")])
    root = profiles.ca_certificate(name, None, key.public_key(), now - timedelta(hours=1), now + timedelta(days=30),
                                   None).sign(key, hashes.SHA256())
    intermediate = pki.authority().intermediate_certificate
    cross = profiles.ca_certificate(intermediate.subject, root, intermediate.public_key(), now - timedelta(hours=1),
                                    now + timedelta(days=30), 0).sign(key, hashes.SHA256())
    return root, cross


def self_signed(*, ca: bool, key_cert_sign: bool) -> bytes:
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "not a root")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(profiles.key_usage(digital_signature=True, ca=key_cert_sign), critical=True)
            .sign(key, hashes.SHA256()).public_bytes(Encoding.PEM))


def test_a_file_that_is_not_one_self_signed_ca_certificate_is_refused_and_changes_nothing(network, tmp_path):  # noqa: F811
    a = network["a"]
    tls = a.node.identity
    kept = tls_files(a)
    bad = {"garbage": b"not a certificate\n",
           "leaf": tls.cert_file.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n",
           "intermediate": tls.chain_file.read_bytes(),
           "several": tls.ca_file.read_bytes() + tls.chain_file.read_bytes(),
           "self-signed leaf": self_signed(ca=False, key_cert_sign=False),
           "CA without keyCertSign": self_signed(ca=True, key_cert_sign=False)}
    for what, pem in bad.items():
        path = tmp_path / f"{what}.pem"
        path.write_bytes(pem)
        result = run(a.dir, "trust-root", str(path))
        assert result.exit_code == 2, (what, result.output)
        assert refusal(result)["code"] == "not_a_root", what
        assert tls_files(a) == kept, what


def test_a_root_the_served_signer_does_not_chain_to_is_refused_and_changes_nothing(network, tmp_path):  # noqa: F811
    a = network["a"]
    kept = tls_files(a)
    path = tmp_path / "root.pem"
    path.write_bytes(foreign_pki()["ca.pem"])
    result = run(a.dir, "trust-root", str(path))
    assert result.exit_code == 2, result.output
    assert refusal(result)["code"] == "root_not_served"
    assert tls_files(a) == kept


def test_a_new_root_that_certifies_the_registrys_signer_is_taken_and_the_node_pulls_again(network, interposer,  # noqa: F811
                                                                                          tmp_path):
    a = network["a"]
    old_root = x509.load_pem_x509_certificate(a.node.identity.ca_file.read_bytes())
    root, cross = new_root_certifying_the_intermediate()
    path = tmp_path / "root.pem"
    path.write_bytes(root.public_bytes(Encoding.PEM))
    point_at(a, interposer.url)
    interposer.answers["/ca/chain.pem"] = (200, {}, cross.public_bytes(Encoding.PEM))  # what the registry serves now
    routing.publish("drill", force=True)
    db.session.commit()

    result = run(a.dir, "trust-root", str(path))
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["new_root"] == {"sha256": sha256(root), "subject": root.subject.rfc4514_string()}
    assert answer["old_root"] == {"sha256": sha256(old_root), "subject": old_root.subject.rfc4514_string()}
    assert answer["certificate_chains"] is True and answer["routes_forgotten"] is False
    assert answer["pull"]["outcome"] == "accepted" and answer["pull"]["version"] == routing.head().version
    tls = a.node.identity
    assert tls.ca_file.read_bytes() == root.public_bytes(Encoding.PEM)
    assert tls.chain_file.read_bytes() == cross.public_bytes(Encoding.PEM)
    assert tls.bundle_file.read_bytes() == root.public_bytes(Encoding.PEM) + cross.public_bytes(Encoding.PEM)


def test_after_a_new_ca_the_node_takes_its_root_and_refuses_the_old_roots_tables(network, interposer,  # noqa: F811
                                                                                tmp_path):
    """A new CA at the management node's address (docs/operations.md, "Recovery is a new CA"): before trust-root
    the node refuses its tables and says what to do; after it, the new CA's table is taken, the table held under
    the old root is forgotten, a table signed under the old root is refused, and the node is told that its own
    certificate, issued under the old root, needs a new enrolment."""
    a, b = network["a"], network["b"]
    genuine = routing.head().version
    new_ca = foreign_pki()
    point_at(a, interposer.url)
    answer_with_forged_table(interposer, new_ca["key"], new_ca["signer"], version=genuine + 5, moved=b.id)
    for name in ("chain.pem", "crl.crl", "root-crl.crl"):
        interposer.answers[f"/ca/{name}"] = (200, {}, new_ca[name])
    before = run(a.dir, "routes", "pull")
    assert before.exit_code == 2 and refusal(before)["code"] == "bad_signer"
    assert "trust-root" in refusal(before)["message"]

    path = tmp_path / "root.pem"
    path.write_bytes(new_ca["ca.pem"])
    result = run(a.dir, "trust-root", str(path))
    assert result.exit_code == NOT_ALL_DONE, result.output
    answer = json.loads(result.stdout)
    assert answer["new_root"]["sha256"] == sha256(x509.load_pem_x509_certificate(new_ca["ca.pem"]))
    assert answer["certificate_chains"] is False and "join --again" in answer["certificate_problem"]
    assert "csr --out" in answer["certificate_problem"]  # `renew --force` is refused before the last third
    assert answer["routes_forgotten"] is True
    assert (answer["pull"]["outcome"], answer["pull"]["version"]) == ("accepted", genuine + 5)
    assert a.node.identity.ca_file.read_bytes() == new_ca["ca.pem"]
    assert a.node.identity.chain_file.read_bytes() == new_ca["chain.pem"]

    key, certificate = own_keys.route_signer()  # whoever holds the old CA's keys answers the node's pulls
    answer_with_forged_table(interposer, key, certificate, version=genuine + 2000, moved=b.id)
    interposer.answers["/ca/chain.pem"] = (200, {}, pki.authority().intermediate_certificate.public_bytes(Encoding.PEM))
    refused = run(a.dir, "routes", "pull")
    assert refused.exit_code == 2 and refusal(refused)["code"] == "bad_signer"
    reopened = Node(a.dir)
    try:
        assert reopened.routes.version == genuine + 5
    finally:
        reopened.close()
    assert a.node.identity.ca_file.read_bytes() == new_ca["ca.pem"]


def test_join_again_is_refused_while_the_certificate_chains_to_the_root_held(network):  # noqa: F811
    a = network["a"]
    result = run(a.dir, "join", "--again", "--token", "mpet_unused")
    assert result.exit_code == 2, result.output
    assert refusal(result)["code"] == "still_certified"


def test_join_again_applies_without_taking_a_root_from_the_network(network, interposer, tmp_path):  # noqa: F811
    """`join --again` applies under the root `trust-root` installed: the management node's /ca/ca.pem is never
    fetched. (This management node refuses the application, its endpoint being another node's already: a new CA
    with a new database, as docs/operations.md describes, knows neither.)"""
    a, minister = network["a"], network["minister"]
    new_ca = foreign_pki()
    point_at(a, interposer.url)
    for name in ("ca.pem", "chain.pem", "crl.crl", "root-crl.crl"):
        interposer.answers[f"/ca/{name}"] = (200, {}, new_ca[name])
    interposer.answers["/ca/route-signer.pem"] = (200, {}, new_ca["signer"].public_bytes(Encoding.PEM))
    path = tmp_path / "root.pem"
    path.write_bytes(new_ca["ca.pem"])
    assert run(a.dir, "trust-root", str(path)).exit_code == NOT_ALL_DONE
    certificate, key = a.node.identity.cert_file.read_bytes(), a.node.identity.key_file.read_bytes()

    result = run(a.dir, "join", "--again", "--token", enroll("360000", minister), "--wait", "0")
    assert result.exit_code == 2 and "already serves" in refusal(result)["message"]
    assert not any(exchange.path == "/ca/ca.pem" for exchange in interposer.exchanges)
    assert a.node.identity.ca_file.read_bytes() == new_ca["ca.pem"]
    assert (a.node.identity.cert_file.read_bytes(), a.node.identity.key_file.read_bytes()) == (certificate, key)
