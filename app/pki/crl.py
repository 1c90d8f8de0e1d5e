"""The certificate revocation list (RFC 5280 §5) the issuing intermediate publishes.

A full CRL for every certificate the intermediate issued: AuthorityKeyIdentifier and CRLNumber,
and deliberately no IssuingDistributionPoint. With an IDP whose distribution point name is not
exactly the certificates' CRLDistributionPoints, or with onlySomeReasons, OpenSSL refuses the CRL
("different CRL scope", the step-ca bug: the openssl CRL test fails if such an IDP is added),
and a CA with one full CRL needs no scope at all.
Reason `unspecified` is written as no reason code, as RFC 5280 §5.3.1 asks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime
from typing import NamedTuple

from cryptography import x509

from app.errors import ValidationFailed
from app.pki.keys import SigningKey, signature_hash

MAX_CRL_NUMBER = 2**159  # RFC 5280 §5.2.3: at most 20 octets


class RevokedEntry(NamedTuple):
    """One revoked certificate. `reason` may be a `ReasonFlags` or its name ("key_compromise")."""

    serial: int
    revoked_at: datetime
    reason: x509.ReasonFlags | str | None = None


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """AKI naming `issuer` by its own SubjectKeyIdentifier, so the two always match."""
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def reason_flag(reason: x509.ReasonFlags | str | None) -> x509.ReasonFlags | None:
    """The reason as a `ReasonFlags`, or None for no reason code (None or unspecified)."""
    if reason is None or isinstance(reason, x509.ReasonFlags):
        flag = reason
    else:
        try:
            flag = x509.ReasonFlags[reason]
        except KeyError:
            raise ValidationFailed(f"Unknown revocation reason {reason!r}.", code="invalid_reason",
                                   field="reason") from None
    if flag is x509.ReasonFlags.remove_from_crl:
        raise ValidationFailed("remove_from_crl belongs to delta CRLs only.", code="invalid_reason", field="reason")
    return None if flag is x509.ReasonFlags.unspecified else flag


def build_crl(revoked: Iterable[RevokedEntry | tuple], *, issuer: x509.Certificate, signing_key: SigningKey,
              this_update: datetime, next_update: datetime, crl_number: int) -> x509.CertificateRevocationList:
    """A CRL signed by `signing_key` (the key of `issuer`); serialise with `public_bytes(PEM | DER)`."""
    if next_update <= this_update:
        raise ValidationFailed("A CRL's nextUpdate must come after its thisUpdate.", code="invalid_crl_dates")
    if not 0 <= crl_number < MAX_CRL_NUMBER:
        raise ValidationFailed("A CRL number is a non-negative integer of at most 20 octets.",
                               code="invalid_crl_number")
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
               .last_update(this_update).next_update(next_update)
               .add_extension(authority_key_identifier(issuer), critical=False)
               .add_extension(x509.CRLNumber(crl_number), critical=False))
    for entry in revoked:
        serial, revoked_at, reason = RevokedEntry(*entry)
        revoked_builder = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(revoked_at)
        flag = reason_flag(reason)
        if flag is not None:
            revoked_builder = revoked_builder.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(revoked_builder.build())
    return builder.sign(signing_key.signer(), signature_hash(signing_key))


def entity_tag(crl_number: int, data: bytes) -> str:
    """The strong ETag `/ca/crl.crl`, `/ca/crl.pem` and the root's twins serve (docs/protocol.md §4), quoted:
    the CRL number, for whoever reads it, and the SHA-256 of the bytes served, so that it changes with every
    CRL and differs between the DER and the PEM. A function of the bytes alone: a node works it out from the
    CRL it keeps (`entity_tag_of`) and sends it in If-None-Match, with nothing stored beside the CRL."""
    return f'"{crl_number}-{hashlib.sha256(data).hexdigest()}"'


def entity_tag_of(data: bytes) -> str | None:
    """`entity_tag` of a CRL as it was served (DER or PEM); None when it is not a CRL with a CRL number."""
    try:
        loaded = (x509.load_pem_x509_crl(data) if data.lstrip().startswith(b"-----BEGIN")
                  else x509.load_der_x509_crl(data))
        number = loaded.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound):
        return None
    return entity_tag(number, data)
