"""CSR policy, CA files at rest, renewal and the certificate API (issue 4's bad input)."""

from __future__ import annotations

import os
import stat
import subprocess
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from app.database import utcnow
from app.errors import Conflict
from app.extensions import db
from app.pki import authority, csr_policy
from app.pki import service as pki
from app.pki.csr_policy import InvalidCSR
from app.pki.models import Certificate
from tests.factories import (
    NodeKeys,
    csr_of_version,
    csr_with_unreadable_extensions,
    csr_with_unreadable_subject,
    make_csr,
    make_key,
)
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def reason_for(pem) -> str:
    with pytest.raises(InvalidCSR) as caught:
        csr_policy.check_csr(csr_policy.load_csr(pem))
    return str(caught.value.message)


def test_good_keys_pass():
    for kind in ("ec256", "ec384", "rsa2048"):
        csr_policy.check_csr(csr_policy.load_csr(make_csr(make_key(kind))))


@pytest.mark.parametrize(("build", "reason"), [
    (lambda: "garbage\x00\x01", "not a PEM certificate signing request"),
    (lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n", "could not be parsed"),
    (lambda: make_csr(make_key("rsa1024")), "RSA keys below 2048 bits are refused"),
    (lambda: make_csr(dsa.generate_private_key(2048)), "DSA 2048 keys are refused"),
    (lambda: make_csr(ec.generate_private_key(ec.SECP192R1())), "curve secp192r1 is refused"),
    (lambda: make_csr(ec.generate_private_key(ec.SECP256K1())), "curve secp256k1 is refused"),
    (lambda: x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
     .sign(ed25519.Ed25519PrivateKey.generate(), None).public_bytes(serialization.Encoding.PEM).decode(),
     "Ed25519 keys are refused"),
    (lambda: "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 70000 + "\n-----END CERTIFICATE REQUEST-----\n",
     "larger than 64 KB"),
    (lambda: make_csr(make_key()) + make_csr(make_key()), "one certificate signing request (CSR), not 2"),
])
def test_bad_csrs_are_refused_with_a_reason(build, reason):
    assert reason in reason_for(build())


def openssl_csr(directory, *genpkey: str) -> str:
    """A CSR made by the openssl CLI from a key `openssl genpkey` makes with these options."""
    key = directory / "key.pem"
    subprocess.run(["openssl", "genpkey", *genpkey, "-out", str(key)], check=True, capture_output=True, timeout=120)
    return subprocess.run(["openssl", "req", "-new", "-key", str(key), "-subj", "/CN=node.example"], check=True,
                          capture_output=True, text=True, timeout=60).stdout


def test_an_rsa_pss_key_is_refused_for_ec_p256(app, tmp_path):
    """A key whose SPKI says id-RSASSA-PSS loads as an RSA key, and was certified as rsaEncryption: neither
    OpenSSL nor Python then paired the node's key with its certificate, and the node could never serve TLS."""
    pem = openssl_csr(tmp_path, "-algorithm", "RSA-PSS", "-pkeyopt", "rsa_keygen_bits:2048")
    reason = reason_for(pem)
    assert "RSA-PSS" in reason and "Use EC P-256" in reason
    with pytest.raises(InvalidCSR):  # and the CA never signs one, whatever its caller checked
        pki.authority().issue_node_certificate(csr_policy.load_csr(pem), node_id="36011100002025000001",
                                               org_name="Org", endpoint_host="node.example")


def test_an_rsa_public_exponent_below_65537_is_refused(tmp_path):
    """CA/B Baseline Requirements §6.1.6: an odd exponent of at least 65537; e = 3 invites the low-exponent
    attacks on RSA that padding mistakes open up."""
    reason = reason_for(make_csr(rsa.generate_private_key(public_exponent=3, key_size=2048)))
    assert "public exponent 3" in reason and "odd, at least 65537" in reason
    assert "public exponent 3" in reason_for(openssl_csr(tmp_path, "-algorithm", "RSA", "-pkeyopt",
                                                         "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_pubexp:3"))
    csr_policy.check_csr(csr_policy.load_csr(openssl_csr(
        tmp_path, "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-pkeyopt", "rsa_keygen_pubexp:65539")))


@pytest.mark.parametrize("bits", [2048, 4096])
def test_an_rsa_public_exponent_over_32_bits_is_refused(tmp_path, bits):
    """Only the lower bound was kept: e = 2**300 + 1 was certified, a key Go's crypto/rsa and other stacks cannot
    verify with (they take exponents of 32 bits at most; OpenSSL 64 bits above 3072-bit moduli, where the CSR was
    refused as "altered, or signed by a key other than the one it carries")."""
    exponent = 2**300 + 1
    reason = reason_for(openssl_csr(tmp_path, "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}",
                                    "-pkeyopt", f"rsa_keygen_pubexp:{exponent}"))
    digits = str(exponent)
    assert f"exponent {digits[:10]}…{digits[-6:]} are refused" in reason and "at most 32 bits" in reason, reason


@pytest.mark.parametrize("wrap", [lambda pem: pem + "\x00", lambda pem: "\x07" + pem,
                                  lambda pem: pem + "\u202e", lambda pem: "Certificate Request:\n" + pem,
                                  lambda pem: pem.encode() + b"\x00"])
def test_text_around_the_pem_block_is_refused(wrap):
    assert "nothing but white space may come before -----BEGIN CERTIFICATE REQUEST-----" in reason_for(
        wrap(make_csr()))


def test_white_space_around_the_pem_block_is_taken():
    pem = make_csr()
    csr_policy.check_csr(csr_policy.load_csr(" \r\n\t" + pem.replace("\n", "\r\n") + "\n\n\f "))


def test_a_certificate_where_a_csr_belongs(app):
    assert "certificate, not a certificate signing request" in reason_for(pki.authority().root_certificate
                                                                          .public_bytes(serialization.Encoding.PEM))


def test_a_broken_self_signature_is_refused():
    csr = x509.load_pem_x509_csr(make_csr().encode())
    der = bytearray(csr.public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    assert "self-signature does not verify" in reason_for(pem)


@pytest.mark.parametrize("how", ["integer", "badutf8"])
def test_a_csr_whose_subject_cannot_be_read_is_refused(how):
    """cryptography loads such a CSR and verifies its signature, and raises only when the subject is read: the
    review page's description then failed every door that takes a CSR with a 500 (and renewal issued for it)."""
    assert "subject cannot be read" in reason_for(csr_with_unreadable_subject(how))


def test_renewal_with_a_csr_whose_subject_cannot_be_read_is_refused(client, people):  # noqa: F811
    node, keys, token, row = renewal_window_open(client, people)
    response = renew(client, token, csr_with_unreadable_subject())
    assert (response.status_code, response.get_json()["error"]["code"]) == (400, "invalid_csr")
    assert pki.current_certificate(node.node_id).serial == row.serial  # nothing issued


@pytest.mark.parametrize(("how", "reason"), [("duplicate", "carries the subjectAltName extension twice"),
                                           ("x400", "x400Address")])
def test_a_csr_whose_extensions_cannot_be_read_is_refused(how, reason):
    """cryptography reads a CSR's extensions lazily, and a repeated extension or an x400Address name raises an
    exception that is no ValueError: the review page's description then failed the application doors with a 500,
    and renewal, which never describes the CSR, certified it."""
    message = reason_for(csr_with_unreadable_extensions(how))
    assert "extensions cannot be read" in message and reason in message


@pytest.mark.parametrize("how", ["duplicate", "x400"])
def test_renewal_with_a_csr_whose_extensions_cannot_be_read_is_refused(client, people, how):  # noqa: F811
    node, keys, token, row = renewal_window_open(client, people)
    response = renew(client, token, csr_with_unreadable_extensions(how))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (400, "invalid_csr", "csr")
    assert "extensions cannot be read" in error["message"]
    assert pki.current_certificate(node.node_id).serial == row.serial  # nothing issued


def test_a_csr_of_another_version_than_v1_is_refused_pem_or_der():
    """cryptography refuses a CSR whose version is not v1 with InvalidVersion, which is no ValueError: every door
    that reads a CSR (an application, the retry of a lost answer, a renewal, the console's file, `flask
    applications submit`) answered 500 (node API review)."""
    assert "version" in reason_for(csr_of_version(1))
    with pytest.raises(InvalidCSR) as caught:
        csr_policy.pem_from_file(csr_of_version(2, form="der"))
    assert "version" in str(caught.value.message)


def test_renewal_with_a_csr_of_another_version_than_v1_is_refused(client, people):  # noqa: F811
    node, keys, token, row = renewal_window_open(client, people)
    response = renew(client, token, csr_of_version(1))
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (400, "invalid_csr", "csr"), error
    assert pki.current_certificate(node.node_id).serial == row.serial  # nothing issued


def test_ca_true_and_extra_names_in_a_csr_are_never_honoured(app, people):  # noqa: F811
    from app.admission import applications
    from tests.factories import node_document

    key = make_key()
    csr = make_csr(key, "evil", extensions=[
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.SubjectAlternativeName([x509.DNSName("bank.example"), x509.DNSName("*.gov.cn")]), False)])
    minister, jx = people
    document = node_document("360000", csr=csr, endpoint="https://im.jx.example")
    node = applications.approve(applications.submit_by_user(document, by=jx), by=minister)
    db.session.commit()
    certificate = x509.load_pem_x509_certificate(pki.current_certificate(node.node_id).pem.encode())
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["im.jx.example"]
    assert certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == node.node_id


def test_init_twice_refuses_and_keys_are_encrypted_0600(app, runner):
    directory = pki.ca_directory()
    result = runner.invoke(args=["ca", "init"])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output
    for name in ("root.key", "intermediate.key", "route-signer.key", "management.key"):
        path = directory / name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
        with pytest.raises((TypeError, ValueError)):
            serialization.load_pem_private_key(path.read_bytes(), password=b"wrong passphrase")


def test_root_offline_keeps_the_intermediate_issuing(app, people, runner, tmp_path):  # noqa: F811
    export = tmp_path / "root-offline.key"
    result = runner.invoke(args=["ca", "root-offline", str(export)])
    assert result.exit_code == 0, result.output
    assert not (pki.ca_directory() / "root.key").exists() and stat.S_IMODE(os.stat(export).st_mode) == 0o600
    app.extensions.pop("mpim_authority", None)
    node, _ = admit_with_keys(people)
    assert pki.current_certificate(node.node_id) is not None


def test_rsa_ca_option(app, tmp_path):
    config = authority.CAConfig(key_type="rsa")
    authority.init_ca(tmp_path / "rsa-ca", b"pass", config)
    loaded = authority.Authority.load(tmp_path / "rsa-ca", b"pass", config)
    assert loaded.root_certificate.public_key().key_size == 3072
    with pytest.raises(authority.CAAlreadyInitialised):
        authority.init_ca(tmp_path / "rsa-ca", b"pass", config)


def renewal_window_open(client, admins):
    """An admitted node with a session, its certificate moved into the last third of its validity (committed)."""
    node, keys = admit_with_keys(admins)
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    row = pki.current_certificate(node.node_id)
    row.not_before, row.not_after = utcnow() - timedelta(days=70), utcnow() + timedelta(days=20)
    db.session.commit()
    return node, keys, token, row


def renew(client, session_token, csr):
    return client.post("/api/v1/certificates/renew", json={"csr": csr},
                       headers={"Authorization": f"Bearer {session_token}"})


@pytest.mark.parametrize(("body", "code"), [({}, "missing_csr"), ({"csr": None}, "missing_csr"),
                                            ({"csr": ""}, "missing_csr"), ({"csr": "  \n"}, "missing_csr"),
                                            ({"csr": 5}, "invalid_csr"), ({"csr": ["x"]}, "invalid_csr"),
                                            ({"csr": "not a csr"}, "invalid_csr")])
def test_renewal_refuses_a_missing_or_non_text_csr_as_an_application_does(client, people, body, code):  # noqa: F811
    """docs/protocol.md: an application, a change request and a renewal refuse the same CSR alike. Renewal said
    invalid_csr "No CSR was given" for every one of these, 5 and ["x"] too, where an application says
    missing_csr, or "csr must be a PEM string."."""
    from app.admission import tokens
    from tests.factories import node_document

    node, keys = admit_with_keys(people)
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    row = pki.current_certificate(node.node_id)
    row.not_before, row.not_after = utcnow() - timedelta(days=70), utcnow() + timedelta(days=20)  # window open
    _, raw = tokens.create_token("360000", by=people[1])
    db.session.commit()
    applied = client.post("/api/v1/applications", json={**node_document("360000"), "csr": None, **body},
                          headers={"Authorization": f"Bearer {raw}"}).get_json()["error"]
    renewed = client.post("/api/v1/certificates/renew", json=body,
                          headers={"Authorization": f"Bearer {token}"}).get_json()["error"]
    assert (renewed["code"], renewed["field"]) == (code, "csr")
    assert renewed == applied
    assert pki.current_certificate(node.node_id).serial == row.serial  # nothing issued


def test_renewal_refuses_a_csr_with_text_around_its_pem_block(client, people):  # noqa: F811
    node, keys, token, row = renewal_window_open(client, people)
    error = renew(client, token, NodeKeys().csr + "\x00").get_json()["error"]
    assert (error["code"], error["field"]) == ("invalid_csr", "csr")
    assert "nothing but white space may come" in error["message"]
    assert pki.current_certificate(node.node_id).serial == row.serial  # nothing issued


def test_renewal_in_the_last_third_changes_the_route_fingerprint(client, people):  # noqa: F811
    from app.routing import service as routing

    node, keys = admit_with_keys(people)
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    too_early = renew(client, token, NodeKeys().csr)
    assert too_early.status_code == 409 and too_early.get_json()["error"]["code"] == "renewal_too_early"
    row = pki.current_certificate(node.node_id)
    row.not_before, row.not_after = utcnow() - timedelta(days=70), utcnow() + timedelta(days=20)
    db.session.commit()
    version = routing.head_version()
    response = renew(client, token, NodeKeys().csr)
    assert response.status_code == 201 and response.data.count(b"BEGIN CERTIFICATE") == 3
    new = pki.current_certificate(node.node_id)
    assert new.serial != row.serial and db.session.get(Certificate, row.serial).revoked_at is None
    assert routing.head_version() == version + 1
    assert routing.entries_of(routing.head())[node.node_id]["cert_sha256"] == new.sha256
    assert renew(client, token, "garbage").get_json()["error"]["code"] == "invalid_csr"


def test_renewal_cannot_take_the_key_another_nodes_application_waits_with(client, people):  # noqa: F811
    """One key, one node (docs/protocol.md) counts pending applications too. Renewal checked certificates only: a
    node renewed with the key of another node's waiting application or change request, whose approval then found
    its key certified for someone else. The node's own change request holds no key against it."""
    from app.admission import applications
    from tests.factories import node_document

    _, jx_admin = people
    node, keys = admit_with_keys(people)
    other, _ = admit_with_keys(people)
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    row = pki.current_certificate(node.node_id)
    row.not_before, row.not_after = utcnow() - timedelta(days=70), utcnow() + timedelta(days=20)  # window open
    admission, change, own = NodeKeys(), NodeKeys(), NodeKeys()
    waiting = applications.submit_by_user(node_document("360000", csr=admission.csr), by=jx_admin)
    other_change = applications.submit_change(other, node_document(endpoint=other.endpoint, csr=change.csr),
                                              by=jx_admin)
    applications.submit_change(node, node_document(endpoint=node.endpoint, csr=own.csr), by=jx_admin)
    db.session.commit()
    for held, application in ((admission, waiting), (change, other_change)):
        refused = renew(client, token, held.csr)
        error = refused.get_json()["error"]
        assert (refused.status_code, error["code"], error["field"]) == (409, "key_pending", "csr")
        assert application.id not in error["message"]  # a node is told of no other node's application
    assert [c.serial for c in pki.node_certificates(node.node_id)] == [row.serial]
    assert renew(client, token, own.csr).status_code == 201


def test_every_record_of_a_nodes_own_renewal_names_the_node(client, people):  # noqa: F811
    """A node's renewal issues a certificate (recorded as node:ID) and publishes a route version for it, which
    was recorded as "anonymous": the API request has no console user, and nothing else named the node."""
    from sqlalchemy import select

    from app.audit.models import AuditRecord

    node, keys, token, row = renewal_window_open(client, people)
    before = db.session.scalar(select(db.func.max(AuditRecord.seq)))
    assert renew(client, token, NodeKeys().csr).status_code == 201
    records = db.session.execute(select(AuditRecord.action, AuditRecord.actor).where(AuditRecord.seq > before)
                                 .order_by(AuditRecord.seq)).all()
    assert {"certificate.issue", "routes.publish"} <= {action for action, _ in records}
    assert {actor for _, actor in records} == {f"node:{node.node_id}"}, records


def test_suspended_node_cannot_renew(client, people):  # noqa: F811
    """Not through its session (which died with the suspension), nor by an admin."""
    from app.admission import nodes
    from tests.test_sessions import await_refusal

    node, keys = admit_with_keys(people)
    minister, _ = people
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    row = pki.current_certificate(node.node_id)
    row.not_before, row.not_after = utcnow() - timedelta(days=70), utcnow() + timedelta(days=20)  # window open
    nodes.suspend(node, "x", by=minister)
    db.session.commit()
    assert await_refusal(client, {"Authorization": f"Bearer {token}"}) == (401, "session_revoked")
    response = renew(client, token, NodeKeys().csr)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "session_revoked"
    with pytest.raises(Conflict) as caught:
        pki.renew(node, NodeKeys().csr, by=minister)
    assert caught.value.code == "node_suspended"
    assert [r.serial for r in pki.node_certificates(node.node_id)] == [row.serial]


def test_certificate_fetch_with_the_enrollment_token(app, client, people):  # noqa: F811
    from app.admission import applications, tokens
    from tests.factories import node_document

    minister, jx = people
    _, raw = tokens.create_token("360000", by=jx)
    db.session.commit()
    submitted = client.post("/api/v1/applications", json=node_document(),
                            headers={"Authorization": f"Bearer {raw}"}).get_json()
    path = "/api/v1/nodes/{}/certificate"
    node = applications.approve(applications.get(submitted["application_id"]), by=minister)
    db.session.commit()
    response = client.get(path.format(node.node_id), headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.data.count(b"BEGIN CERTIFICATE") == 3
    other, _ = admit_with_keys(people)
    refused = client.get(path.format(other.node_id), headers={"Authorization": f"Bearer {raw}"})
    assert refused.status_code == 404

    # The download hands out certificates only: a CA key the passphrase no longer opens does not stop it.
    app.extensions.pop("mpim_authority", None)
    app.config["MPIM_CA_PASSPHRASE"] = "not-the-ca-passphrase"
    response = client.get(path.format(node.node_id), headers={"Authorization": f"Bearer {raw}"})
    assert response.status_code == 200 and response.data.count(b"BEGIN CERTIFICATE") == 3


def test_who_may_fetch_a_certificate_is_asked_before_whether_the_node_exists(client, people):  # noqa: F811
    """Without the admitting token or the node's own session, an existing and a made-up node id get the
    same refusal: the endpoint is no oracle of which node ids exist (suspended and revoked ones included)."""
    node, keys = admit_with_keys(people)
    other, _ = admit_with_keys(people)
    path = "/api/v1/nodes/{}/certificate"
    made_up = "36000000002025999999"
    for node_id in (node.node_id, made_up):
        response = client.get(path.format(node_id))
        assert (response.status_code, response.get_json()["error"]["code"]) == (401, "missing_session")
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get(path.format(node.node_id), headers=headers).status_code == 200
    for node_id in (other.node_id, made_up):
        response = client.get(path.format(node_id), headers=headers)
        assert (response.status_code, response.get_json()["error"]["code"]) == (403, "wrong_node")


def test_console_inventory_and_revocation(app, people):  # noqa: F811
    from tests.conftest import Console

    node, _ = admit_with_keys(people)
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    row = pki.current_certificate(node.node_id)
    listing = admin_console.client.get("/certificates/?state=valid").get_data(as_text=True)
    assert row.serial[:16] in listing
    detail = admin_console.client.get(f"/certificates/{row.serial}").get_data(as_text=True)
    assert row.sha256 in detail and "BEGIN CERTIFICATE" in detail
    response = admin_console.post_form(f"/certificates/{row.serial}", {"reason": "key_compromise"},
                                       action=f"/certificates/{row.serial}/revoke")
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Certificate, row.serial).revocation_reason == "key_compromise"


def test_the_revoke_card_says_a_compromise_takes_the_other_certificates_of_the_key(app, people):  # noqa: F811
    """Revoked as key_compromise, a certificate takes with it the node's others of the same key (a renewal may keep
    it): the card says so, and when those are all the node has, the confirmation says the node leaves the table."""
    from tests.conftest import Console

    node, keys = admit_with_keys(people)
    first = pki.current_certificate(node.node_id)
    renewed = pki.renew(node, keys.csr, by=people[0])
    db.session.commit()
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    for row, other in ((renewed, first), (first, renewed)):
        page = admin_console.client.get(f"/certificates/{row.serial}").get_data(as_text=True)
        assert "同一密钥" in page and other.serial in page, page
        assert "在以新密钥续期前不在路由表中" in page  # revoked as key compromise, it leaves the node without one
    pki.renew(node, NodeKeys().csr, by=people[0])
    db.session.commit()
    page = admin_console.client.get(f"/certificates/{first.serial}").get_data(as_text=True)
    assert "同一密钥" in page and renewed.serial in page and "在以新密钥续期前不在路由表中" not in page


def test_a_forged_revocation_reason_is_refused_and_repeated_short_and_escaped(app, people):  # noqa: F811
    """Only a forged form sends a reason outside the list; the refusal names it without repeating 10,000
    characters, or a right-to-left override that would turn the message around."""
    from tests.conftest import Console

    node, _ = admit_with_keys(people)
    admin_console = Console(app.test_client())
    admin_console.login("minister")
    row = pki.current_certificate(node.node_id)
    response = admin_console.post_form(f"/certificates/{row.serial}", {"reason": "\u202e" + "x" * 10_000},
                                       action=f"/certificates/{row.serial}/revoke")
    assert response.status_code == 302
    page = admin_console.client.get(f"/certificates/{row.serial}").get_data(as_text=True)
    assert "\\u202e" + "x" * 34 + "…。" in page and "x" * 35 not in page and "\u202e" not in page
    db.session.expire_all()
    assert db.session.get(Certificate, row.serial).revoked_at is None



def test_renewal_while_the_ca_key_cannot_be_opened_is_a_generic_503_and_the_log_names_the_file(
        app, client, people, caplog):  # noqa: F811
    """The node learns to come back later; which CA file failed (and that the passphrase is wrong) is for the log
    and the ministry admins' banner."""
    import logging

    node, keys, token, row = renewal_window_open(client, people)
    app.extensions.pop("mpim_authority", None)  # as in a worker that has not loaded the CA yet
    app.config["MPIM_CA_PASSPHRASE"] = "not-the-ca-passphrase"
    with caplog.at_level(logging.WARNING, logger="mpim.pki"):
        response = renew(client, token, NodeKeys().csr)
    assert response.status_code == 503 and response.headers["Retry-After"] == "30"
    assert response.get_json()["error"] == {"code": "ca_unavailable",
                                            "message": "The CA cannot answer now; try again later."}
    assert ".key" not in response.get_data(as_text=True) and "passphrase" not in response.get_data(as_text=True)
    assert f"renewal of {node.node_id}" in caplog.text and "intermediate.key" in caplog.text
    assert [r.serial for r in pki.node_certificates(node.node_id)] == [row.serial]  # nothing issued
