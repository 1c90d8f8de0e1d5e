"""`flask ca revoke-intermediate`: the ministry's answer to a leaked intermediate key. The root lists the
intermediate on its CRL, relying parties checking every level of the chain refuse what it signed, and this CA
signs nothing more with it."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.errors import DomainError
from app.extensions import db
from app.pki import authority, own_keys, revocation
from app.pki import service as pki
from app.pki.models import CRLState
from tests.factories import NodeKeys
from tests.test_pki_openssl import issued, openssl, write_crl  # noqa: F401 (fixture)
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def intermediate_serial() -> int:
    return pki.authority().intermediate_certificate.serial_number


def root_crl() -> x509.CertificateRevocationList:
    db.session.expire_all()
    return x509.load_der_x509_crl(revocation.current_crl(revocation.ROOT_CRL).der)


def revoke(runner, *options: str, input: str | None = None):
    return runner.invoke(args=["ca", "revoke-intermediate", *options], input=input)


def test_openssl_refuses_a_node_certificate_once_its_intermediate_is_revoked(issued, runner, client):  # noqa: F811
    write_crl(issued)
    done = revoke(runner, "--reason", "key_compromise", "--yes")
    assert done.exit_code == 0, done.output
    (issued["dir"] / "root-crl.pem").write_bytes(client.get("/ca/root-crl.pem").data)
    checked = openssl("verify", "-crl_check_all", "-CAfile", "root.pem", "-untrusted", "intermediate.pem",
                      "-CRLfile", "crl.pem", "-CRLfile", "root-crl.pem", "node.pem", cwd=issued["dir"])
    assert checked.returncode != 0 and "certificate revoked" in checked.stdout + checked.stderr
    entry = root_crl().get_revoked_certificate_by_serial_number(intermediate_serial())
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise


def test_it_asks_first_and_says_what_it_stops(app, runner, make_user):
    make_user("minister")
    before = revocation.current_crl(revocation.ROOT_CRL).crl_number
    declined = revoke(runner, "--reason", "ca_compromise", "--user", "minister", input="n\n")
    assert declined.exit_code == 1
    assert "every node will refuse new routing tables" in declined.output and "new CA" in declined.output
    assert root_crl().get_revoked_certificate_by_serial_number(intermediate_serial()) is None
    assert revocation.current_crl(revocation.ROOT_CRL).crl_number == before
    accepted = revoke(runner, "--reason", "ca_compromise", "--user", "minister", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert root_crl().get_revoked_certificate_by_serial_number(intermediate_serial()) is not None
    record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "ca.revoke_intermediate")).one()
    assert record.actor == "minister" and record.target == format(intermediate_serial(), "x")


def test_json_without_yes_is_refused_rather_than_prompted(app, runner):
    refused = revoke(runner, "--reason", "key_compromise", "--json", input="y\n")
    assert refused.exit_code == 2 and "Continue?" not in refused.output
    error = json.loads(refused.stderr)["error"]
    assert error["code"] == "usage_error" and "--yes" in error["message"]
    assert len(root_crl()) == 0
    done = revoke(runner, "--reason", "key_compromise", "--json", "--yes")
    assert done.exit_code == 0, done.output
    answer = json.loads(done.output)
    assert answer["serial"] == format(intermediate_serial(), "x") and answer["reason"] == "key_compromise"
    assert answer["root_crl"]["revoked"] == 1
    record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "ca.revoke_intermediate")).one()
    assert record.actor == "cli" and record.detail["reason"] == "key_compromise"


@pytest.mark.parametrize("reason", ["unspecified", "privilege_withdrawn", "certificate_hold", "no_such_reason"])
def test_a_reason_that_does_not_fit_a_ca_is_refused_before_asking(app, runner, reason):
    refused = revoke(runner, "--reason", reason)
    assert refused.exit_code == 1 and "Continue?" not in refused.output
    assert "key_compromise" in refused.output and "cessation_of_operation" in refused.output
    assert len(root_crl()) == 0


def test_the_root_key_is_brought_back_as_for_the_root_crl_and_a_second_revocation_is_refused(app, runner, tmp_path):
    authority.root_offline(pki.ca_directory(), tmp_path / "root.key")
    offline = revoke(runner, "--reason", "superseded", "--yes")
    assert offline.exit_code == 1 and "root key is offline" in offline.output
    not_root = str(pki.ca_directory() / "intermediate.key")
    wrong = revoke(runner, "--reason", "superseded", "--yes", "--root-key", not_root)
    assert wrong.exit_code == 1 and "not the root certificate's key" in wrong.output
    assert len(root_crl()) == 0
    assert not db.session.scalars(select(AuditRecord).where(AuditRecord.action == "ca.revoke_intermediate")).all()
    done = revoke(runner, "--reason", "superseded", "--yes", "--root-key", str(tmp_path / "root.key"))
    assert done.exit_code == 0, done.output
    again = revoke(runner, "--reason", "key_compromise", "--yes", "--root-key", str(tmp_path / "root.key"))
    assert again.exit_code == 1 and "revoked already" in again.output


def test_the_scheduler_keeps_listing_it_while_the_root_key_is_online(app, runner):
    assert revoke(runner, "--reason", "cessation_of_operation", "--yes").exit_code == 0
    state = db.session.get(CRLState, revocation.ROOT_CRL)
    state.next_update = pki.utcnow() + dt.timedelta(days=10)  # past half of its year
    db.session.commit()
    before = state.crl_number
    assert "issued root CRL" in revocation.crl_refresh_job()
    renewed = root_crl()
    assert renewed.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == before + 1
    entry = renewed.get_revoked_certificate_by_serial_number(intermediate_serial())
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.cessation_of_operation


def test_nothing_is_issued_with_a_revoked_intermediate(issued, runner):  # noqa: F811
    assert revoke(runner, "--reason", "key_compromise", "--yes").exit_code == 0
    db.session.expire_all()
    with pytest.raises(DomainError) as refused:
        pki.renew(issued["node"], NodeKeys().csr, by=issued["minister"])
    assert refused.value.code == "intermediate_revoked"
    db.session.rollback()
    with pytest.raises(DomainError) as refused:
        own_keys.rotate_route_signer(actor="tests")
    assert refused.value.code == "intermediate_revoked"
    db.session.rollback()


def test_nothing_is_issued_seconds_after_the_intermediate_ended(issued):  # noqa: F811
    loaded = pki.authority()
    end = loaded.intermediate_certificate.not_valid_after_utc
    loaded.clock = lambda: end + dt.timedelta(seconds=5)
    with pytest.raises(DomainError) as refused:
        pki.renew(issued["node"], NodeKeys().csr, by=issued["minister"])
    assert refused.value.code == "ca_expired"
    db.session.rollback()
    with pytest.raises(DomainError) as refused:
        own_keys.rotate_route_signer(actor="tests")
    assert refused.value.code == "ca_expired"
    db.session.rollback()
    assert len(pki.node_certificates(issued["node"].node_id)) == 1


def test_healthz_and_the_console_say_the_intermediate_is_revoked(app, runner, admin_console):
    client = admin_console.client
    assert client.get("/healthz").status_code == 200
    assert revoke(runner, "--reason", "key_compromise", "--yes").exit_code == 0
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.get_json()["ca"] == "intermediate_revoked"
    serial = format(intermediate_serial(), "x")
    page = client.get("/").get_data(as_text=True)
    assert "签发 CA（中间 CA）已在根 CA 的 CRL 中被吊销" in page and serial in page
    client.get("/lang/en")
    page = client.get("/").get_data(as_text=True)
    assert "The issuing CA (intermediate) is revoked" in page and "Recovery is a new CA" in page


def test_healthz_says_an_expired_intermediate_cannot_sign(app, client):
    """Past the intermediate's end every approval and renewal fails with ca_expired (503), and /healthz still
    answered 200 "ca": "ok": a load balancer kept sending requests to an instance that could issue nothing."""
    loaded = pki.authority()
    end = loaded.intermediate_certificate.not_valid_after_utc
    loaded.clock = lambda: end - dt.timedelta(seconds=1)
    assert client.get("/healthz").get_json()["ca"] == "ok"
    loaded.clock = lambda: end
    answer = client.get("/healthz")
    assert answer.status_code == 503 and answer.get_json()["ca"] == "intermediate_expired"


def ocsp_answer(client, directory, request_der: bytes):
    """The responder's answer, kept in `directory`/answer.der for openssl to read."""
    from cryptography.x509 import ocsp

    response = client.post("/ca/ocsp", data=request_der, content_type="application/ocsp-request")
    assert response.status_code == 200
    (directory / "answer.der").write_bytes(response.data)
    answer = ocsp.load_der_ocsp_response(response.data)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return answer


@pytest.mark.parametrize(("reason", "answered"), [("key_compromise", x509.ReasonFlags.ca_compromise),
                                                  ("cessation_of_operation", x509.ReasonFlags.cessation_of_operation)])
def test_ocsp_answers_revoked_for_every_certificate_once_the_intermediate_is_revoked(
        issued, people, runner, client, reason, answered):  # noqa: F811
    """The responder kept answering "good", signed with the key the ministry had just declared compromised: a
    verifier asking OCSP and not the root's CRL took every certificate it signed. RFC 6960 §2.7: "revoked" for
    every certificate of the CA, from the intermediate's revocation and for its reason (cACompromise for a
    compromised key); a serial never issued here (what a thief mints) too, and one revoked before keeps its own."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp

    from app.pki.models import RevokedIntermediate
    from app.pki.ocsp import issuer_hashes

    directory = issued["dir"]
    made = openssl("ocsp", "-issuer", "intermediate.pem", "-cert", "node.pem", "-reqout", "ask.der", "-no_nonce",
                       cwd=directory)
    assert made.returncode == 0, made.stderr
    ask = (directory / "ask.der").read_bytes()
    assert ocsp_answer(client, directory, ask).certificate_status == ocsp.OCSPCertStatus.GOOD
    other, _ = admit_with_keys(people)
    earlier = pki.current_certificate(other.node_id)
    revocation.revoke(earlier, "affiliation_changed", by=issued["minister"])
    db.session.commit()
    assert revoke(runner, "--reason", reason, "--yes").exit_code == 0
    revoked_at = db.session.get(RevokedIntermediate, format(intermediate_serial(), "x")).revoked_at

    answer = ocsp_answer(client, directory, ask)
    assert answer.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert (answer.revocation_time_utc, answer.revocation_reason) == (revoked_at.replace(microsecond=0), answered)
    read = openssl("ocsp", "-respin", "answer.der", "-issuer", "intermediate.pem", "-cert", "node.pem",
                       "-CAfile", "root.pem", "-verify_other", "intermediate.pem", cwd=directory)
    assert "Response verify OK" in read.stderr and "node.pem: revoked" in read.stdout, read.stdout + read.stderr

    def ask_about(serial: int) -> ocsp.OCSPResponse:
        name_hash, key_hash = issuer_hashes(pki.authority().intermediate_certificate, hashes.SHA1())
        request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, serial, hashes.SHA1()).build()
        return ocsp_answer(client, directory, request.public_bytes(serialization.Encoding.DER))

    kept = ask_about(int(earlier.serial, 16))
    assert kept.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert (kept.revocation_time_utc, kept.revocation_reason) == (earlier.revoked_at.replace(microsecond=0),
                                                                  x509.ReasonFlags.affiliation_changed)
    issued_here = ask_about(int(issued["row"].serial, 16))
    assert EXTENDED_REVOKED_DEFINITION not in [extension.oid for extension in issued_here.extensions]


EXTENDED_REVOKED_DEFINITION = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.9")


def test_ocsp_answers_a_serial_never_issued_here_as_rfc_6960_asks_once_the_intermediate_is_revoked(
        issued, runner, client):  # noqa: F811
    """A serial the registry never issued (what a thief holding the key mints) was answered revoked at the
    intermediate's time and reason, with nothing saying the responder uses "revoked" for non-issued certificates.
    RFC 6960 §2.2 asks such an answer to carry the extended revoked definition in responseExtensions (non-critical),
    with reason certificateHold and revocationTime 1970-01-01; openssl verifies the answer and reads the extension."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp

    from app.pki.ocsp import issuer_hashes

    directory = issued["dir"]
    assert revoke(runner, "--reason", "key_compromise", "--yes").exit_code == 0
    name_hash, key_hash = issuer_hashes(pki.authority().intermediate_certificate, hashes.SHA1())
    minted_serial = int(issued["row"].serial, 16) ^ 0xFFFF
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(name_hash, key_hash, minted_serial, hashes.SHA1())
    (directory / "minted-ask.der").write_bytes(request.build().public_bytes(serialization.Encoding.DER))
    minted = ocsp_answer(client, directory, (directory / "minted-ask.der").read_bytes())
    assert minted.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert minted.revocation_reason == x509.ReasonFlags.certificate_hold
    assert minted.revocation_time_utc == dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    marked = [extension for extension in minted.extensions if extension.oid == EXTENDED_REVOKED_DEFINITION]
    assert len(marked) == 1 and not marked[0].critical and marked[0].value.value == b"\x05\x00"
    assert all(extension.oid != EXTENDED_REVOKED_DEFINITION for extension in minted.single_extensions)
    read = openssl("ocsp", "-respin", "answer.der", "-reqin", "minted-ask.der", "-resp_text", "-CAfile", "root.pem",
                   "-verify_other", "intermediate.pem", cwd=directory)
    assert "Response verify OK" in read.stderr, read.stdout + read.stderr
    # OpenSSL knows id-pkix-ocsp 9 by its old short name, "valid".
    assert "Response Extensions:\n        valid:" in read.stdout and "certificateHold" in read.stdout, read.stdout

