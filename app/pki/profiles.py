"""Certificate profiles (RFC 5280 §4): what goes into each kind of certificate the CA makes.

CA certificates: BasicConstraints CA:TRUE (critical; pathlen 0 for the intermediate), KeyUsage
keyCertSign+cRLSign (critical; plus digitalSignature for the intermediate, which signs OCSP
responses itself), SKI, AKI.

Leaf certificates (nodes, route signer, management node): BasicConstraints CA:FALSE (critical),
KeyUsage digitalSignature (+ keyEncipherment for RSA keys; critical), an EKU, SKI, AKI, the CRL
distribution point and the OCSP address (AIA), and SANs when the profile has names.
Only builders here: signing happens in `authority.py`, through `SigningKey`.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from app.errors import ValidationFailed
from app.pki.crl import authority_key_identifier

DOCUMENT_SIGNING = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")  # id-kp-documentSigning, RFC 9336
TLS_USAGES = (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
ROUTE_SIGNING_USAGES = (DOCUMENT_SIGNING,)
NODE_ID = re.compile(r"\d{20}")
ORGANISATION_MAX = 64  # X.520 ub-organization-name
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def subject_name(country: str, organisation: str, common_name: str) -> x509.Name:
    """C, O (cut at 64 characters, the X.520 bound), CN."""
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, country),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation.strip()[:ORGANISATION_MAX]),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def host_name(host: str) -> x509.GeneralName:
    """An endpoint host as a SAN entry: IPAddress for an IP literal, else an IDNA A-label DNSName."""
    bare = host.strip().strip("[]")
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    try:
        ascii_name = bare.rstrip(".").encode("idna").decode("ascii").lower()
    except UnicodeError:
        ascii_name = ""
    if not ascii_name or not all(_DNS_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise ValidationFailed(f"{host!r} is not a host name or IP address.", code="invalid_host", field="endpoint")
    return x509.DNSName(ascii_name)


def node_names(node_id: str, host: str) -> list[x509.GeneralName]:
    """SAN of a node (or the management node): its endpoint host and `urn:mpim:node:<node id>`."""
    if not NODE_ID.fullmatch(node_id):
        raise ValidationFailed(f"{node_id!r} is not a 20-digit node id.", code="invalid_node_id", field="node_id")
    return [host_name(host), x509.UniformResourceIdentifier(f"urn:mpim:node:{node_id}")]


def key_usage(*, digital_signature: bool = False, key_encipherment: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                         key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
                         key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)


def crl_distribution_point(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints([x509.DistributionPoint(
        full_name=[x509.UniformResourceIdentifier(url)], relative_name=None, reasons=None, crl_issuer=None)])


def ca_certificate(subject: x509.Name, issuer: x509.Certificate | None, public_key: CertificatePublicKeyTypes,
                   not_before: datetime, not_after: datetime, path_length: int | None, *,
                   crl_url: str | None = None) -> x509.CertificateBuilder:
    """A root (`issuer` None: self-issued) or an intermediate under `issuer`; `crl_url` is where the
    issuer's CRL (the root's, for an intermediate) is published."""
    aki = (authority_key_identifier(issuer) if issuer is not None
           else x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key))
    builder = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer.subject if issuer is not None else subject)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(key_usage(digital_signature=issuer is not None, ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(aki, critical=False))
    return builder.add_extension(crl_distribution_point(crl_url), critical=False) if crl_url else builder


def leaf_template(issuer: x509.Certificate, *, usages: tuple[x509.ObjectIdentifier, ...], rsa_key: bool,
                  crl_url: str, ocsp_url: str) -> x509.CertificateBuilder:
    """The part of a leaf certificate that is the same for every holder of one profile: issuer
    name and the constant extensions. Built once and reused (builders are immutable): making the
    extension objects anew for each certificate cost a quarter of an issuance."""
    return (
        x509.CertificateBuilder().issuer_name(issuer.subject)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True, key_encipherment=rsa_key), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(authority_key_identifier(issuer), critical=False)
        .add_extension(crl_distribution_point(crl_url), critical=False)
        .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]), critical=False))


def leaf_certificate(template: x509.CertificateBuilder, subject: x509.Name, public_key: CertificatePublicKeyTypes,
                     *, names: list[x509.GeneralName], not_before: datetime, not_after: datetime
                     ) -> x509.CertificateBuilder:
    """One holder's certificate from `leaf_template`: subject, key, a random serial (RFC 5280
    asks for ≥ 64 bits; this is 159), validity, SKI and the SANs."""
    builder = (template.subject_name(subject).public_key(public_key).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder
