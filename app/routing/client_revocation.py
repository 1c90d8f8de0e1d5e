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
the table it holds.

The root's CRL (`use_revocation_list(..., of_root=True)`, taken only when a trust anchor signed it) is checked the
same way for every CA between the signer and the root: a table whose signer chains through a CA it lists is
refused (`intermediate_revoked`), and a held table such a chain vouched for is dropped. Whoever holds a revoked
intermediate's key could mint a signer and a CRL of that intermediate not listing it; the root's CRL is what they
cannot make. What it lists is enforced whatever its nextUpdate (a revocation is final), but a new table does not
need one, nor a current one: a root whose key is offline signs its CRL rarely (docs/protocol.md §4).
Kept apart from verification.py, whose signer check calls `_check_revocation` and `_check_chain_revocation`.
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

    def use_revocation_list(self, data: bytes, chain_pem: Certificates | None = None, *,
                            of_root: bool = False) -> bool:
        """Take a CRL (DER or PEM, as `/ca/crl.crl` or `/ca/crl.pem` serve it) signed by a CA this client trusts
        (`chain_pem`: intermediates beside the constructor's; `of_root`: a trust anchor only, as the root's CRL
        must be). False when the CRL held for that CA is newer; RouteRejected `bad_crl` when it is not a CRL or
        no CA it may come from signed it. A held table that a signer or CA on it vouched for is no longer used."""
        revocation_list = _parse(data)
        issuer = self._crl_issuer(revocation_list, chain_pem, of_root=of_root)
        with self._lock:
            held = self._revocation_lists.get(_key_id(issuer))
            if held is not None and _older(revocation_list, held):
                return False
            self._revocation_lists[_key_id(issuer)] = revocation_list
            self._drop_held_if_revoked()
        return True

    @property
    def revocation_list_next_update(self) -> datetime | None:
        """The earliest nextUpdate of the intermediates' CRLs held (None when none is held): a node fetches a new
        one by then, as a new table needs one that is current."""
        return _earliest(item for key, item in self._revocation_lists.items() if key not in self._root_keys())

    @property
    def root_revocation_list_next_update(self) -> datetime | None:
        """The nextUpdate of the root's CRL held, None when none is held (or it gives none)."""
        return _earliest(item for key, item in self._revocation_lists.items() if key in self._root_keys())

    def _root_keys(self) -> set[bytes]:
        return {_key_id(root) for root in self._roots}

    def _use_initial_revocation_list(self, data: bytes | None, *, of_root: bool = False) -> None:
        """A CRL a node kept on disk, at start: one that is not taken is logged and passed over, as a stored
        table that does not verify is (the node's next refresh fetches a new one)."""
        if not data:
            return
        try:
            revocation_list = _parse(data)
            issuer = self._crl_issuer(revocation_list, None, of_root=of_root)
            self._revocation_lists[_key_id(issuer)] = revocation_list
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

    def _check_chain_revocation(self, chain: list[x509.Certificate]) -> None:
        """Each CA of `chain` (the signer's issuer first, a trust anchor last) against the CRL held of the CA that
        issued it, whatever that CRL's nextUpdate; none held is no refusal (see the module's docstring)."""
        for certificate, issuer in zip(chain, chain[1:], strict=False):
            revocation_list = self._revocation_lists.get(_key_id(issuer))
            if (revocation_list is not None and revocation_list.get_revoked_certificate_by_serial_number(
                    certificate.serial_number) is not None):
                raise RouteRejected("intermediate_revoked", f"the intermediate CA certificate "
                                    f"{certificate.serial_number:x} ({certificate.subject.rfc4514_string()}) the route "
                                    f"signer chains through is revoked (CRL {_number(revocation_list)} of "
                                    f"{issuer.subject.rfc4514_string()})")

    def _crl_issuer(self, revocation_list: x509.CertificateRevocationList, chain_pem: Certificates | None, *,
                    of_root: bool = False) -> x509.Certificate:
        """The trusted CA that signed the CRL: a trust anchor, or (unless `of_root`) an intermediate chaining to
        one."""
        now = self.now()
        pool = [] if of_root else self._intermediates + _load_certificates(chain_pem)
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
        raise RouteRejected("bad_crl", f"the CRL of {revocation_list.issuer.rfc4514_string()} is not signed by "
                            f"{'the trust anchor' if of_root else 'a CA this node trusts'}")

    def _drop_held_if_revoked(self) -> None:
        """Under `_lock`: stop using the held table when a signer of a document it was built from is revoked."""
        held = self._held
        if held is None:
            return
        for signed in held.documents:
            try:
                self._verify_signer(signed.signer_cert_pem, signed.chain_pem, signed.signer_fingerprint)
            except RouteRejected as error:
                if error.code in ("signer_revoked", "intermediate_revoked"):
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


def _earliest(revocation_lists) -> datetime | None:
    updates = [item.next_update_utc for item in revocation_lists if item.next_update_utc]
    return min(updates) if updates else None


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
