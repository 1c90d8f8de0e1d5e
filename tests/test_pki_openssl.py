"""The CA proven with real tools: openssl verify, CRL checks, OCSP, and TLS handshakes."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from app.pki import own_keys, revocation
from app.pki import service as pki
from app.pki.models import Certificate
from tests.factories import NodeKeys
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def issued(app, people, tmp_path):  # noqa: F811
    node, keys = admit_with_keys(people)
    row = pki.current_certificate(node.node_id)
    loaded = pki.authority()
    pem = lambda cert: cert.public_bytes(serialization.Encoding.PEM)  # noqa: E731
    (tmp_path / "root.pem").write_bytes(pem(loaded.root_certificate))
    (tmp_path / "intermediate.pem").write_bytes(pem(loaded.intermediate_certificate))
    (tmp_path / "node.pem").write_text(row.pem)
    (tmp_path / "node.key").write_bytes(keys.key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
    return {"node": node, "keys": keys, "row": row, "dir": tmp_path, "minister": people[0]}


def write_crl(issued) -> None:
    (issued["dir"] / "crl.pem").write_text(revocation.current_crl().pem)


def test_openssl_verifies_an_issued_certificate_and_its_contents(issued):
    result = openssl("verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem", "node.pem", cwd=issued["dir"])
    assert result.returncode == 0 and "node.pem: OK" in result.stdout
    certificate = x509.load_pem_x509_certificate(issued["row"].pem.encode())
    node_id = issued["node"].node_id
    assert certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == node_id
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert f"urn:mpim:node:{node_id}" in names.get_values_for_type(x509.UniformResourceIdentifier)
    assert names.get_values_for_type(x509.DNSName) == [issued["node"].endpoint.split("//")[1].split(":")[0]]
    usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {x509.ExtendedKeyUsageOID.SERVER_AUTH, x509.ExtendedKeyUsageOID.CLIENT_AUTH} == set(usages)
    assert certificate.serial_number.bit_length() >= 64
    assert certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    assert dt.timedelta(days=90) < lifetime <= dt.timedelta(days=90, minutes=2)  # backdated by a minute
    intermediate = pki.authority().intermediate_certificate
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert constraints.ca and constraints.path_length == 0


def test_crl_check_passes_then_fails_with_certificate_revoked(issued):
    write_crl(issued)
    ok = openssl("verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "intermediate.pem", "-CRLfile",
                 "crl.pem", "node.pem", cwd=issued["dir"])
    assert ok.returncode == 0, ok.stdout + ok.stderr  # no "different CRL scope" problem
    revocation.revoke(issued["row"], "key_compromise", by=issued["minister"])
    write_crl(issued)
    revoked = openssl("verify", "-crl_check", "-CAfile", "root.pem", "-untrusted", "intermediate.pem", "-CRLfile",
                      "crl.pem", "node.pem", cwd=issued["dir"])
    assert revoked.returncode != 0 and "certificate revoked" in revoked.stdout + revoked.stderr


def test_a_verifier_whose_clock_is_half_a_minute_behind_takes_a_crl_signed_just_now(app, issued):
    """Certificates start a minute before they are signed (clock skew); CRLs started the second they were signed,
    and a verifier 30 s behind refused every certificate ("CRL is not yet valid") for 30 s after each new CRL.
    Both CRLs start as far back as certificates do; nextUpdate stays the period after signing."""
    from app.extensions import db
    from app.pki.authority import BACKDATE

    periods = {revocation.INTERMEDIATE_CRL: dt.timedelta(days=app.config["MPIM_CRL_DAYS"]),
               revocation.ROOT_CRL: dt.timedelta(days=app.config["MPIM_ROOT_CRL_DAYS"])}
    states = {revocation.INTERMEDIATE_CRL: revocation.regenerate_crl(), revocation.ROOT_CRL:
              revocation.regenerate_root_crl()}
    db.session.commit()
    crls = {which: x509.load_der_x509_crl(state.der) for which, state in states.items()}
    signed = {which: crl.next_update_utc - periods[which] for which, crl in crls.items()}  # when each was signed
    (issued["dir"] / "crl.pem").write_text(states[revocation.INTERMEDIATE_CRL].pem)
    (issued["dir"] / "root-crl.pem").write_text(states[revocation.ROOT_CRL].pem)
    behind = int(min(signed.values()).timestamp()) - 30
    checked = openssl("verify", "-x509_strict", "-attime", str(behind), "-crl_check_all", "-CAfile", "root.pem",
                      "-untrusted", "intermediate.pem", "-CRLfile", "crl.pem", "-CRLfile", "root-crl.pem", "node.pem",
                      cwd=issued["dir"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    for which, crl in crls.items():
        assert crl.last_update_utc == states[which].this_update == signed[which] - BACKDATE
        assert states[which].next_update == crl.next_update_utc


def test_ocsp_answers_good_then_revoked(issued, live_server):
    def ask() -> str:
        result = openssl("ocsp", "-issuer", "intermediate.pem", "-cert", "node.pem", "-url", f"{live_server}/ca/ocsp",
                         "-CAfile", "root.pem", "-verify_other", "intermediate.pem", cwd=issued["dir"])
        assert "Response verify OK" in result.stderr, result.stdout + result.stderr
        return result.stdout

    assert "node.pem: good" in ask()
    revocation.revoke(issued["row"], "key_compromise", by=issued["minister"])
    from app.extensions import db

    db.session.commit()
    assert "node.pem: revoked" in ask()


def test_revoking_the_node_revokes_its_certificates_and_regenerates_the_crl(issued):
    from app.admission import nodes
    from app.extensions import db

    before = revocation.current_crl().crl_number
    nodes.revoke(issued["node"], "decommissioned", by=issued["minister"])
    db.session.commit()
    assert db.session.get(Certificate, issued["row"].serial).revocation_reason == "cessation_of_operation"
    crl = x509.load_pem_x509_crl(revocation.current_crl().pem.encode())
    assert revocation.current_crl().crl_number == before + 1
    assert crl.get_revoked_certificate_by_serial_number(int(issued["row"].serial, 16)) is not None


def serve_tls(context: ssl.SSLContext) -> tuple[int, list]:
    """A one-connection TLS server on 127.0.0.1 recording the handshake outcome."""
    outcome: list = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)  # accept() returns or raises: a client that never came ends this thread
    port = listener.getsockname()[1]

    def run():
        try:
            connection, _ = listener.accept()
            with context.wrap_socket(connection, server_side=True) as tls:
                outcome.append(tls.getpeercert()["subject"])
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            outcome.append(error)
        finally:
            listener.close()

    threading.Thread(target=run, daemon=True).start()
    return port, outcome


def tls_context(issued, server: bool, cert: str, key: str, crl: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=str(issued["dir"] / "root.pem"))
    context.load_verify_locations(cafile=str(issued["dir"] / "intermediate.pem"))
    context.load_cert_chain(str(issued["dir"] / cert), str(issued["dir"] / key))
    context.verify_mode = ssl.CERT_REQUIRED
    if not server:
        context.check_hostname = False
    if crl:
        context.load_verify_locations(cafile=str(issued["dir"] / "crl.pem"))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def second_holder(issued, people, name: str):  # noqa: F811
    node, keys = admit_with_keys(people)
    (issued["dir"] / f"{name}.pem").write_text(pki.current_certificate(node.node_id).pem)
    (issued["dir"] / f"{name}.key").write_bytes(keys.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return node


def handshake(issued, client_cert: str, client_key: str, server_crl: bool = False):
    write_crl(issued)
    port, outcome = serve_tls(tls_context(issued, True, "peer.pem", "peer.key", crl=server_crl))
    client = tls_context(issued, False, client_cert, client_key)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
                client.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.recv(2)
    except (ssl.SSLError, OSError):
        pass
    for _ in range(100):
        if outcome:
            break
        threading.Event().wait(0.02)
    return outcome[0]


def test_mutual_tls_between_two_holders_succeeds(issued, people):  # noqa: F811
    second_holder(issued, people, "peer")
    subject = handshake(issued, "node.pem", "node.key")
    assert not isinstance(subject, Exception), subject


def test_mutual_tls_fails_with_a_foreign_certificate(issued, people, tmp_path):  # noqa: F811
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    second_holder(issued, people, "peer")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "36000000002025000001")])
    now = dt.datetime.now(dt.UTC)
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + dt.timedelta(1))
               .sign(key, hashes.SHA256()))
    (issued["dir"] / "foreign.pem").write_bytes(foreign.public_bytes(serialization.Encoding.PEM))
    (issued["dir"] / "foreign.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                                  serialization.PrivateFormat.PKCS8,
                                                                  serialization.NoEncryption()))
    assert isinstance(handshake(issued, "foreign.pem", "foreign.key"), ssl.SSLError)


def test_mutual_tls_fails_with_a_revoked_certificate(issued, people):  # noqa: F811
    second_holder(issued, people, "peer")
    revocation.revoke(issued["row"], "key_compromise", by=issued["minister"])
    assert isinstance(handshake(issued, "node.pem", "node.key", server_crl=True), ssl.SSLError)


def test_mutual_tls_fails_with_an_expired_certificate(issued, people):  # noqa: F811
    second_holder(issued, people, "peer")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    keys = NodeKeys()
    expired = pki.authority().issue_node_certificate(
        x509.load_pem_x509_csr(keys.csr.encode()), node_id=issued["node"].node_id, org_name="x",
        endpoint_host="127.0.0.1", not_before=past, not_after=past + dt.timedelta(days=1))
    (issued["dir"] / "expired.pem").write_bytes(expired.public_bytes(serialization.Encoding.PEM))
    (issued["dir"] / "expired.key").write_bytes(keys.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    assert isinstance(handshake(issued, "expired.pem", "expired.key"), ssl.SSLError)


def test_management_certificates_carry_crl_and_ocsp_addresses(app):
    for certificate in (pki.authority().management_certificate, pki.authority().route_signer_certificate):
        assert certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_an_ocsp_request_for_two_certificates_at_once_is_malformed_not_an_error(issued, client):
    """cryptography cannot read multi-certificate requests (NotImplementedError): we answer malformedRequest."""
    from cryptography.x509 import ocsp

    made = openssl("ocsp", "-issuer", "intermediate.pem", "-cert", "node.pem", "-cert", "node.pem",
                   "-reqout", "two.der", "-no_nonce", cwd=issued["dir"])
    assert made.returncode == 0, made.stderr
    request = (Path(issued["dir"]) / "two.der").read_bytes()
    response = client.post("/ca/ocsp", data=request, content_type="application/ocsp-request")
    assert response.status_code == 200
    answer = ocsp.load_der_ocsp_response(response.data)
    assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def test_an_ocsp_post_of_the_wrong_type_garbage_or_too_large_is_refused_as_such(client):
    """Handled, and now held: a body that is no OCSP request is RFC 6960's malformedRequest (what OCSP clients
    read), a body of another type a 415 and one past the request limit a 413, each without a 500."""
    from cryptography.x509 import ocsp

    wrong_type = client.post("/ca/ocsp", data=b"0", content_type="text/plain")
    assert (wrong_type.status_code, wrong_type.get_json()["error"]["code"]) == (415, "unsupported_media_type")
    for junk in (b"", b"\x00\xff not DER", b"\x30\x82\xff\xff"):
        answer = client.post("/ca/ocsp", data=junk, content_type="application/ocsp-request")
        assert answer.status_code == 200 and answer.mimetype == "application/ocsp-response"
        assert ocsp.load_der_ocsp_response(answer.data).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    too_large = client.post("/ca/ocsp", data=b"0" * (client.application.config["MAX_CONTENT_LENGTH"] + 1),
                            content_type="application/ocsp-request")
    assert (too_large.status_code, too_large.get_json()["error"]["code"]) == (413, "request_entity_too_large")
    assert too_large.get_json()["error"]["message"] == "The body is larger than 1 MiB (1,048,576 bytes)."


def test_every_level_of_the_chain_has_a_crl_for_crl_check_all(issued, client):
    """The root's CRL, served at /ca/root-crl.pem, lets `-crl_check_all` check the intermediate too."""
    write_crl(issued)
    intermediate = pki.authority().intermediate_certificate
    points = intermediate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert points[0].full_name[0].value.endswith("/ca/root-crl.crl")
    only_leaf = openssl("verify", "-crl_check_all", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
                        "-CRLfile", "crl.pem", "node.pem", cwd=issued["dir"])
    assert only_leaf.returncode != 0 and "unable to get certificate CRL" in only_leaf.stdout + only_leaf.stderr
    served = client.get("/ca/root-crl.pem")
    assert served.status_code == 200
    (issued["dir"] / "root-crl.pem").write_bytes(served.data)
    checked = openssl("crl", "-in", "root-crl.pem", "-CAfile", "root.pem", "-noout", cwd=issued["dir"])
    assert checked.returncode == 0 and "verify OK" in checked.stdout + checked.stderr
    every_level = openssl("verify", "-crl_check_all", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
                          "-CRLfile", "crl.pem", "-CRLfile", "root-crl.pem", "node.pem", cwd=issued["dir"])
    assert every_level.returncode == 0, every_level.stdout + every_level.stderr
    der = client.get("/ca/root-crl.crl")
    assert der.mimetype == "application/pkix-crl"
    assert x509.load_der_x509_crl(der.data).public_bytes(serialization.Encoding.PEM) == served.data


def test_the_root_crl_is_signed_again_with_the_root_key_brought_back(app, runner, tmp_path):
    from app.extensions import db
    from app.pki import authority

    first = revocation.current_crl(revocation.ROOT_CRL).crl_number
    authority.root_offline(pki.ca_directory(), tmp_path / "root.key")
    offline = runner.invoke(args=["ca", "root-crl"])
    assert offline.exit_code == 1 and "root key is offline" in offline.output
    wrong = runner.invoke(args=["ca", "root-crl", "--root-key", str(pki.ca_directory() / "intermediate.key")])
    assert wrong.exit_code == 1 and "not the root certificate's key" in wrong.output
    assert revocation.current_crl(revocation.ROOT_CRL).crl_number == first  # nothing changed by the refusals
    done = runner.invoke(args=["ca", "root-crl", "--root-key", str(tmp_path / "root.key")])
    assert done.exit_code == 0, done.output
    db.session.expire_all()
    state = revocation.current_crl(revocation.ROOT_CRL)
    assert state.crl_number == first + 1 and state.pem in done.output
    crl = x509.load_pem_x509_crl(state.pem.encode())
    assert crl.is_signature_valid(pki.authority().root_certificate.public_key())
    assert not (pki.ca_directory() / "root.key").exists()  # brought back for the signature only


def test_each_crl_asked_for_is_audited_as_the_root_crls_are(app, runner):
    """`flask ca crl --regenerate` signed a new CRL and recorded nothing, while `flask ca root-crl` and the
    scheduler's renewal of the root CRL record theirs: now `ca init`, the command and the scheduler's refresh
    each record the CRL they signed (a revocation's CRL is part of the revocation, recorded as such)."""
    from sqlalchemy import select

    from app.audit import service as audit
    from app.audit.models import AuditRecord
    from app.extensions import db
    from app.pki.models import CRLState

    def crl_records() -> list[tuple[str, str]]:
        return [(row.actor, row.target) for row in db.session.scalars(
            select(AuditRecord).where(AuditRecord.action == "ca.crl").order_by(AuditRecord.seq))]

    assert crl_records() == [("tests", "1")]  # the `app` fixture's `ca init`
    printed = runner.invoke(args=["ca", "crl"])  # printing the current CRL signs nothing
    assert printed.exit_code == 0 and crl_records() == [("tests", "1")]
    result = runner.invoke(args=["ca", "crl", "--regenerate"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert revocation.current_crl().crl_number == 2 and revocation.current_crl().pem in result.output
    assert crl_records() == [("tests", "1"), ("cli", "2")]
    state = db.session.get(CRLState, revocation.INTERMEDIATE_CRL)
    state.next_update = pki.utcnow() + dt.timedelta(hours=1)  # past half of its week
    db.session.commit()
    assert "issued CRL 3" in revocation.crl_refresh_job()
    assert crl_records() == [("tests", "1"), ("cli", "2"), ("scheduler", "3")]
    assert "CRL 3 good until" in revocation.crl_refresh_job()  # nothing signed, nothing recorded
    assert len(crl_records()) == 3 and audit.verify().ok


def test_the_scheduler_renews_the_root_crl_only_while_the_root_key_is_online(app, tmp_path):
    from app.extensions import db
    from app.pki import authority
    from app.pki.models import CRLState

    state = db.session.get(CRLState, revocation.ROOT_CRL)
    state.next_update = pki.utcnow() + dt.timedelta(days=10)  # past half of its year
    db.session.commit()
    before = state.crl_number
    assert "root CRL" in revocation.crl_refresh_job()
    assert revocation.current_crl(revocation.ROOT_CRL).crl_number == before + 1
    state = db.session.get(CRLState, revocation.ROOT_CRL)
    state.next_update = pki.utcnow() + dt.timedelta(days=10)
    db.session.commit()
    authority.root_offline(pki.ca_directory(), tmp_path / "root.key")
    assert "root CRL" not in revocation.crl_refresh_job()
    assert revocation.current_crl(revocation.ROOT_CRL).crl_number == before + 1
    warnings = [str(warning) for warning in own_keys.expiry_warnings()]
    assert any("root CRL runs out in" in warning and "flask ca root-crl --root-key FILE" in warning
               for warning in warnings)  # the offline way, as the root key is kept


def test_the_scheduler_renews_the_management_nodes_own_certificates_in_their_last_third(issued, monkeypatch):
    from datetime import timedelta

    from app.audit.models import AuditRecord
    from app.extensions import db
    from app.routing import service as routing

    assert own_keys.service_renewal_job() == "nothing due"
    loaded = pki.authority()
    old_signer, old_management = loaded.route_signer_certificate, loaded.management_certificate
    version = routing.head_version()
    later = old_signer.not_valid_after_utc - timedelta(days=100)  # of 365: inside the last third
    monkeypatch.setattr(own_keys, "utcnow", lambda: later)
    assert own_keys.service_certificates_due() == ["route-signer", "management"]
    assert any("route signer certificate expires in" in str(w) for w in own_keys.expiry_warnings(now=later + timedelta(
        days=75)))  # had the scheduler not run
    assert own_keys.service_renewal_job() == "renewed route-signer, management"
    monkeypatch.undo()

    signer, management = loaded.route_signer_certificate, loaded.management_certificate
    assert signer != old_signer and management != old_management
    head = routing.head()
    assert head.version == version + 1 and head.signer_sha256 == signer.fingerprint(hashes.SHA256()).hex()
    directory = issued["dir"]
    (directory / "management.pem").write_bytes((pki.ca_directory() / "management.pem").read_bytes())
    verified = openssl("verify", "-CAfile", "root.pem", "-untrusted", "intermediate.pem", "management.pem",
                       cwd=directory)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert x509.load_pem_x509_certificate((directory / "management.pem").read_bytes()) == management
    kinds = [row.kind for row in db.session.scalars(db.select(Certificate).where(Certificate.issued_by == "scheduler"))]
    assert sorted(kinds) == ["management", "route_signer"]
    actions = db.session.scalars(db.select(AuditRecord.target).where(AuditRecord.actor == "scheduler",
                                                                     AuditRecord.action == "certificate.issue"))
    assert {format(signer.serial_number, "x"), format(management.serial_number, "x")} == set(actions)
    assert own_keys.service_renewal_job() == "nothing due"


def test_ocsp_over_get_answers_good_then_revoked(issued, client):
    """RFC 6960 A.1.1 GET: the openssl-made request, base64 and URL-encoded into the path."""
    import base64
    from urllib.parse import quote

    from cryptography.x509 import ocsp

    made = openssl("ocsp", "-issuer", "intermediate.pem", "-cert", "node.pem", "-reqout", "one.der", "-no_nonce",
                   cwd=issued["dir"])
    assert made.returncode == 0, made.stderr
    path = "/ca/ocsp/" + quote(base64.b64encode((issued["dir"] / "one.der").read_bytes()).decode(), safe="")

    def status():
        response = client.get(path)
        assert response.status_code == 200 and response.mimetype == "application/ocsp-response"
        answer = ocsp.load_der_ocsp_response(response.data)
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.serial_number == int(issued["row"].serial, 16)
        return answer.certificate_status

    assert status() == ocsp.OCSPCertStatus.GOOD
    revocation.revoke(issued["row"], "key_compromise", by=issued["minister"])
    pki.db.session.commit()
    assert status() == ocsp.OCSPCertStatus.REVOKED
    for junk in ("not-base64!", quote(base64.b64encode(b"junk").decode(), safe="")):
        response = client.get(f"/ca/ocsp/{junk}")
        answer = ocsp.load_der_ocsp_response(response.data)
        assert answer.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert response.headers["Cache-Control"] == "no-store"  # an error is not to be kept


def test_ocsp_over_get_says_what_caches_may_keep_and_that_they_ask_again_before_each_use(issued, client):
    """GET answers carried no caching headers. A signed answer may be stored but is revalidated before each use
    (no-cache, as the CRL is: a revocation is seen at the next ask, not at the answer's nextUpdate an hour on);
    one to a nonce is its asker's alone and is not stored."""
    import base64
    from email.utils import parsedate_to_datetime
    from urllib.parse import quote

    from cryptography.x509 import ocsp

    for nonce in (False, True):
        made = openssl("ocsp", "-issuer", "intermediate.pem", "-cert", "node.pem", "-reqout", "ask.der",
                       *([] if nonce else ["-no_nonce"]), cwd=issued["dir"])
        assert made.returncode == 0, made.stderr
        asked = quote(base64.b64encode((issued["dir"] / "ask.der").read_bytes()).decode(), safe="")
        response = client.get(f"/ca/ocsp/{asked}")
        answer = ocsp.load_der_ocsp_response(response.data)
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        if nonce:
            assert response.headers["Cache-Control"] == "no-store" and "Expires" not in response.headers
            continue
        assert response.headers["Cache-Control"] == "public, no-cache, no-transform"
        assert parsedate_to_datetime(response.headers["Expires"]) == answer.next_update_utc
        assert parsedate_to_datetime(response.headers["Last-Modified"]) == answer.this_update_utc


def test_no_crl_lists_a_revocation_dated_after_its_own_this_update(app, issued):
    """Backdating thisUpdate a minute (854e5a6) made the CRL signed for a revocation list it as made a minute after
    the CRL's own thisUpdate, which says what was revoked as of then; the root's CRL likewise for an intermediate.
    thisUpdate is backdated no further than the newest revocation listed, on both CRLs; a refresh with nothing
    newer still starts a minute back."""
    from app.extensions import db
    from app.pki import intermediate
    from app.pki.authority import BACKDATE

    revocation.revoke(issued["row"], "key_compromise", by=issued["minister"])
    db.session.commit()
    crl = x509.load_der_x509_crl(revocation.current_crl().der)
    assert all(entry.revocation_date_utc <= crl.last_update_utc for entry in crl), \
        [(entry.revocation_date_utc, crl.last_update_utc) for entry in crl]
    intermediate.revoke("cessation_of_operation", by=issued["minister"])
    db.session.commit()
    root_crl = x509.load_der_x509_crl(revocation.current_crl(revocation.ROOT_CRL).der)
    assert len(list(root_crl)) == 1 and all(entry.revocation_date_utc <= root_crl.last_update_utc
                                            for entry in root_crl)
    from app.database import utcnow
    from app.pki.models import Certificate

    db.session.execute(db.update(Certificate).values(revoked_at=utcnow() - dt.timedelta(hours=1))
                       .where(Certificate.revoked_at.is_not(None)))  # a refresh with nothing revoked just now
    refreshed = revocation.regenerate_crl()
    db.session.commit()
    assert refreshed.next_update - dt.timedelta(days=app.config["MPIM_CRL_DAYS"]) - refreshed.this_update == BACKDATE
