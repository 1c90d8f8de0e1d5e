"""A ministry admin renews a reference node's certificate from a CSR its operator handed over (docs/protocol.md §4).

The table lists the node with the new certificate at once; the node's next route pull fetches that certificate
and installs it if the node holds its key (current or pending), so peers reach it again without a restart. A
certificate for a key the node lacks is never installed: the node keeps its table and says what to do.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from app.admission import nodes
from app.appnode.certificate import KeyNotHeld
from app.appnode.outbox import RETRY_AFTER_MAX
from app.appnode.registry import RegistryError
from app.appnode.renewal import RENEWAL_CHECK_EVERY
from app.appnode.transport import fingerprint_of
from app.errors import Conflict
from app.extensions import db
from app.pki import published, revocation
from app.pki import service as pki
from tests.appnode_processes import eventually
from tests.factories import make_csr, make_key
from tests.test_appnode import history, network  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def node_cli(served, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.appnode", "--data", str(served.dir), *args],
                          capture_output=True, text=True, timeout=60)


def admin_renews(network, served, csr_pem: str):  # noqa: F811
    """What the console's renewal form does: `pki.renew(node, csr, by=<ministry admin>)`, then commit."""
    row = pki.renew(nodes.get(served.id), csr_pem, by=network["minister"])
    db.session.commit()
    return row


def await_listed(served, node_id: str, sha256: str) -> None:
    """Pull until the table lists `node_id` with `sha256` (on PostgreSQL the management node's serving
    process hears of a new version by NOTIFY, a moment after the commit)."""
    def listed() -> bool:
        served.node.sync_routes()
        return served.node.routes.entry(node_id)["cert_sha256"] == sha256
    eventually(listed, timeout=10, interval=0.05, what=f"{served.id}'s table to list {node_id} with {sha256}")


def served_fingerprint(served) -> str:
    """The SHA-256 of the certificate the node's HTTPS server presents to a new connection."""
    context = ssl.create_default_context(cafile=str(served.node.identity.bundle_file))
    context.check_hostname = False
    with context.wrap_socket(socket.create_connection(("127.0.0.1", served.port))) as tls:
        return fingerprint_of(tls.getpeercert(binary_form=True))


def assert_both_ways(a, b, text: str) -> None:
    to_b = a.node.send_text("zhangsan", b.user("lisi"), f"{text} A→B")
    to_a = b.node.send_text("lisi", a.user("zhangsan"), f"{text} B→A")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert [row.state for row in b.node.outbox()] == ["delivered"]
    assert to_a.conversation_id == to_b.conversation_id
    for served, user in ((a, "zhangsan"), (b, "lisi")):
        texts = [message["content"]["text"] for message in history(served, user, to_a.conversation_id)]
        assert {f"{text} A→B", f"{text} B→A"} <= set(texts)


def test_an_admin_renewal_from_the_current_keys_csr_is_installed_on_the_next_route_pull(network):  # noqa: F811
    a, b = network["a"], network["b"]
    old, key_pem = a.node.identity.fingerprint(), (a.dir / "tls" / "node.key").read_bytes()
    done = node_cli(a, "csr")
    assert done.returncode == 0 and done.stdout.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    issued = admin_renews(network, a, done.stdout)
    assert issued.sha256 != old
    await_listed(b, a.id, issued.sha256)

    result = a.node.sync_routes()  # what the node loop does every route_interval

    assert result.outcome == "accepted"
    assert a.node.identity.fingerprint() == issued.sha256
    assert a.node.routes.entry(a.id)["cert_sha256"] == issued.sha256
    assert (a.dir / "tls" / "node.key").read_bytes() == key_pem  # the same key, certified anew
    assert served_fingerprint(a) == issued.sha256  # the running server presents it, no restart
    assert_both_ways(a, b, "续期之后")
    assert json.loads(node_cli(a, "--json", "status").stdout)["certificate_problem"] is None


def test_an_admin_renewal_from_a_new_keys_csr_promotes_the_pending_key(network):  # noqa: F811
    a, b = network["a"], network["b"]
    done = node_cli(a, "--json", "csr", "--new-key", "--out", str(a.dir / "renew.csr"))
    document = json.loads(done.stdout)
    pending = a.dir / "tls" / "pending.key"
    assert document["key"] == "pending" and not document["reused"]
    assert oct(pending.stat().st_mode & 0o777) == "0o600"
    assert (a.dir / "renew.csr").read_text() == document["csr"]
    pending_pem = pending.read_bytes()
    again = node_cli(a, "--json", "csr", "--new-key")  # a second ask reuses the waiting key, and says so
    assert json.loads(again.stdout)["reused"] and "reusing the pending key" in again.stderr
    assert pending.read_bytes() == pending_pem
    issued = admin_renews(network, a, document["csr"])
    await_listed(b, a.id, issued.sha256)

    done = node_cli(a, "--json", "routes", "pull")  # the operator's pull does what the loop's does
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "accepted"

    assert (a.dir / "tls" / "node.key").read_bytes() == pending_pem and not pending.exists()
    assert oct((a.dir / "tls" / "node.key").stat().st_mode & 0o777) == "0o600"
    assert served_fingerprint(a) == issued.sha256
    # The server process still holds the older table and expects the old certificate; its own next pull
    # finds the certificate already in the files, and takes the table
    assert a.node.sync_routes().outcome == "accepted"
    assert a.node.routes.entry(a.id)["cert_sha256"] == a.node.identity.fingerprint() == issued.sha256
    assert_both_ways(a, b, "新密钥")


def test_a_certificate_for_a_key_the_node_does_not_hold_is_refused_and_reported(network):  # noqa: F811
    a, b = network["a"], network["b"]
    old, version = a.node.identity.fingerprint(), a.node.routes.version
    stranger = admin_renews(network, a, make_csr(make_key()))
    await_listed(b, a.id, stranger.sha256)

    with pytest.raises(KeyNotHeld, match="for a key this node does not hold"):
        a.node.sync_routes()

    assert a.node.identity.fingerprint() == old and a.node.routes.version == version
    assert served_fingerprint(a) == old
    done = node_cli(a, "routes", "pull")
    assert done.returncode == 2 and "certificate_key_not_held" in done.stderr and stranger.sha256 in done.stderr
    status = json.loads(node_cli(a, "--json", "status").stdout)
    assert status["certificate_sha256"] == old and status["route_version"] == version
    assert f"issued certificate {stranger.sha256} for a key this node does not hold" in status["certificate_problem"]
    assert "csr" in status["certificate_problem"]

    # What the message asks for: a CSR from the node, and a new renewal from it
    issued = admin_renews(network, a, node_cli(a, "csr").stdout)
    await_listed(b, a.id, issued.sha256)
    assert a.node.sync_routes().outcome == "accepted"
    assert a.node.identity.fingerprint() == issued.sha256
    assert json.loads(node_cli(a, "--json", "status").stdout)["certificate_problem"] is None
    assert_both_ways(a, b, "恢复")


@pytest.mark.parametrize("revoked", ["node", "certificate"])
def test_a_revocation_is_the_certificate_problem_in_status_not_only_the_registrys(network, revoked):  # noqa: F811
    a = network["a"]
    fingerprint = a.node.identity.fingerprint()
    if revoked == "node":
        nodes.revoke(nodes.get(a.id), "drill", by=network["minister"])
    else:
        revocation.revoke(pki.current_certificate(a.id), "key_compromise", by=network["minister"])
    db.session.commit()

    done = node_cli(a, "routes", "pull")  # a process of its own opens a new node session, which is refused
    assert done.returncode == 2 and f"{revoked}_revoked" in done.stderr

    status = json.loads(node_cli(a, "--json", "status").stdout)
    assert status["registry_problem"].startswith(f"{revoked}_revoked")
    assert status["certificate_problem"].startswith(f"certificate {fingerprint} revoked by the management node")
    assert f"\nproblem: certificate {fingerprint} revoked by the management node" in node_cli(a, "status").stdout
    if revoked == "certificate":  # what the problem asks for: a renewal from a CSR for a new key made by the node
        assert "`python -m app.appnode csr --new-key`" in status["certificate_problem"]
        issued = admin_renews(network, a, node_cli(a, "csr", "--new-key").stdout)
        await_listed(network["b"], a.id, issued.sha256)
        assert node_cli(a, "routes", "pull").returncode == 0
        status = json.loads(node_cli(a, "--json", "status").stdout)
        assert status["certificate_sha256"] == issued.sha256
        assert status["certificate_problem"] is None and status["registry_problem"] is None


@pytest.mark.parametrize("pull", ["cli", "loop"])
def test_a_node_whose_only_certificate_was_revoked_as_compromised_recovers_with_a_new_key(network, pull):  # noqa: F811
    """The management node never certifies a compromised key again and refuses a session signed with it, so
    the node opens the session with its pending key, fetches the certificate issued for that key and installs it."""
    a, b = network["a"], network["b"]
    old = a.node.identity.fingerprint()
    revocation.revoke(pki.current_certificate(a.id), "key_compromise", by=network["minister"])
    db.session.commit()
    with pytest.raises(Conflict, match="never certified again"):  # the same key: refused
        admin_renews(network, a, node_cli(a, "csr").stdout)
    db.session.rollback()
    done = node_cli(a, "--json", "csr", "--new-key")
    pending_pem = (a.dir / "tls" / "pending.key").read_bytes()
    issued = admin_renews(network, a, json.loads(done.stdout)["csr"])
    await_listed(b, a.id, issued.sha256)

    if pull == "cli":  # the operator's `routes pull`, a process of its own
        done = node_cli(a, "routes", "pull")
        assert done.returncode == 0, done.stderr
        assert "installed" in done.stdout
    else:  # the node loop's pull in the serving process, whose node session the revocation ended
        assert a.node.sync_routes().outcome == "accepted"
        assert a.node.identity.fingerprint() == issued.sha256

    assert (a.dir / "tls" / "node.key").read_bytes() == pending_pem and not (a.dir / "tls" / "pending.key").exists()
    status = json.loads(node_cli(a, "--json", "status").stdout)
    assert status["certificate_sha256"] == issued.sha256 != old
    assert status["certificate_problem"] is None and status["registry_problem"] is None
    a.node.sync_routes()  # the serving process takes the table too (after the CLI, from the files it installed)
    assert a.node.routes.entry(a.id)["cert_sha256"] == a.node.identity.fingerprint() == issued.sha256
    assert served_fingerprint(a) == issued.sha256
    assert_both_ways(a, b, "换钥之后")


def test_csr_new_key_after_a_refused_renew_says_which_command_may_have_made_the_pending_key(network):  # noqa: F811
    a = network["a"]
    refused = node_cli(a, "renew", "--force")  # too early: the management node refuses, the new key stays
    assert refused.returncode == 2 and "renewal_too_early" in refused.stderr
    done = node_cli(a, "csr", "--new-key")
    assert done.returncode == 0
    assert "made by an earlier `csr --new-key`, or by a `renew` that was refused" in done.stderr


class SessionRequests:
    """What the management node is asked at `POST /api/v1/session`, and what it answered, as its WSGI app sees
    them (every request passes through unchanged)."""

    def __init__(self, app, monkeypatch):
        self.answers: list[str] = []
        served = app.wsgi_app

        def recording(environ, start_response):
            if environ["PATH_INFO"] == "/api/v1/session":
                def start(status, headers, *args):
                    self.answers.append(status.split()[0])
                    return start_response(status, headers, *args)
                return served(environ, start)
            return served(environ, start_response)
        monkeypatch.setattr(app, "wsgi_app", recording)

    def taken(self) -> list[str]:
        answers, self.answers = self.answers, []
        return answers


def test_a_pull_while_no_certificate_is_valid_asks_for_no_session_with_the_pending_key(network, app, monkeypatch):  # noqa: F811
    """While the node's only certificate is revoked, every pull also signed a session with the pending key
    `csr --new-key` made, and was refused again: a node with no valid certificate opens no session with any key,
    and the management node tells the current key, which its revoked certificate still verifies, why
    (certificate_revoked). The pending key is tried when the current key's signature is what is refused
    (bad_signature): then the node has a valid certificate, perhaps for that key. The revocation is still the
    problem `status` shows."""
    a = network["a"]
    fingerprint = a.node.identity.fingerprint()
    revocation.revoke(pki.current_certificate(a.id), "key_compromise", by=network["minister"])
    db.session.commit()
    csr = json.loads(node_cli(a, "--json", "csr", "--new-key").stdout)["csr"]
    sessions = SessionRequests(app, monkeypatch)

    for _ in range(2):  # the loop's pulls, one after another
        with pytest.raises(RegistryError, match="certificate_revoked|no valid certificate") as refused:
            a.node.sync_routes()
        assert refused.value.code == "certificate_revoked"
        assert sessions.taken() == ["401"]
    done = node_cli(a, "routes", "pull")  # the operator's, a process of its own
    assert done.returncode == 2 and "certificate_revoked" in done.stderr
    assert sessions.taken() == ["401"]
    status = json.loads(node_cli(a, "--json", "status").stdout)
    assert status["registry_problem"].startswith("certificate_revoked")
    assert status["certificate_problem"].startswith(f"certificate {fingerprint} revoked by the management node")

    issued = admin_renews(network, a, csr)  # now the current key's signature is refused, and the pending key opens
    await_listed(network["b"], a.id, issued.sha256)
    sessions.taken()  # B's, if its session needed renewing
    assert a.node.sync_routes().outcome == "accepted"
    assert sessions.taken() == ["401", "201"]
    assert a.node.identity.fingerprint() == issued.sha256


def test_a_renewal_while_the_ca_key_cannot_be_opened_keeps_the_certificate_and_comes_back_after_retry_after(
        network, app, monkeypatch, caplog):  # noqa: F811
    """The management node answers 503 ca_unavailable with Retry-After while its CA key cannot be opened (here: a
    wrong passphrase, as after a restart with the wrong secret). The node keeps its certificate and its peers,
    logs one line saying so, and its loop asks again after Retry-After (capped at an hour), not in an hour."""
    a, b = network["a"], network["b"]
    old = a.node.identity.fingerprint()
    later = datetime.now(UTC) + timedelta(days=70)  # of 90: inside the last third, on both clocks
    monkeypatch.setattr(pki, "utcnow", lambda: later)
    passphrase = app.config["MPIM_CA_PASSPHRASE"]
    app.extensions.pop("mpim_authority", None)  # as in a management node started with the wrong passphrase
    monkeypatch.setitem(app.config, "MPIM_CA_PASSPHRASE", "not-the-ca-passphrase")

    with caplog.at_level(logging.INFO, logger="mpim.appnode"):
        assert a.node.renew_if_due(later) == published.RETRY_SECONDS == 30
    lines = [record.getMessage() for record in caplog.records if record.name == "mpim.appnode"]
    assert len(lines) == 1, lines
    assert lines[0].startswith("certificate renewal put off (ca_unavailable, HTTP 503): the renewal was refused: "
                               f"The CA cannot answer now; try again later; keeping certificate {old}, valid until ")
    assert lines[0].endswith("; trying again in 30 s")
    assert a.node.identity.fingerprint() == old and [row.serial for row in pki.node_certificates(a.id)] == [
        pki.current_certificate(a.id).serial]  # nothing issued
    new_key = a.node.identity.pending_key_file.read_bytes()  # kept for the next try, its CSR unchanged
    a.node.send_text("zhangsan", b.user("lisi"), "证书未变")  # the old certificate still opens peers
    assert [row.state for row in a.node.outbox()] == ["delivered"]

    monkeypatch.setattr(published, "RETRY_SECONDS", 7200)  # a Retry-After past the cap: an hour
    assert a.node.renew_if_due(later) == RETRY_AFTER_MAX.total_seconds() == 3600

    monkeypatch.setitem(app.config, "MPIM_CA_PASSPHRASE", passphrase)  # the operator fixed it
    assert a.node.renew_if_due(later) == RENEWAL_CHECK_EVERY
    assert a.node.identity.fingerprint() != old
    assert (a.dir / "tls" / "node.key").read_bytes() == new_key  # the key made for the first try
    assert not a.node.identity.pending_key_file.exists()
