"""The CA core proven with real tools: openssl verify, CRL checks, an OCSP responder over HTTP,
mutual TLS with Python's ssl, and the CSR policy's refusals. No app, no database.

Run alone: `.venv/bin/python -m pytest tests/test_pki_core.py --noconftest -q`.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.errors import Conflict, ValidationFailed
from app.pki import authority, csr_policy, keys
from app.pki import ocsp as ocsp_module
from app.pki.authority import Authority, CAConfig
from app.pki.crl import RevokedEntry
from app.pki.csr_policy import InvalidCSR
from app.pki.ocsp import CertStatusInfo
from tests.conftest import stop_serving

PASSPHRASE = b"correct horse battery staple"
NODE_ID = "36000000002025000001"
PEER_ID = "36000000002025000002"


# --- helpers -------------------------------------------------------------------------------------

def openssl(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["/usr/bin/openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def csr_for(key, *, subject: x509.Name | None = None, extensions=(), algorithm=hashes.SHA256()) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node.example")]))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def der_to_pem_csr(der: bytes) -> bytes:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


class Holder:
    """A node's key and the certificate the CA issued for it, written where openssl and ssl read them."""

    def __init__(self, ca: Authority, directory: Path, name: str, *, key=None, node_id: str = NODE_ID,
                 host: str = "127.0.0.1", **overrides):
        self.key = key or ec.generate_private_key(ec.SECP256R1())
        csr = csr_policy.load_csr(csr_for(self.key))
        csr_policy.check_csr(csr)
        self.certificate = ca.issue_node_certificate(csr, node_id=node_id, org_name="江西省公安厅",
                                                     endpoint_host=host, **overrides)
        self.cert_path, self.key_path = directory / f"{name}.pem", directory / f"{name}.key"
        self.cert_path.write_bytes(authority.pem(self.certificate))
        self.chain_path = directory / f"{name}-chain.pem"  # what a TLS peer presents: leaf, intermediate
        self.chain_path.write_bytes(authority.pem(self.certificate) + authority.pem(ca.intermediate_certificate))
        self.key_path.write_bytes(self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))


def write_crl(ca: Authority, path: Path, revoked: list[RevokedEntry], number: int = 1
              ) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    crl = ca.build_crl(revoked, this_update=now - timedelta(minutes=1), next_update=now + timedelta(days=7),
                       crl_number=number)
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl


def refusal(pem: str | bytes) -> InvalidCSR:
    with pytest.raises(InvalidCSR) as caught:
        csr_policy.check_csr(csr_policy.load_csr(pem))
    assert caught.value.code == "invalid_csr" and caught.value.field == "csr"
    return caught.value


# --- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ec_ca(tmp_path_factory) -> Authority:
    return authority.init_ca(tmp_path_factory.mktemp("ec") / "ca", PASSPHRASE, CAConfig())


@pytest.fixture(scope="module")
def rsa_ca(tmp_path_factory) -> Authority:
    return authority.init_ca(tmp_path_factory.mktemp("rsa") / "ca", PASSPHRASE, CAConfig(key_type="rsa"))


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory) -> Authority:
    """A CA of our own making that the network does not trust."""
    return authority.init_ca(tmp_path_factory.mktemp("foreign") / "ca", b"other", CAConfig(organisation="Elsewhere"))


@pytest.fixture
def ca_dir(ec_ca) -> Path:
    return ec_ca.directory


# --- initialisation and keys at rest ---------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "root_key", "intermediate_key"), [
    ("ec_ca", "secp384r1", "secp256r1"), ("rsa_ca", 3072, 3072)])
def test_init_makes_a_root_and_an_issuing_intermediate(request, fixture, root_key, intermediate_key):
    ca: Authority = request.getfixturevalue(fixture)
    root, intermediate = ca.root_certificate, ca.intermediate_certificate
    for certificate, expected in ((root, root_key), (intermediate, intermediate_key)):
        key = certificate.public_key()
        assert (key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else key.key_size) == expected
    assert intermediate.issuer == root.subject and root.issuer == root.subject
    assert intermediate.subject.rfc4514_string() == "CN=MPIM Issuing CA 1,O=Ministry of Public Security,C=CN"
    constraints = intermediate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = intermediate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert intermediate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert timedelta(days=365 * 20) <= root.not_valid_after_utc - root.not_valid_before_utc <= timedelta(days=7310)
    assert timedelta(days=365 * 10) <= intermediate.not_valid_after_utc - intermediate.not_valid_before_utc \
        <= timedelta(days=3660)
    result = openssl("verify", "-CAfile", "root.pem", "intermediate.pem", cwd=ca.directory)
    assert result.returncode == 0, result.stdout + result.stderr


def test_init_twice_refuses(ec_ca):
    with pytest.raises(authority.CAAlreadyInitialised) as caught:
        authority.init_ca(ec_ca.directory, PASSPHRASE, CAConfig())
    assert caught.value.code == "ca_exists" and "refusing to overwrite" in str(caught.value)


def test_init_refuses_a_directory_holding_only_a_root_key(tmp_path):
    (tmp_path / "root.key").write_bytes(b"left over")
    with pytest.raises(authority.CAAlreadyInitialised):
        authority.init_ca(tmp_path, PASSPHRASE, CAConfig())
    assert (tmp_path / "root.key").read_bytes() == b"left over"


def test_key_files_are_0600_and_encrypted(ec_ca):
    for name in ("root.key", "intermediate.key", "route-signer.key", "management.key"):
        path = ec_ca.directory / name
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, name
        assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(path.read_bytes(), password=b"wrong passphrase")
        assert serialization.load_pem_private_key(path.read_bytes(), password=PASSPHRASE)


def test_loading_with_a_wrong_passphrase_fails(ec_ca):
    with pytest.raises(keys.CAKeyUnreadable) as caught:
        Authority.load(ec_ca.directory, b"wrong passphrase", CAConfig())
    assert caught.value.code == "ca_key_unreadable"


def test_init_files_names_every_file_init_ca_writes(tmp_path):
    """An `init` that lost the race removes what it wrote by this list: a file missing from it would stay."""
    authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    assert sorted(path.name for path in (tmp_path / "ca").iterdir()) == sorted(authority.INIT_FILES)


def test_root_offline_then_issuing_still_works(tmp_path):
    directory, export = tmp_path / "ca", tmp_path / "usb" / "root.key"
    export.parent.mkdir()
    authority.init_ca(directory, PASSPHRASE, CAConfig())
    authority.root_offline(directory, export)
    assert not (directory / "root.key").exists() and (directory / "root.pem").exists()
    assert stat.S_IMODE(os.stat(export).st_mode) == 0o600
    assert serialization.load_pem_private_key(export.read_bytes(), password=PASSPHRASE)
    loaded = Authority.load(directory, PASSPHRASE, CAConfig())
    assert not loaded.root_key_online
    Holder(loaded, tmp_path, "node")
    result = openssl("verify", "-CAfile", "ca/root.pem", "-untrusted", "ca/intermediate.pem", "node.pem",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(authority.RootKeyOffline):
        authority.root_offline(directory, tmp_path / "again.key")


def test_root_offline_never_overwrites_the_export(tmp_path):
    authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    (tmp_path / "exists.key").write_bytes(b"keep me")
    with pytest.raises(Conflict) as caught:
        authority.root_offline(tmp_path / "ca", tmp_path / "exists.key")
    assert caught.value.code == "export_exists" and (tmp_path / "ca" / "root.key").exists()
    assert (tmp_path / "exists.key").read_bytes() == b"keep me"


# --- node certificates ---------------------------------------------------------------------------

@pytest.mark.parametrize(("fixture", "node_key"), [("ec_ca", "ec"), ("rsa_ca", "rsa")])
def test_openssl_verifies_an_issued_node_certificate(request, tmp_path, fixture, node_key):
    ca: Authority = request.getfixturevalue(fixture)
    key = rsa.generate_private_key(65537, 2048) if node_key == "rsa" else None
    holder = Holder(ca, tmp_path, "node", key=key, host="im.jx.example")
    result = openssl("verify", "-CAfile", str(ca.directory / "root.pem"), "-untrusted",
                     str(ca.directory / "intermediate.pem"), "-purpose", "sslclient", "node.pem", cwd=tmp_path)
    assert result.returncode == 0 and "node.pem: OK" in result.stdout, result.stdout + result.stderr
    certificate = holder.certificate
    assert certificate.subject.rfc4514_string() == f"CN={NODE_ID},O=江西省公安厅,C=CN"
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["im.jx.example"]
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:mpim:node:{NODE_ID}"]
    assert set(certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_encipherment == (node_key == "rsa") and not usage.key_cert_sign
    distribution = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert distribution[0].full_name[0].value == "http://127.0.0.1:5000/ca/crl.crl"
    access = certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [entry.access_location.value for entry in access] == ["http://127.0.0.1:5000/ca/ocsp"]
    assert certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert certificate.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        ca.intermediate_certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def test_an_ip_literal_endpoint_becomes_an_ip_address_name(ec_ca, tmp_path):
    for host, expected in (("10.1.2.3", "10.1.2.3"), ("[2001:db8::1]", "2001:db8::1")):
        names = Holder(ec_ca, tmp_path, "node", host=host).certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
        assert [str(value) for value in names.get_values_for_type(x509.IPAddress)] == [expected]
        assert names.get_values_for_type(x509.DNSName) == []


def test_serial_is_random_and_at_least_64_bits(ec_ca, tmp_path):
    first, second = (Holder(ec_ca, tmp_path, name).certificate.serial_number for name in ("a", "b"))
    assert first.bit_length() >= 64 and second.bit_length() >= 64 and first != second


def test_not_before_is_backdated_a_minute_and_validity_defaults_to_90_days(ec_ca):
    fixed = ec_ca.intermediate_certificate.not_valid_before_utc + timedelta(days=1, seconds=7)
    loaded = Authority.load(ec_ca.directory, PASSPHRASE, CAConfig(), clock=lambda: fixed)
    csr = csr_policy.load_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    certificate = loaded.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example")
    assert certificate.not_valid_before_utc == fixed - timedelta(minutes=1)
    assert certificate.not_valid_after_utc == fixed + timedelta(days=90)


def test_validity_is_clipped_to_the_intermediates_not_after(tmp_path):
    ca = authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig(intermediate_validity_days=30))
    csr = csr_policy.load_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    clipped = ca.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example",
                                        validity_days=90)
    assert clipped.not_valid_after_utc == ca.intermediate_certificate.not_valid_after_utc
    short = ca.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example", validity_days=10)
    assert short.not_valid_after_utc < ca.intermediate_certificate.not_valid_after_utc
    later = Authority.load(tmp_path / "ca", PASSPHRASE, CAConfig(),
                           clock=lambda: ca.intermediate_certificate.not_valid_after_utc + timedelta(days=1))
    with pytest.raises(authority.CAExpired):
        later.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example")


def test_an_intermediate_that_ended_seconds_ago_issues_nothing(ec_ca):
    """The backdated start let an intermediate sign for a minute past its end: certificates expired at birth."""
    end = ec_ca.intermediate_certificate.not_valid_after_utc
    csr = csr_policy.load_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    for now in (end, end + timedelta(seconds=5)):
        later = Authority.load(ec_ca.directory, PASSPHRASE, CAConfig(), clock=lambda now=now: now)
        with pytest.raises(authority.CAExpired) as refused:
            later.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example")
        assert f"expired on {end:%Y-%m-%d %H:%M}" in str(refused.value)
        with pytest.raises(authority.CAExpired):
            later.issue_service_certificate("route-signer", ec.generate_private_key(ec.SECP256R1()).public_key())


def test_a_csr_asking_for_ca_true_extra_names_and_subject_gets_none_of_them(ec_ca):
    asked = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "evil"),
                       x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Bank"),
                       x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Root")])
    pem = csr_for(ec.generate_private_key(ec.SECP256R1()), subject=asked, extensions=[
        (x509.BasicConstraints(ca=True, path_length=None), True),
        (x509.SubjectAlternativeName([x509.DNSName("bank.example"), x509.DNSName("*.gov.cn")]), False)])
    csr = csr_policy.load_csr(pem)
    csr_policy.check_csr(csr)
    shown = csr_policy.describe_csr(csr)
    assert shown["requests_ca"] and shown["requested_sans"] == ["DNS:bank.example", "DNS:*.gov.cn"]
    certificate = ec_ca.issue_node_certificate(csr, node_id=NODE_ID, org_name="江西省公安厅",
                                               endpoint_host="im.jx.example")
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["im.jx.example"]
    assert certificate.subject.rfc4514_string() == f"CN={NODE_ID},O=江西省公安厅,C=CN"


@pytest.mark.parametrize(("arguments", "code"), [
    ({"node_id": "3600000000202500001"}, "invalid_node_id"),
    ({"endpoint_host": "bad host!"}, "invalid_host"),
    ({"validity_days": -1}, "invalid_validity"),
    ({"org_name": " "}, "invalid_org_name"),
    ({"org_name": "\u200b\u3000"}, "invalid_org_name")])  # shows as nothing: no organisation to name
def test_issuance_refuses_bad_node_facts(ec_ca, arguments, code):
    csr = csr_policy.load_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(ValidationFailed) as caught:
        ec_ca.issue_node_certificate(csr, **{"node_id": NODE_ID, "org_name": "x", "endpoint_host": "a.example",
                                             **arguments})
    assert caught.value.code == code


def test_issuance_refuses_a_key_the_policy_refuses_even_without_check_csr(ec_ca):
    csr = x509.load_pem_x509_csr(csr_for(rsa.generate_private_key(65537, 1024)))
    with pytest.raises(InvalidCSR):
        ec_ca.issue_node_certificate(csr, node_id=NODE_ID, org_name="x", endpoint_host="a.example")


# --- CSR policy: bad input -----------------------------------------------------------------------

def test_garbage_is_refused():
    assert "not a PEM certificate signing request" in str(refusal("garbage\x00\x01 not PEM at all"))


def test_a_damaged_pem_block_is_refused():
    damaged = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA!!\n-----END CERTIFICATE REQUEST-----\n"
    assert "could not be parsed" in str(refusal(damaged))


def test_a_certificate_where_a_csr_belongs_is_refused(ec_ca):
    assert "certificate, not a certificate signing request" in str(refusal(authority.pem(ec_ca.root_certificate)))


def test_a_broken_self_signature_is_refused():
    der = bytearray(x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1())))
                    .public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0x01  # inside the signature's r/s integers
    assert "self-signature does not verify" in str(refusal(der_to_pem_csr(bytes(der))))


def test_rsa_1024_is_refused():
    assert "RSA keys below 2048 bits are refused (this one has 1024)" in str(
        refusal(csr_for(rsa.generate_private_key(65537, 1024))))


def test_dsa_is_refused():
    assert "DSA 2048 keys are refused" in str(refusal(csr_for(dsa.generate_private_key(2048))))


def test_p192_is_refused():
    assert "EC curve secp192r1 is refused" in str(refusal(csr_for(ec.generate_private_key(ec.SECP192R1()))))


def test_secp256k1_is_refused():
    assert "EC curve secp256k1 is refused" in str(refusal(csr_for(ec.generate_private_key(ec.SECP256K1()))))


def test_ed25519_is_refused_because_sessions_need_ecdsa_or_rsa():
    reason = str(refusal(csr_for(ed25519.Ed25519PrivateKey.generate(), algorithm=None)))
    assert "Ed25519 keys are refused" in reason and "A.2" in reason


def test_ed448_is_refused():
    assert "Ed448 keys are refused" in str(refusal(csr_for(ed448.Ed448PrivateKey.generate(), algorithm=None)))


def test_sm2_is_refused(tmp_path):
    made = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:SM2", "-nodes", "-subj", "/CN=x",
                   "-keyout", "sm2.key", "-out", "sm2.csr", cwd=tmp_path)
    if made.returncode != 0:
        pytest.skip(f"this openssl cannot make SM2 keys: {made.stderr.strip()}")
    assert "not supported (SM2" in str(refusal((tmp_path / "sm2.csr").read_bytes()))


def test_a_sha1_self_signature_is_refused(tmp_path):
    made = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-sha1",
                   "-subj", "/CN=x", "-keyout", "sha1.key", "-out", "sha1.csr", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    assert "signed with SHA-1, which is refused" in str(refusal((tmp_path / "sha1.csr").read_bytes()))


def test_a_pem_over_64_kb_is_refused():
    padded = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * (64 * 1024) + "\n-----END CERTIFICATE REQUEST-----\n"
    assert "larger than 64 KB" in str(refusal(padded))


@pytest.mark.parametrize(("key", "shown"), [
    (lambda: ec.generate_private_key(ec.SECP384R1()), {"key_type": "EC", "curve": "P-384", "key_size": 384}),
    (lambda: rsa.generate_private_key(65537, 2048), {"key_type": "RSA", "curve": None, "key_size": 2048})])
def test_good_csrs_pass_and_are_described(key, shown):
    pem = csr_for(key()).decode().replace("CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
    csr = csr_policy.load_csr(pem)
    csr_policy.check_csr(csr)
    described = csr_policy.describe_csr(csr)
    assert {name: described[name] for name in shown} == shown
    assert described["subject"] == "CN=node.example" and described["requested_sans"] == []


# --- CRL -----------------------------------------------------------------------------------------

def test_crl_check_passes_before_and_fails_after_revocation(ec_ca, tmp_path):
    holder = Holder(ec_ca, tmp_path, "node")
    verify = ("verify", "-crl_check", "-CAfile", str(ec_ca.directory / "root.pem"), "-untrusted",
              str(ec_ca.directory / "intermediate.pem"), "-CRLfile", "crl.pem", "node.pem")
    empty = write_crl(ec_ca, tmp_path / "crl.pem", [])
    assert not any(isinstance(e.value, x509.IssuingDistributionPoint) for e in empty.extensions)
    before = openssl(*verify, cwd=tmp_path)
    assert before.returncode == 0, before.stdout + before.stderr  # no "different CRL scope"
    crl = write_crl(ec_ca, tmp_path / "crl.pem", [RevokedEntry(holder.certificate.serial_number, datetime.now(UTC),
                                                               x509.ReasonFlags.key_compromise)], number=2)
    after = openssl(*verify, cwd=tmp_path)
    assert after.returncode != 0 and "certificate revoked" in after.stdout + after.stderr
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)


def test_crl_in_der_verifies_with_openssl_and_writes_reasons_by_rfc_5280(ec_ca, tmp_path):
    now = datetime.now(UTC)
    crl = ec_ca.build_crl([(11, now, "unspecified"), (12, now, "superseded"), (13, now, None)],
                          this_update=now, next_update=now + timedelta(days=1), crl_number=7)
    (tmp_path / "crl.der").write_bytes(crl.public_bytes(serialization.Encoding.DER))
    result = openssl("crl", "-inform", "DER", "-in", "crl.der", "-CAfile", str(ec_ca.directory / "intermediate.pem"),
                     "-noout", cwd=tmp_path)
    assert "verify OK" in result.stdout + result.stderr, result.stdout + result.stderr
    reasons = {entry.serial_number: [e.value.reason for e in entry.extensions] for entry in crl}
    assert reasons == {11: [], 12: [x509.ReasonFlags.superseded], 13: []}
    with pytest.raises(ValidationFailed):
        ec_ca.build_crl([], this_update=now, next_update=now, crl_number=8)


# --- OCSP over HTTP ------------------------------------------------------------------------------

@pytest.fixture
def responder(ec_ca):
    """A real OCSP responder on 127.0.0.1: `statuses` is what the lookup knows."""
    statuses: dict[int, CertStatusInfo] = {}
    answer: list[Callable[[bytes], bytes]] = [
        lambda body: ec_ca.respond_ocsp(body, lambda serial: statuses.get(serial, CertStatusInfo.unknown()))]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = answer[0](self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/ocsp-response")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{server.server_address[1]}/", "statuses": statuses, "answer": answer}
    stop_serving(server, thread)


def ask_ocsp(ca: Authority, responder, directory: Path, *extra: str) -> str:
    result = openssl("ocsp", "-issuer", str(ca.directory / "intermediate.pem"), "-url", responder["url"],
                     "-CAfile", str(ca.directory / "root.pem"), *extra, cwd=directory)
    return result.stdout + result.stderr


def test_ocsp_answers_good_then_revoked(ec_ca, responder, tmp_path):
    holder = Holder(ec_ca, tmp_path, "node")
    responder["statuses"][holder.certificate.serial_number] = CertStatusInfo.good()
    good = ask_ocsp(ec_ca, responder, tmp_path, "-cert", "node.pem")
    assert "Response verify OK" in good and "node.pem: good" in good, good
    assert "WARNING" not in good, good  # e.g. "no nonce in response": the nonce is echoed
    responder["statuses"][holder.certificate.serial_number] = CertStatusInfo.revoked(
        datetime.now(UTC) - timedelta(minutes=5), "key_compromise")
    revoked = ask_ocsp(ec_ca, responder, tmp_path, "-cert", "node.pem")
    assert "Response verify OK" in revoked and "node.pem: revoked" in revoked and "keyCompromise" in revoked, revoked


def test_ocsp_answers_unknown_for_a_serial_it_does_not_know(ec_ca, responder, tmp_path):
    answer = ask_ocsp(ec_ca, responder, tmp_path, "-serial", "0x1234567890abcdef")
    assert "Response verify OK" in answer and "0x1234567890abcdef: unknown" in answer, answer


def test_openssl_rejects_an_ocsp_answer_whose_signature_is_broken(ec_ca, responder, tmp_path):
    Holder(ec_ca, tmp_path, "node")

    def broken(body: bytes) -> bytes:
        response = bytearray(ec_ca.respond_ocsp(body, lambda serial: CertStatusInfo.good()))
        response[-5] ^= 0x01  # inside the signature: no certificates follow it
        return bytes(response)

    responder["answer"][0] = broken
    answer = ask_ocsp(ec_ca, responder, tmp_path, "-cert", "node.pem")
    assert "Response verify OK" not in answer and "Response Verify Failure" in answer, answer


def test_ocsp_refuses_malformed_requests_and_other_issuers_without_raising(ec_ca, foreign_ca, tmp_path):
    lookup = {"asked": 0}

    def count(serial: int) -> CertStatusInfo:
        lookup["asked"] += 1
        return CertStatusInfo.good()

    malformed = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(b"\x30\x03garbage", count))
    assert malformed.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    stranger = Holder(foreign_ca, tmp_path, "stranger").certificate
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(
        stranger, foreign_ca.intermediate_certificate, hashes.SHA256()).build()
    other = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(request.public_bytes(serialization.Encoding.DER),
                                                                count))
    assert other.response_status == x509_ocsp.OCSPResponseStatus.UNAUTHORIZED and lookup["asked"] == 0


def test_an_ocsp_request_for_a_negative_serial_is_malformed_not_an_error(ec_ca):
    """RFC 5280 §4.1.2.2: serials are positive. A CertID with a negative one parses, and signing the response
    raised (HTTP 500 from a responder anyone may ask)."""
    name_hash, key_hash = ocsp_module.issuer_hashes(ec_ca.intermediate_certificate, hashes.SHA256())
    request = x509_ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, 0x0123456789ABCDEF, hashes.SHA256()).build().public_bytes(serialization.Encoding.DER)
    negative = request.replace(bytes.fromhex("02080123456789abcdef"), bytes.fromhex("02088123456789abcdef"))
    assert x509_ocsp.load_der_ocsp_request(negative).serial_number < 0
    response = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(negative, lambda serial: CertStatusInfo.good()))
    assert response.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize(("octets", "echoed"), [(1, True), (16, True), (32, True), (128, True), (0, False),
                                                 (129, False), (60_000, False)])
def test_an_ocsp_nonce_of_1_to_128_octets_is_echoed_and_any_other_is_a_malformed_request(ec_ca, tmp_path, octets,
                                                                                        echoed):
    """RFC 9654 §2.1: a responder MUST answer malformedRequest to an empty nonce or one over 128 octets. Any
    length was echoed, so the intermediate's key signed a response holding up to 64 KB a caller chose."""
    holder = Holder(ec_ca, tmp_path, "node").certificate
    nonce = bytes(range(256)) * (octets // 256) + bytes(range(octets % 256))
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(holder, ec_ca.intermediate_certificate, hashes.SHA256()) \
        .add_extension(x509.OCSPNonce(nonce), critical=False).build().public_bytes(serialization.Encoding.DER)
    response = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(request, lambda serial: CertStatusInfo.good()))
    if echoed:
        assert response.response_status == x509_ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    else:
        assert response.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


def ocsp_request_with(holder: x509.Certificate, issuer: x509.Certificate, *extensions: tuple) -> bytes:
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(holder, issuer, hashes.SHA256())
    for value, critical in extensions:
        builder = builder.add_extension(value, critical=critical)
    return builder.build().public_bytes(serialization.Encoding.DER)


def test_an_ocsp_request_naming_an_extension_twice_is_malformed_not_an_error(ec_ca, tmp_path):
    """RFC 5280 §4.2: an extension appears once. Reading a request with two nonces raised DuplicateExtension out
    of the responder: a 500, and a traceback in the log for each such request anyone sent."""
    holder = Holder(ec_ca, tmp_path, "node").certificate
    twin = x509.ObjectIdentifier("1.3.6.1.5.5.7.48.1.99")  # as long as the nonce's OID, so it can become one
    request = ocsp_request_with(holder, ec_ca.intermediate_certificate, (x509.OCSPNonce(b"a" * 16), False),
                                (x509.UnrecognizedExtension(twin, b"\x04\x10" + b"b" * 16), False))
    request = request.replace(bytes.fromhex("06092b0601050507300163"), bytes.fromhex("06092b0601050507300102"))
    with pytest.raises(x509.DuplicateExtension):
        x509_ocsp.load_der_ocsp_request(request).extensions  # noqa: B018 (reading them is what raises)
    response = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(request, lambda serial: CertStatusInfo.good()))
    assert response.response_status == x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST


@pytest.mark.parametrize(("critical", "answered"), [(True, False), (False, True)])
def test_an_ocsp_request_extension_not_understood_is_ignored_unless_critical(ec_ca, tmp_path, critical, answered):
    """RFC 6960 §4.4 after RFC 5280 §4.2: a critical extension the responder does not understand must not be
    ignored; it was, and the request answered as if it were not there."""
    holder = Holder(ec_ca, tmp_path, "node").certificate
    unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00")
    request = ocsp_request_with(holder, ec_ca.intermediate_certificate, (unknown, critical),
                                (x509.OCSPNonce(b"n" * 16), True))  # understood: critical or not, it is answered
    response = x509_ocsp.load_der_ocsp_response(ec_ca.respond_ocsp(request, lambda serial: CertStatusInfo.good()))
    expected = x509_ocsp.OCSPResponseStatus.SUCCESSFUL if answered else x509_ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    assert response.response_status == expected


# --- mutual TLS with Python's ssl ----------------------------------------------------------------

def tls_context(ca: Authority, holder: Holder, *, server: bool, crl: Path | None = None) -> ssl.SSLContext:
    """Trusts the root only; presents leaf + intermediate, so the chain is really built."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(ca.directory / "root.pem"))
    context.load_cert_chain(str(holder.chain_path), str(holder.key_path))
    if crl is not None:
        context.load_verify_locations(cafile=str(crl))
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    return context


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> tuple[object, object]:
    """One mutual-TLS exchange on 127.0.0.1: (what the server saw, what the client saw)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    seen: dict[str, object] = {}

    def serve():
        try:
            connection, _ = listener.accept()
            with server_context.wrap_socket(connection, server_side=True) as tls:
                seen["server"] = tls.getpeercert()["subject"]
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError) as error:
            seen["server"] = error
        finally:
            listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=30) as raw, \
                client_context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            client: object = tls.recv(2)  # under TLS 1.3 a refused client certificate shows up here
    except (ssl.SSLError, OSError) as error:
        client = error
    thread.join(30)
    assert not thread.is_alive(), "the TLS server side of the handshake did not end in 30 s"
    return seen["server"], client


@pytest.fixture
def peers(ec_ca, tmp_path) -> tuple[Holder, Holder]:
    return Holder(ec_ca, tmp_path, "server", node_id=PEER_ID), Holder(ec_ca, tmp_path, "client")


def test_mutual_tls_between_two_issued_certificates_succeeds(ec_ca, peers):
    server, client = peers
    seen_by_server, seen_by_client = handshake(tls_context(ec_ca, server, server=True),
                                               tls_context(ec_ca, client, server=False))
    assert seen_by_client == b"ok"
    assert ((("commonName", NODE_ID),) in seen_by_server), seen_by_server


def test_mutual_tls_fails_with_a_foreign_certificate(ec_ca, foreign_ca, peers, tmp_path):
    server, _ = peers
    stranger = Holder(foreign_ca, tmp_path, "stranger")
    seen_by_server, seen_by_client = handshake(tls_context(ec_ca, server, server=True),
                                               tls_context(ec_ca, stranger, server=False))
    assert isinstance(seen_by_server, ssl.SSLError) and "certificate verify failed" in str(seen_by_server)
    assert isinstance(seen_by_client, ssl.SSLError | OSError)


def test_mutual_tls_fails_with_an_expired_certificate(ec_ca, peers, tmp_path):
    server, _ = peers
    past = datetime.now(UTC) - timedelta(days=10)
    expired = Holder(ec_ca, tmp_path, "expired", not_before=past, not_after=past + timedelta(days=1))
    seen_by_server, _ = handshake(tls_context(ec_ca, server, server=True), tls_context(ec_ca, expired, server=False))
    assert isinstance(seen_by_server, ssl.SSLError) and "certificate has expired" in str(seen_by_server)


def test_mutual_tls_fails_with_a_revoked_certificate_once_the_crl_is_loaded(ec_ca, peers, tmp_path):
    server, client = peers
    write_crl(ec_ca, tmp_path / "crl.pem", [RevokedEntry(client.certificate.serial_number, datetime.now(UTC),
                                                         x509.ReasonFlags.key_compromise)])
    without_crl, _ = handshake(tls_context(ec_ca, server, server=True), tls_context(ec_ca, client, server=False))
    assert not isinstance(without_crl, Exception), without_crl
    with_crl, _ = handshake(tls_context(ec_ca, server, server=True, crl=tmp_path / "crl.pem"),
                            tls_context(ec_ca, client, server=False))
    assert isinstance(with_crl, ssl.SSLError) and "certificate revoked" in str(with_crl)


# --- the management node's own certificates and the signing interface -----------------------------

def test_route_signer_signs_what_openssl_dgst_verifies_and_is_no_tls_identity(ec_ca, tmp_path):
    signer = ec_ca.route_signer_certificate
    (tmp_path / "signer.pem").write_bytes(authority.pem(signer))
    (tmp_path / "signer-pub.pem").write_bytes(signer.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    body = b'{"version": 1, "nodes": []}'
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "sig.der").write_bytes(ec_ca.route_signer_key.sign(body))
    verified = openssl("dgst", "-sha256", "-verify", "signer-pub.pem", "-signature", "sig.der", "body.json",
                       cwd=tmp_path)
    assert verified.returncode == 0 and "Verified OK" in verified.stdout
    chain = ("verify", "-CAfile", str(ec_ca.directory / "root.pem"), "-untrusted",
             str(ec_ca.directory / "intermediate.pem"))
    assert openssl(*chain, "signer.pem", cwd=tmp_path).returncode == 0
    assert openssl(*chain, "-purpose", "sslserver", "signer.pem", cwd=tmp_path).returncode != 0
    assert list(signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")]
    management = ec_ca.management_certificate
    (tmp_path / "management.pem").write_bytes(authority.pem(management))
    assert openssl(*chain, "-purpose", "sslserver", "management.pem", cwd=tmp_path).returncode == 0
    for certificate in (signer, management):
        assert certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints)
        assert certificate.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


def test_rotating_the_route_signer_keeps_the_old_pair_archived(tmp_path):
    ca = authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    old = ca.route_signer_certificate
    new = ca.rotate_route_signer()
    assert new.serial_number != old.serial_number and ca.route_signer_certificate == new
    archived = f"route-signer.{old.serial_number:x}"
    assert x509.load_pem_x509_certificate((tmp_path / "ca" / f"{archived}.pem").read_bytes()) == old
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / f"{archived}.key").st_mode) == 0o600
    assert Authority.load(tmp_path / "ca", PASSPHRASE, CAConfig()).route_signer_certificate == new


def test_another_process_picks_up_a_rotated_pair_and_never_a_mismatched_one(tmp_path, caplog):
    writer = authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    reader = Authority.load(tmp_path / "ca", PASSPHRASE, CAConfig())  # as a gunicorn worker holds it
    original = reader.route_signer_certificate
    wrong = tmp_path / "ca" / "wrong.key"
    wrong.write_bytes((tmp_path / "ca" / "management.key").read_bytes())
    os.replace(wrong, tmp_path / "ca" / "route-signer.key")  # a pair that does not belong together
    with pytest.raises(keys.CAKeyUnreadable, match="route-signer.key is not the key of route-signer.pem"):
        Authority.load(tmp_path / "ca", PASSPHRASE, CAConfig())
    reader.refresh_service_keys()
    assert reader.route_signer_certificate == original  # the pair in use stays
    assert "keeping the route-signer pair in use" in caplog.text
    rotated = writer.rotate_route_signer()
    reader.refresh_service_keys()
    assert reader.route_signer_certificate == rotated
    assert reader.route_signer_key.public_key().public_numbers() == rotated.public_key().public_numbers()


def test_a_reader_waits_for_a_rotation_in_progress_instead_of_reading_half_of_it(tmp_path, caplog):
    import fcntl

    writer = authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    reader = Authority.load(tmp_path / "ca", PASSPHRASE, CAConfig())
    directory = tmp_path / "ca"
    new_key = keys.generate("ec", "service")
    new_certificate = writer.issue_service_certificate("route-signer", new_key.public_key())
    with open(directory / ".rotation.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a rotation in another process, between its two renames
        keys.write_private_key(directory / "staged.key", new_key, PASSPHRASE)
        os.replace(directory / "staged.key", directory / "route-signer.key")
        reading = threading.Thread(target=reader.refresh_service_keys)
        reading.start()
        reading.join(0.5)
        assert reading.is_alive(), "the reader should wait for the rotation to finish"
        keys.write_public_file(directory / "staged.pem", authority.pem(new_certificate))
        os.replace(directory / "staged.pem", directory / "route-signer.pem")
        fcntl.flock(lock, fcntl.LOCK_UN)
    reading.join(10)
    assert reader.route_signer_certificate == new_certificate
    assert "keeping the" not in caplog.text  # it never saw the new key beside the old certificate


def test_reading_service_files_waits_for_a_rotation_in_progress(tmp_path):
    import fcntl

    ca = authority.init_ca(tmp_path / "ca", PASSPHRASE, CAConfig())
    entered = threading.Event()

    def read_files():
        with ca.service_files_settled():
            entered.set()

    with open(tmp_path / "ca" / ".rotation.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        reading = threading.Thread(target=read_files)
        reading.start()
        assert not entered.wait(0.5), "reading should wait while a rotation holds the lock"
        fcntl.flock(lock, fcntl.LOCK_UN)
    assert entered.wait(10)
    reading.join(10)


class RemoteKey(ec.EllipticCurvePrivateKey):
    """What an HSM adapter looks like: cryptography calls `sign`; the key never leaves the device."""

    def __init__(self, inner: ec.EllipticCurvePrivateKey):
        self._inner, self.signatures = inner, 0

    def sign(self, data, signature_algorithm):
        self.signatures += 1
        return self._inner.sign(data, signature_algorithm)

    def public_key(self):
        return self._inner.public_key()

    @property
    def curve(self):
        return self._inner.curve

    @property
    def key_size(self):
        return self._inner.key_size

    def exchange(self, algorithm, peer_public_key):
        raise NotImplementedError

    def private_numbers(self):
        raise NotImplementedError

    def private_bytes(self, encoding, format, encryption_algorithm):
        raise NotImplementedError

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


class HSMSigningKey:
    """A `SigningKey` whose private key stays in the (pretend) device."""

    def __init__(self, remote: RemoteKey):
        self._remote = remote

    def public_key(self):
        return self._remote.public_key()

    def signer(self):
        return self._remote

    def sign(self, data: bytes) -> bytes:
        return self._remote.sign(data, ec.ECDSA(hashes.SHA256()))


def test_an_hsm_style_key_signs_certificates_crls_and_ocsp_through_the_same_interface(ec_ca, tmp_path):
    inner = serialization.load_pem_private_key((ec_ca.directory / "intermediate.key").read_bytes(), PASSPHRASE)
    remote = RemoteKey(inner)
    hsm = Authority(ec_ca.directory, CAConfig(), root_certificate=ec_ca.root_certificate,
                    intermediate_certificate=ec_ca.intermediate_certificate, intermediate_key=HSMSigningKey(remote),
                    passphrase=PASSPHRASE)
    holder = Holder(hsm, tmp_path, "node")
    write_crl(hsm, tmp_path / "crl.pem", [])
    request = x509_ocsp.OCSPRequestBuilder().add_certificate(
        holder.certificate, hsm.intermediate_certificate, hashes.SHA1()).build()
    answer = x509_ocsp.load_der_ocsp_response(hsm.respond_ocsp(request.public_bytes(serialization.Encoding.DER),
                                                               lambda serial: CertStatusInfo.good()))
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD and remote.signatures == 3
    result = openssl("verify", "-crl_check", "-CAfile", str(ec_ca.directory / "root.pem"), "-untrusted",
                     str(ec_ca.directory / "intermediate.pem"), "-CRLfile", "crl.pem", "node.pem", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
