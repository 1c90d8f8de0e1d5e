"""The CA itself (issue 4): a root, an issuing intermediate, and what the intermediate signs.

Files under the CA directory (keys encrypted, 0600):
  root.pem root.key            EC P-384 (or RSA 3072); the key may be taken offline
  intermediate.pem/.key        EC P-256 (or RSA 3072); CA:TRUE, pathlen:0; signs everything else
  route-signer.pem/.key        EC P-256; EKU documentSigning (RFC 9336): signs routing tables only
  management.pem/.key          EC P-256; the management node's own TLS client/server certificate
No database here: `service.py` stores and audits what this module issues.
"""

from __future__ import annotations

import ipaddress
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from app.database import utcnow
from app.errors import Conflict
from app.pki import keys

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
BACKDATE = timedelta(minutes=1)
MANAGEMENT_NODE_ID = "10000000002015000001"


class CAAlreadyInitialised(Conflict):
    code = "ca_exists"


@dataclass(frozen=True)
class CAConfig:
    organisation: str = "Ministry of Public Security"
    root_common_name: str = "MPIM Root CA"
    intermediate_common_name: str = "MPIM Issuing CA 1"
    key_type: str = "ec"
    crl_url: str = "http://127.0.0.1:5000/ca/crl.crl"
    ocsp_url: str = "http://127.0.0.1:5000/ca/ocsp"
    node_validity_days: int = 90
    root_validity_days: int = 7300
    intermediate_validity_days: int = 3650
    service_validity_days: int = 365
    management_host: str = "127.0.0.1"


def is_initialised(directory: Path) -> bool:
    return (directory / "intermediate.pem").exists()


def _name(common_name: str, organisation: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _ca_certificate(subject, issuer, public_key, signing_key, issuer_public_key, days, path_length):
    now = utcnow()
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - BACKDATE).not_valid_after(now + timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False))
    return builder.sign(signing_key, hashes.SHA256())


def init_ca(directory: Path, passphrase: bytes, config: CAConfig) -> None:
    """Create root, intermediate, route signer and management certificates; never overwrite."""
    if (directory / "root.pem").exists() or is_initialised(directory):
        raise CAAlreadyInitialised(f"A CA exists already in {directory}; refusing to overwrite it.")
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    root_key = keys.generate(config.key_type, "root")
    root_name = _name(config.root_common_name, config.organisation)
    root = _ca_certificate(root_name, root_name, root_key.public_key(), root_key, root_key.public_key(),
                           config.root_validity_days, None)
    intermediate_key = keys.generate(config.key_type, "intermediate")
    intermediate = _ca_certificate(_name(config.intermediate_common_name, config.organisation), root_name,
                                   intermediate_key.public_key(), root_key, root_key.public_key(),
                                   config.intermediate_validity_days, 0)
    keys.write_private_key(directory / "root.key", root_key, passphrase)
    keys.write_public_file(directory / "root.pem", _pem(root))
    keys.write_private_key(directory / "intermediate.key", intermediate_key, passphrase)
    keys.write_public_file(directory / "intermediate.pem", _pem(intermediate))
    authority = Authority(directory, passphrase, config, load_services=False)
    authority.create_service_certificate("route-signer")
    authority.create_service_certificate("management")


def root_offline(directory: Path, export_path: Path) -> None:
    """Move the root key out of the server; the intermediate keeps issuing."""
    source = directory / "root.key"
    if not source.exists():
        raise Conflict("The root key is not on this server any more.", code="root_offline")
    if export_path.exists():
        raise Conflict(f"{export_path} exists; refusing to overwrite it.", code="export_exists")
    shutil.copyfile(source, export_path)
    export_path.chmod(0o600)
    source.unlink()


class Authority:
    """The loaded CA: certificates in memory, keys behind the SigningKey interface."""

    def __init__(self, directory: Path, passphrase: bytes, config: CAConfig, *, load_services: bool = True):
        self.directory, self.config, self._passphrase = directory, config, passphrase
        self.root_certificate = x509.load_pem_x509_certificate((directory / "root.pem").read_bytes())
        self.intermediate_certificate = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
        self.intermediate_key: keys.SigningKey = keys.FileSigningKey.load(directory / "intermediate.key", passphrase)
        if load_services:
            self.route_signer_certificate, self.route_signer_key = self._service("route-signer")
            self.management_certificate, self.management_key = self._service("management")

    @classmethod
    def load(cls, directory: Path, passphrase: bytes, config: CAConfig) -> Authority:
        return cls(directory, passphrase, config)

    def _service(self, name: str):
        certificate = x509.load_pem_x509_certificate((self.directory / f"{name}.pem").read_bytes())
        return certificate, keys.FileSigningKey.load(self.directory / f"{name}.key", self._passphrase)

    @property
    def root_key_online(self) -> bool:
        return (self.directory / "root.key").exists()

    def chain_pem(self) -> bytes:
        return _pem(self.intermediate_certificate) + _pem(self.root_certificate)

    def _leaf(self, public_key, subject: x509.Name, names: list[x509.GeneralName], usages: list,
              not_before: datetime | None, not_after: datetime | None, days: int) -> x509.Certificate:
        now = utcnow()
        start = not_before or now - BACKDATE
        end = min(not_after or now + timedelta(days=days), self.intermediate_certificate.not_valid_after_utc)
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(self.intermediate_certificate.subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=rsa_key, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.intermediate_certificate.public_key()), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(self.config.crl_url)], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
                x509.oid.AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(self.config.ocsp_url))]),
                critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(self.intermediate_key.signer(), hashes.SHA256())

    def issue_node_certificate(self, csr: x509.CertificateSigningRequest, *, node_id: str, org_name: str,
                               endpoint_host: str, validity_days: int | None = None,
                               not_before: datetime | None = None, not_after: datetime | None = None
                               ) -> x509.Certificate:
        """The CA decides subject and extensions; the CSR contributes only its public key."""
        subject = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_name[:64]),
                             x509.NameAttribute(NameOID.COMMON_NAME, node_id)])
        names = [host_name(endpoint_host), x509.UniformResourceIdentifier(f"urn:mpim:node:{node_id}")]
        return self._leaf(csr.public_key(), subject, names,
                          [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH], not_before, not_after,
                          validity_days or self.config.node_validity_days)

    def create_service_certificate(self, name: str) -> x509.Certificate:
        """`route-signer` or `management`: a fresh EC P-256 key and certificate written to the directory.
        An existing pair is kept with a timestamp suffix (rotation)."""
        key = keys.generate("ec", name)
        if name == "route-signer":
            subject = _name("MPIM route signer", self.config.organisation)
            names, usages = [], [DOCUMENT_SIGNING]
        else:
            subject = _name(MANAGEMENT_NODE_ID, self.config.organisation)
            names = [host_name(self.config.management_host),
                     x509.UniformResourceIdentifier(f"urn:mpim:node:{MANAGEMENT_NODE_ID}")]
            usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        certificate = self._leaf(key.public_key(), subject, names, usages, None, None,
                                 self.config.service_validity_days)
        stamp = utcnow().strftime("%Y%m%dT%H%M%S")
        for suffix in ("pem", "key"):
            current = self.directory / f"{name}.{suffix}"
            if current.exists():
                current.rename(self.directory / f"{name}.{stamp}.{suffix}")
        keys.write_private_key(self.directory / f"{name}.key", key, self._passphrase)
        keys.write_public_file(self.directory / f"{name}.pem", _pem(certificate))
        if name == "route-signer":
            self.route_signer_certificate, self.route_signer_key = certificate, keys.FileSigningKey(key)
        else:
            self.management_certificate, self.management_key = certificate, keys.FileSigningKey(key)
        return certificate

    def build_crl(self, revoked: list[tuple[int, datetime, str | None]], *, crl_number: int, this_update: datetime,
                  next_update: datetime) -> x509.CertificateRevocationList:
        """No IssuingDistributionPoint: scope flags there make OpenSSL reject the CRL."""
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.intermediate_certificate.subject)
                   .last_update(this_update).next_update(next_update)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.intermediate_certificate.public_key()), critical=False)
                   .add_extension(x509.CRLNumber(crl_number), critical=False))
        for serial, revoked_at, reason in revoked:
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
            if reason and reason != "unspecified":
                entry = entry.add_extension(x509.CRLReason(x509.ReasonFlags[reason]), critical=False)
            builder = builder.add_revoked_certificate(entry.build())
        return builder.sign(self.intermediate_key.signer(), hashes.SHA256())
