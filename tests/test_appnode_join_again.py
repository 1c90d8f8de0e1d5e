"""`join --again` (docs/protocol.md §10, docs/operations.md "A node enrolled again"): a joined node whose
certificate no longer serves (revoked, on the CRL it holds; expired; or not chaining to the root it holds) is
enrolled again by the same management node, with a new key and a new node id, keeping its database.

A real management node over HTTP, real nodes over mutual TLS (`network`); the ministry revokes through
`nodes.revoke`, which the console's and the CLI's `flask nodes revoke` call. A hostile management node answers the
certificate fetch through an `Interposer` (test_appnode_signer_revocation.py), everything else passed on."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from app.admission import applications, nodes
from app.appnode.certificate import public_key_bytes
from app.appnode.cli import cli
from app.appnode.node import Node
from app.appnode.registry import Identity
from app.extensions import db
from app.pki import profiles
from app.pki import service as pki
from app.routing import service as routing
from tests.appnode_harness import approve_pending, enroll
from tests.test_appnode import history, network, stored_messages, sync_until  # noqa: F401 (fixture)
from tests.test_appnode_signer_revocation import interposer  # noqa: F401 (fixture)
from tests.test_appnode_trust_root import point_at, refusal
from tests.test_sessions import people  # noqa: F401 (fixture)


def run(data_dir, *args):
    return CliRunner().invoke(cli, ["--data", str(data_dir), "--json", *args])


def revoke(served, minister) -> None:
    nodes.revoke(nodes.get(served.id), "drill: the node's disk was stolen", by=minister)
    db.session.commit()


def reopened(served) -> None:
    """Serve the data directory again as `run` does after `join --again`: a new process, the new certificate."""
    served.stop()
    served.node.close()
    served.node = Node(served.dir)
    served.start()


def tls_state(served) -> dict:
    tls = served.node.identity
    return {"cert": tls.cert_file.read_bytes(), "key": tls.key_file.read_bytes(),
            "pending": tls.pending_key_file.read_bytes() if tls.pending_key_file.exists() else None,
            "node_id": served.node.setting("node_id")}


def submitted_and_approved(served, minister, token: str) -> str:
    """`join --again` applies and stops waiting (--wait 0); the minister approves. The new node id."""
    waiting = run(served.dir, "join", "--again", "--token", token, "--wait", "0")
    assert waiting.exit_code == 2, waiting.output
    assert refusal(waiting)["code"] == "application_pending"
    approve_pending(served.node, minister)
    return applications.get(served.node.setting("application_id")).node_id


def test_a_revoked_node_enrols_again_keeping_its_users_and_history_and_its_peer_takes_it(network):  # noqa: F811
    a, b, minister = network["a"], network["b"], network["minister"]
    before = a.node.send_text("zhangsan", b.user("lisi"), "撤销前")
    old_id, old_key, endpoint = a.id, a.node.identity.key_file.read_bytes(), a.node.config.endpoint
    refused = run(a.dir, "join", "--again", "--token", "mpet_unused")
    assert refused.exit_code == 2 and refusal(refused)["code"] == "still_certified"
    assert "not on the CRL" in refusal(refused)["message"]

    revoke(a, minister)
    token = enroll("360000", minister)
    waiting = run(a.dir, "join", "--again", "--token", token, "--wait", "0")
    assert waiting.exit_code == 2 and refusal(waiting)["code"] == "application_pending", waiting.output
    assert "was revoked" in waiting.stderr  # A fetched the CRL that lists it and says so
    application = applications.get(a.node.setting("application_id"))
    assert application.endpoint == endpoint  # a revoked node holds no endpoint: the same one is enrolled again
    approve_pending(a.node, minister)

    joined = run(a.dir, "join", "--again", "--token", token)
    assert joined.exit_code == 0, joined.output
    answer = json.loads(joined.stdout)
    new_id = answer["node_id"]
    assert new_id != old_id and new_id == applications.get(application.id).node_id
    # A running `run` takes it up itself (`test_a_running_server_takes_up_a_join_again_run_beside_it`).
    assert f"a running `run` serves as {new_id} within seconds" in joined.stderr, joined.stderr
    assert answer["route_version"] == routing.head().version
    reopened(a)
    tls = a.node.identity
    assert a.id == new_id and tls.key_file.read_bytes() != old_key and not tls.pending_key_file.exists()
    assert public_key_bytes(tls.certificate().public_key()) == public_key_bytes(tls.key().public_key())
    assert tls.certificate().subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == new_id
    assert [user.user_id for user in a.node.users()] == ["wangwu", "zhangsan"]
    # The history stays in the database; it names zhangsan by the former node id, and reading it under the new one
    # is not provided yet (docs/operations.md, "A node enrolled again").
    assert [message.message_id for message in stored_messages(a)] == [before.message_id]
    assert a.node.routes.entry(new_id)["endpoint"] == endpoint

    sync_until(b, lambda: b.node.routes.entry(new_id) is not None, "B's table to list A enrolled again")
    after = a.node.send_text("zhangsan", b.user("lisi"), "重新入网")
    assert after.conversation_id != before.conversation_id  # zhangsan's address names the new node id
    assert [row.state for row in a.node.outbox() if row.message_id == after.message_id] == ["delivered"]
    received = history(b, "lisi", after.conversation_id)
    assert [(entry["sender"]["node_id"], entry["content"]["text"]) for entry in received] == [(new_id, "重新入网")]


def test_an_expired_certificate_is_no_longer_certified_but_the_active_node_still_holds_its_endpoint(network):  # noqa: F811
    """The management node issues A an expired certificate for its key: `join --again` says so and applies; the
    node record, still active, keeps its endpoint (SPEC §3: one endpoint, one node), so the application is refused
    and nothing changes: for an active node the ministry renews it, or revokes it first (docs/operations.md)."""
    a, minister = network["a"], network["minister"]
    now = datetime.now(UTC)
    csr = x509.load_pem_x509_csr(Identity.csr_for(a.node.identity.key()).encode())
    expired = pki.authority().issue_node_certificate(csr, node_id=a.id, org_name="江西省公安厅",
                                                     endpoint_host="127.0.0.1", not_before=now - timedelta(days=2),
                                                     not_after=now - timedelta(days=1))
    a.node.identity.store_certificate(expired.public_bytes(Encoding.PEM))
    kept = tls_state(a)

    result = run(a.dir, "join", "--again", "--token", enroll("360000", minister), "--wait", "0")
    assert result.exit_code == 2, result.output
    assert "expired" in result.stderr
    assert refusal(result)["code"] == "endpoint_in_use"
    assert {**tls_state(a), "pending": None} == {**kept, "pending": None}


def foreign_certificate_naming(node_id: str, public_key) -> bytes:
    """A certificate for `node_id`, with the profile the node asks for, from a CA the node does not trust."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    issuer = pki.authority().intermediate_certificate.subject
    leaf = (x509.CertificateBuilder().subject_name(profiles.subject_name("CN", "江西省公安厅", node_id))
            .issuer_name(issuer).public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(profiles.node_names(node_id, "127.0.0.1")), critical=False)
            .sign(key, hashes.SHA256()))
    return leaf.public_bytes(Encoding.PEM)


def test_an_issued_certificate_for_another_key_or_from_another_ca_is_not_installed(network, interposer):  # noqa: F811
    a, minister = network["a"], network["minister"]
    revoke(a, minister)
    point_at(a, interposer.url)
    new_id = submitted_and_approved(a, minister, token := enroll("360000", minister))
    kept = tls_state(a)
    assert kept["pending"] is not None
    pending = Identity.csr_for(a.node.identity.key(a.node.identity.pending_key_file))
    other_key = ec.generate_private_key(ec.SECP256R1())
    other_csr = x509.load_pem_x509_csr(Identity.csr_for(other_key).encode())
    for_another_key = pki.authority().issue_node_certificate(other_csr, node_id=new_id, org_name="江西省公安厅",
                                                             endpoint_host="127.0.0.1")
    pending_key = x509.load_pem_x509_csr(pending.encode()).public_key()
    hostile = {"certificate_key_not_held": for_another_key.public_bytes(Encoding.PEM),
               "certificate_not_installed": foreign_certificate_naming(new_id, pending_key)}
    path = f"/api/v1/nodes/{new_id}/certificate"
    for code, pem in hostile.items():
        interposer.answers[path] = (200, {"Content-Type": "application/x-pem-file"}, pem)
        result = run(a.dir, "join", "--again", "--token", token)
        assert result.exit_code == 2, result.output
        assert refusal(result)["code"] == code
        assert tls_state(a) == kept, code

    del interposer.answers[path]  # the genuine certificate: installed on the next run
    joined = run(a.dir, "join", "--again", "--token", token)
    assert joined.exit_code == 0, joined.output
    assert json.loads(joined.stdout)["node_id"] == new_id


def test_a_join_again_cut_short_is_finished_by_running_it_again(network):  # noqa: F811
    """The install writes the new key, then the certificate, then records the node id. Cut after the key, a run
    again found the certificate's key "current", not the pending one, and refused it for ever (KeyNotHeld); cut
    after the certificate, the node held a valid certificate of its new id under its old one, and `join --again`
    refused it as still certified. Each state is made as the cut leaves it; running the command again finishes."""
    from app.appnode.registry import write_private
    from app.appnode.store import put_setting

    a, minister = network["a"], network["minister"]
    old_id = a.id
    revoke(a, minister)
    token = enroll("360000", minister)
    new_id = submitted_and_approved(a, minister, token)
    tls = a.node.identity
    write_private(tls.key_file, tls.pending_key_file.read_bytes())  # cut after the new key was written
    finished = run(a.dir, "join", "--again", "--token", token)
    assert finished.exit_code == 0, finished.output
    assert json.loads(finished.stdout)["node_id"] == new_id and not tls.pending_key_file.exists()
    assert public_key_bytes(tls.certificate().public_key()) == public_key_bytes(tls.key().public_key())

    with a.node.db.begin() as session:  # cut after the certificate, before the node id was recorded
        put_setting(session, "node_id", old_id)
        put_setting(session, "enrollment_token", token)
    again = run(a.dir, "join", "--again", "--token", token)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["node_id"] == new_id
    assert Node(a.dir).node_id == new_id


def health_of(served) -> dict:
    """The running `run` process's /api/v1/health, over TLS checked against the root the node holds."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(served.node.identity.bundle_file))
    with urllib.request.urlopen(f"https://127.0.0.1:{served.port}/api/v1/health", timeout=5,
                                context=context) as response:
        return json.loads(response.read())


def test_a_running_server_takes_up_a_join_again_run_beside_it(network):  # noqa: F811
    """`join --again` in another process while `run` serves: the server answered as the old id and refused messages
    for the new one (`wrong_recipient`) until an operator restarted it. Its loop now notices the new id and the
    worker reloads, as after a renewal; a peer's message to the new address is delivered."""
    from tests.appnode_processes import eventually

    a, b, minister = network["a"], network["b"], network["minister"]
    a.stop()
    a.start_process()
    old_id = a.id
    assert health_of(a)["node_id"] == old_id
    revoke(a, minister)
    token = enroll("360000", minister)
    new_id = submitted_and_approved(a, minister, token)
    joined = run(a.dir, "join", "--again", "--token", token)
    assert joined.exit_code == 0 and json.loads(joined.stdout)["node_id"] == new_id, joined.output
    eventually(lambda: health_of(a)["node_id"] == new_id, 30, what="the running server to serve as the new id")
    assert f"this node joined again as {new_id} (was {old_id})" in a.log.read_text("utf-8")
    assert "restart" not in joined.stderr, joined.stderr
    assert f"a running `run` serves as {new_id} within seconds" in joined.stderr, joined.stderr

    sync_until(b, lambda: b.node.routes.entry(new_id) is not None, "B's table to list A enrolled again")
    sent = b.node.send_text("lisi", f"zhangsan@{new_id}", "重新入网之后")
    assert [row.state for row in b.node.outbox() if row.message_id == sent.message_id] == ["delivered"]
