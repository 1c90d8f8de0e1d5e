"""SPEC §5 on the application node: the route signer checked against the CRL of the CA that issued it.

The management node's route signer is a certificate its intermediate issues, and revoking it (`flask ca revoke`,
the console) puts it on the intermediate's CRL (`/ca/crl.crl`). A route client given that CRL
(`use_revocation_list`) refuses a table whose signer is on it (`signer_revoked`) and stops using a table it holds
that such a signer signed: a key that leaked could have signed a table of a high version, which would otherwise
be refused as a rollback target for ever after. A CRL is taken only when a CA the client trusts signed it, and
never in place of a newer one (by thisUpdate), so a replayed CRL cannot hide a revocation.

Fail-open for what the client holds, fail-closed for what is new: with `require_revocation_list`, a new table
needs a current CRL (before its nextUpdate) of its signer's issuer (`revocation_unknown` otherwise), whereas a
held or stored table is checked against whatever CRL is known, and a CRL that cannot be had never costs the node
the table it holds. Kept apart from verification.py, whose signer check calls `_check_revocation`.
"""

from __future__ import annotations

import logging
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.routing.verification import (
    MAX_CHAIN_DEPTH,
    Certificates,
    RouteRejected,
    _is_usable_ca,
    _issued_by,
    _load_certificates,
)

# The route client's logger, whichever of its modules logs: operators read one name in the node's log.
log = logging.getLogger("app.routing.client")


class RevocationMixin:
    """A `RouteClient`'s CRLs. Relies on the client's `now`, `require_revocation_list`, `_roots`, `_intermediates`,
    `_revocation_lists`, `_lock` and `_held`, and on `_verify_signer` (VerificationMixin)."""

    def use_revocation_list(self, data: bytes, chain_pem: Certificates | None = None) -> bool:
        """Take a CRL (DER or PEM, as `/ca/crl.crl` or `/ca/crl.pem` serve it) signed by a CA this client trusts
        (`chain_pem`: intermediates beside the constructor's). False when the CRL held for that CA is newer;
        RouteRejected `bad_crl` when it is not a CRL or no trusted CA signed it. A held table that a signer on it
        signed is no longer used."""
        revocation_list = _parse(data)
        issuer = self._crl_issuer(revocation_list, chain_pem)
        with self._lock:
            held = self._revocation_lists.get(_key_id(issuer))
            if held is not None and _older(revocation_list, held):
                return False
            self._revocation_lists[_key_id(issuer)] = revocation_list
            self._drop_held_if_revoked()
        return True

    @property
    def revocation_list_next_update(self) -> datetime | None:
        """The earliest nextUpdate of the CRLs held (None when none is held): a node fetches a new one by then."""
        updates = [item.next_update_utc for item in self._revocation_lists.values() if item.next_update_utc]
        return min(updates) if updates else None

    def _use_initial_revocation_list(self, data: bytes | None) -> None:
        """The CRL a node kept on disk, at start: one that is not taken is logged and passed over, as a stored
        table that does not verify is (the node's next refresh fetches a new one)."""
        if not data:
            return
        try:
            revocation_list = _parse(data)
            self._revocation_lists[_key_id(self._crl_issuer(revocation_list, None))] = revocation_list
        except RouteRejected as error:
            log.warning("not using the CRL given to the route client: %s: %s", error.code, error.message)

    def _check_revocation(self, signer: x509.Certificate, issuer: x509.Certificate, *, pulled: bool) -> None:
        """The signer against its issuer's CRL; `pulled`: a new table (a CRL is required when the client says so),
        else one held or stored (checked against what is known)."""
        revocation_list = self._revocation_lists.get(_key_id(issuer))
        if (revocation_list is not None
                and revocation_list.get_revoked_certificate_by_serial_number(signer.serial_number) is not None):
            raise RouteRejected("signer_revoked", f"the route signer certificate {signer.serial_number:x} is revoked "
                                f"(CRL {_number(revocation_list)} of {issuer.subject.rfc4514_string()})")
        if not pulled or not self.require_revocation_list:
            return
        if revocation_list is None:
            raise RouteRejected("revocation_unknown", "no CRL of the route signer's issuer is known to check the "
                                "signer against (fetch /ca/crl.crl from the management node)")
        next_update = revocation_list.next_update_utc
        if next_update is not None and next_update <= self.now():
            raise RouteRejected("revocation_unknown", f"the CRL of the route signer's issuer is past its nextUpdate "
                                f"({next_update.isoformat()}): fetch a current one from the management node")

    def _crl_issuer(self, revocation_list: x509.CertificateRevocationList,
                    chain_pem: Certificates | None) -> x509.Certificate:
        """The trusted CA that signed the CRL: a trust anchor, or an intermediate chaining to one."""
        now = self.now()
        pool = self._intermediates + _load_certificates(chain_pem)
        trusted = list(self._roots)
        for _ in range(MAX_CHAIN_DEPTH):
            for certificate in trusted:
                if (certificate.subject == revocation_list.issuer
                        and revocation_list.is_signature_valid(certificate.public_key())):
                    return certificate
            more = [ca for ca in pool if ca not in trusted and _is_usable_ca(ca, now)
                    and any(_issued_by(ca, known) for known in trusted)]
            if not more:
                break
            trusted += more
        raise RouteRejected("bad_crl", f"the CRL of {revocation_list.issuer.rfc4514_string()} is not signed by a CA "
                            "this node trusts")

    def _drop_held_if_revoked(self) -> None:
        """Under `_lock`: stop using the held table when a signer of a document it was built from is revoked."""
        held = self._held
        if held is None:
            return
        for signed in held.documents:
            try:
                self._verify_signer(signed.signer_cert_pem, signed.chain_pem, signed.signer_fingerprint)
            except RouteRejected as error:
                if error.code == "signer_revoked":
                    log.error("no longer using routing table version %s: %s", held.table["version"], error.message)
                    self._held = None
                    return


def _parse(data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise RouteRejected("bad_crl", "the CRL is neither DER nor PEM") from None


def _key_id(certificate: x509.Certificate) -> bytes:
    """A CA by its key, so that a CRL applies only to certificates that key issued."""
    return certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _older(offered: x509.CertificateRevocationList, held: x509.CertificateRevocationList) -> bool:
    """Whether `offered` is older than `held`, by CRL number when both carry one (RFC 5280 5.2.3: it increases
    with each CRL): the management node writes thisUpdate in whole seconds, so CRLs signed within one second
    tie, and the one from before a revocation, replayed after it, was taken. By thisUpdate otherwise."""
    offered_number, held_number = _number(offered), _number(held)
    if offered_number is not None and held_number is not None:
        return offered_number < held_number
    return offered.last_update_utc < held.last_update_utc


def _number(revocation_list: x509.CertificateRevocationList) -> int | None:
    try:
        return revocation_list.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None
