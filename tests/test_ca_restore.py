"""After restoring a database from before a revocation, the next CRL's number goes above those nodes hold
(operations: Backup)."""

from __future__ import annotations

import json

import pytest
from cryptography import x509
from sqlalchemy import update

from app.extensions import db
from app.pki import revocation
from app.pki.models import Certificate, CRLState
from app.routing.client import RouteClient


def test_after_a_restore_the_crl_goes_on_above_the_number_nodes_hold(app, client, runner, make_user):
    """A restored database numbers its next CRL from where the backup stood: a node holding the later CRL (its
    revocation included) took the new one, though it lacks the revocation, as not older. `--above N` skips the
    numbers nodes may hold."""
    make_user("minister")
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl().crl_number  # the backup is taken here
    signer = db.session.scalars(db.select(Certificate).where(Certificate.kind == "route_signer")).one()
    assert runner.invoke(args=["ca", "revoke", signer.serial, "--reason", "key_compromise",
                               "--user", "minister"]).exit_code == 0
    db.session.expire_all()
    held = revocation.current_crl().crl_number
    assert node.use_revocation_list(client.get("/ca/crl.crl").data) and held > backup_number

    # The restore: the revocation and the CRLs since are gone.
    db.session.execute(update(Certificate).where(Certificate.serial == signer.serial)
                       .values(revoked_at=None, revocation_reason=None))
    db.session.execute(update(CRLState).where(CRLState.id == revocation.INTERMEDIATE_CRL)
                       .values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=["ca", "crl", "--regenerate", "--above", str(held), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["crl_number"] == held + 1
    db.session.expire_all()
    assert revocation.current_crl().crl_number == held + 1
    # The node takes it (no revocation was re-done here: the operator re-revokes, then issues it).
    assert node.use_revocation_list(client.get("/ca/crl.crl").data)


def test_above_below_the_current_number_keeps_counting_on(app, runner):
    current = revocation.current_crl().crl_number
    assert runner.invoke(args=["ca", "crl", "--regenerate"]).exit_code == 0
    db.session.expire_all()
    assert revocation.current_crl().crl_number == current + 1  # without --above: the next number
    assert runner.invoke(args=["ca", "crl", "--regenerate", "--above", "1"]).exit_code == 0
    db.session.expire_all()
    assert revocation.current_crl().crl_number == current + 2


@pytest.mark.parametrize("value", ["x", "-1", "0", "１２", "2146483648", str(2**31)])  # HIGHEST_ABOVE + 1
def test_above_refuses_what_is_no_number_or_out_of_range(app, runner, value):
    before = revocation.current_crl().crl_number
    result = runner.invoke(args=["ca", "crl", "--regenerate", "--above", value, "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "usage_error" and "'--above'" in error["message"]
    assert "is not a whole number" in error["message"] or "is not in the range 1 to" in error["message"]
    db.session.expire_all()
    assert revocation.current_crl().crl_number == before


def test_above_needs_regenerate(app, runner):
    result = runner.invoke(args=["ca", "crl", "--above", "5"])
    assert result.exit_code == 2 and "--regenerate" in result.output


def test_the_service_refuses_above_out_of_range(app):
    from app.errors import ValidationFailed

    with pytest.raises(ValidationFailed) as refused:
        revocation.regenerate_crl(actor="tests", above=2**31 - 1_000_000)
    assert refused.value.code == "invalid_above"


def test_a_root_crl_goes_on_above_the_number_nodes_hold(app, client, runner):
    """Nodes keep the root's CRL too and take none numbered below the one they hold: re-signing it once after a
    restore was not enough when several were signed since the backup."""
    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl(revocation.ROOT_CRL).crl_number
    for _ in range(3):
        assert runner.invoke(args=["ca", "root-crl"]).exit_code == 0
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    db.session.expire_all()
    held = revocation.current_crl(revocation.ROOT_CRL).crl_number
    db.session.execute(update(CRLState).where(CRLState.id == revocation.ROOT_CRL).values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=["ca", "root-crl", "--above", str(held), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["crl_number"] == held + 1
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    refused = runner.invoke(args=["ca", "root-crl", "--above", "0", "--json"])
    assert refused.exit_code == 2 and json.loads(refused.stderr)["error"]["code"] == "usage_error"


def test_after_a_restore_from_before_the_intermediates_revocation_it_is_revoked_again_above(app, client, runner):
    """The restored database forgot the intermediate's revocation: a root CRL signed `--above` what nodes hold
    listed nothing, and nodes took it, trusting the leaked intermediate again. Revoking it again signed a CRL
    numbered below theirs, which they refused."""
    from app.pki.models import RevokedIntermediate

    root, chain = client.get("/ca/ca.pem").data, client.get("/ca/chain.pem").data
    node = RouteClient(root, intermediates=chain)
    backup_number = revocation.current_crl(revocation.ROOT_CRL).crl_number
    revoke = ["ca", "revoke-intermediate", "--reason", "key_compromise", "--yes", "--json"]
    assert runner.invoke(args=revoke).exit_code == 0
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    db.session.expire_all()
    held = revocation.current_crl(revocation.ROOT_CRL).crl_number
    db.session.execute(db.delete(RevokedIntermediate))  # the restore
    db.session.execute(update(CRLState).where(CRLState.id == revocation.ROOT_CRL).values(crl_number=backup_number))
    db.session.commit()

    result = runner.invoke(args=[*revoke, "--above", str(held)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["root_crl"]["crl_number"] == held + 1
    assert node.use_revocation_list(client.get("/ca/root-crl.crl").data, of_root=True)
    listed = x509.load_der_x509_crl(client.get("/ca/root-crl.crl").data)
    assert len(list(listed)) == 1


# --- certificates issued after the backup: `flask ca record FILE` ------------------------------------------------

def issued_after_the_backup(node_id: str, *, org_name: str = "Org 4", not_before=None) -> str:
    """A node certificate the CA directory signed that the (restored) database does not know: the node holds it."""
    from cryptography.hazmat.primitives import serialization

    from app.pki import service as pki
    from tests.factories import NodeKeys

    csr = x509.load_pem_x509_csr(NodeKeys().csr.encode())
    certificate = pki.authority().issue_node_certificate(csr, node_id=node_id, org_name=org_name,
                                                          endpoint_host="node4.example", not_before=not_before)
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def serial_of(pem: str) -> str:
    return format(x509.load_pem_x509_certificate(pem.encode()).serial_number, "x")


def lost_node_id(app, serial: int) -> str:
    from app.admission.nodes import format_node_id

    return format_node_id("360100", "202", serial, app.config["MPIM_NETWORK_FLAG"])


def test_a_certificate_issued_after_the_backup_is_recorded_revoked_and_listed_on_the_crl(app, runner, make_user,
                                                                                          tmp_path):
    """After a restore `flask ca revoke` did not know it ("No certificate with serial"), so no CRL could list it."""
    import subprocess

    from app.pki import service as pki

    make_user("minister")
    node_id = lost_node_id(app, 2)
    pem = issued_after_the_backup(node_id)
    serial = serial_of(pem)
    (tmp_path / "node4.pem").write_text(pem + pki.authority().chain_pem().decode())  # as tls/node.pem keeps it
    result = runner.invoke(args=["ca", "record", str(tmp_path / "node4.pem"), "--json"])
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.output)
    assert (recorded["serial"], recorded["kind"], recorded["state"]) == (serial, "node", "valid")
    assert recorded["names_node"] == node_id and recorded["node_id"] is None  # no node on record holds it
    db.session.expire_all()
    row = db.session.get(Certificate, serial)
    assert row.pem == pem and "CN=" + node_id in row.subject and row.key_description.startswith("EC")
    from app.audit.models import AuditRecord

    audit = db.session.scalars(db.select(AuditRecord).where(AuditRecord.target == serial)).one()
    assert audit.action == "certificate.record" and audit.detail["names_node"] == node_id

    revoked = runner.invoke(args=["ca", "revoke", serial, "--reason", "cessation_of_operation", "--user", "minister"])
    assert revoked.exit_code == 0, revoked.output
    db.session.expire_all()
    (tmp_path / "crl.pem").write_text(revocation.current_crl().pem)
    text = subprocess.run(["openssl", "crl", "-in", "crl.pem", "-noout", "-text"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert serial.upper().zfill(len(serial) + len(serial) % 2) in text.replace(":", "").upper()


def test_a_recorded_node_id_is_never_handed_out_again(app, make_user, tmp_path, runner):
    """The restored division counter stood below the lost node's serial: the next admission got its id again."""
    from app.admission import applications
    from tests.factories import node_document

    minister = make_user("minister")
    (tmp_path / "lost.pem").write_text(issued_after_the_backup(lost_node_id(app, 2)))
    assert runner.invoke(args=["ca", "record", str(tmp_path / "lost.pem")]).exit_code == 0
    node = applications.approve(applications.submit_by_user(node_document("360100"), by=minister), by=minister)
    db.session.commit()
    assert node.node_id == lost_node_id(app, 3)


def test_a_certificate_naming_a_node_admitted_after_it_is_not_that_nodes(app, make_user, tmp_path, runner, client):
    """The restored registry handed the lost id out again: the certificate is the earlier holder's, recorded to be
    revoked, never counted as the new node's (its routing entry, its sessions)."""
    from datetime import timedelta

    from app.admission import applications
    from app.pki import service as pki
    from tests.conftest import Console
    from tests.factories import node_document

    minister = make_user("minister")
    node = applications.approve(applications.submit_by_user(node_document("360100"), by=minister), by=minister)
    db.session.commit()
    own = pki.current_certificate(node.node_id).serial
    pem = issued_after_the_backup(node.node_id, not_before=node.approved_at - timedelta(hours=1))
    (tmp_path / "earlier.pem").write_text(pem)
    result = runner.invoke(args=["ca", "record", str(tmp_path / "earlier.pem"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["node_id"] is None
    db.session.expire_all()
    assert pki.current_certificate(node.node_id).serial == own
    assert Console(client).login("minister").status_code == 302
    page = client.get("/certificates/")
    assert page.status_code == 200 and serial_of(pem)[:12] in page.text
    assert client.get(f"/certificates/{serial_of(pem)}").status_code == 200


def test_a_renewal_after_the_backup_is_recorded_as_its_nodes(app, make_user, tmp_path, runner):
    """A node the restored registry knows, renewed since the backup: the certificate it presents is its own."""
    from datetime import timedelta

    from app.admission import applications
    from app.pki import service as pki
    from tests.factories import node_document

    minister = make_user("minister")
    node = applications.approve(applications.submit_by_user(node_document("360100"), by=minister), by=minister)
    day = timedelta(days=1)  # admitted the day before the backup, renewed after it
    node.approved_at -= day
    for row in db.session.scalars(db.select(Certificate).where(Certificate.node_id == node.node_id)):
        row.not_before, row.issued_at = row.not_before - day, row.issued_at - day
    db.session.commit()
    pem = issued_after_the_backup(node.node_id)
    (tmp_path / "renewed.pem").write_text(pem)
    result = runner.invoke(args=["ca", "record", str(tmp_path / "renewed.pem"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["node_id"] == node.node_id
    db.session.expire_all()
    assert pki.current_certificate(node.node_id).serial == serial_of(pem)


def foreign_node_certificate(app, tmp_path) -> str:
    from cryptography.hazmat.primitives import serialization

    from app.pki import authority
    from tests.factories import NodeKeys

    other = authority.init_ca(tmp_path / "other-ca", b"other", authority.CAConfig(organisation="Elsewhere"))
    certificate = other.issue_node_certificate(x509.load_pem_x509_csr(NodeKeys().csr.encode()),
                                               node_id=lost_node_id(app, 2), org_name="Org 4",
                                               endpoint_host="node4.example")
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def ca_file(name: str) -> str:
    from app.pki import service as pki

    return (pki.ca_directory() / name).read_text()


def service_certificate_not_on_record(role: str) -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from app.pki import service as pki

    certificate = pki.authority().issue_service_certificate(role, ec.generate_private_key(ec.SECP256R1()).public_key())
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def version_2(pem: str) -> str:
    """The certificate with its version field made v2 (1): cryptography refuses it with InvalidVersion, no
    ValueError."""
    import base64

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)
    assert der.count(b"\xa0\x03\x02\x01\x02") == 1  # [0] EXPLICIT INTEGER 2, v3
    der = der.replace(b"\xa0\x03\x02\x01\x02", b"\xa0\x03\x02\x01\x01")
    return "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(der).decode() + "-----END CERTIFICATE-----\n"


@pytest.mark.parametrize(("case", "code"), [
    ("foreign", "not_this_ca"), ("malformed", "not_a_certificate"), ("empty", "not_a_certificate"),
    ("with_another_certificate", "not_a_certificate"), ("version 2", "not_a_certificate"),
    ("recorded", "already_recorded"), ("intermediate", "not_this_ca"), ("route_signer", "not_a_node_certificate"),
    ("management", "not_a_node_certificate")])
def test_what_is_not_a_lost_node_certificate_of_this_ca_is_refused_and_nothing_stored(app, tmp_path, runner, case,
                                                                                        code):
    from sqlalchemy import func, select

    from app.admission.models import NodeSerial
    from app.audit.models import AuditRecord

    text = {"foreign": lambda: foreign_node_certificate(app, tmp_path),
            "malformed": lambda: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
            "empty": lambda: "",
            "version 2": lambda: version_2(issued_after_the_backup(lost_node_id(app, 2))),  # was a traceback
            "with_another_certificate": lambda: issued_after_the_backup(lost_node_id(app, 2))
            + foreign_node_certificate(app, tmp_path),
            "recorded": lambda: db.session.scalars(select(Certificate.pem).limit(1)).one(),
            "intermediate": lambda: ca_file("intermediate.pem"),
            "route_signer": lambda: service_certificate_not_on_record("route-signer"),
            "management": lambda: service_certificate_not_on_record("management")}[case]()
    (tmp_path / "given.pem").write_text(text)
    counts = lambda: tuple(db.session.scalar(select(func.count()).select_from(model))  # noqa: E731
                           for model in (Certificate, AuditRecord, NodeSerial))
    before = counts()
    result = runner.invoke(args=["ca", "record", str(tmp_path / "given.pem"), "--json"])
    assert result.exit_code == 1 and not isinstance(result.exception, Exception), (result.output, result.exception)
    assert json.loads(result.stderr)["error"]["code"] == code
    db.session.expire_all()
    assert counts() == before
