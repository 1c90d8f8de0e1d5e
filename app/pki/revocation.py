"""Revocation, the CRLs and the OCSP responder: how the network learns a certificate is no longer good.

A revocation is final (no certificateHold), regenerates the intermediate's CRL at once, and when it
hits the management node's own route signer or TLS certificate in use, replaces that one
(`own_keys`). The scheduler refreshes both CRLs before their nextUpdate (`crl_refresh_job`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from app.audit import service as audit
from app.database import require_number_above, serialise, utcnow
from app.errors import Conflict, PermissionDenied, ValidationFailed
from app.extensions import db
from app.pki import ocsp, own_keys, service
from app.pki.authority import BACKDATE
from app.pki.models import INTERMEDIATE_CRL, ROOT_CRL, Certificate, CRLState, RevokedIntermediate

# RFC 5280 reasons an admin may give. certificateHold is left out: a hold is meant to be lifted, and
# a revocation here is final (nothing ever takes a certificate off the CRL).
REASONS = ("unspecified", "key_compromise", "affiliation_changed", "superseded", "cessation_of_operation",
           "privilege_withdrawn")
# A CRL number column holds no more (PostgreSQL integer). `regenerate_crl(above=...)` leaves a million CRLs
# before it: a number past it would fail every revocation, since each signs a CRL.
MAX_STORED_CRL_NUMBER = 2**31 - 1
HIGHEST_ABOVE = MAX_STORED_CRL_NUMBER - 1_000_000


@dataclass(frozen=True)
class Revoked:
    """A revocation's outcome; `replacement` is the management node's new certificate when the revoked
    one was in use (a route signer or TLS identity is replaced at once), else None."""

    certificate: Certificate
    replacement: Certificate | None = None


def _shown(reason: str) -> str:
    """A refused reason as the refusal may repeat it: only a forged form sends one, so it can be long or hold
    control characters; escaped and cut to 40 characters, it reads as what was sent without filling the page."""
    escaped = reason.encode("unicode_escape").decode("ascii")
    return escaped if len(escaped) <= 40 else escaped[:40] + "…"


def revoke(certificate: Certificate, reason: str, *, by) -> Revoked:
    if by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    if reason not in REASONS:
        raise ValidationFailed(_l("Unknown revocation reason %(reason)s.", reason=_shown(reason)),
                               code="invalid_reason", field="reason")
    if certificate.node_id:
        from app.admission.nodes import lock_name

        # Queued as a renewal (its key, then its node) and before the node's revocation or change (which hold the
        # node, then its certificates): a renewal keeping a key reported compromised here is refused, and every
        # certificate of the node is ours to read and revoke until commit.
        serialise(service.key_lock_name(certificate.key_sha256), lock_name(certificate.node_id))
    serialise(f"certificate:{certificate.serial}")  # two admins revoking the route signer rotate it once
    # The CRL's lock before the route signer's rotation publishes the routing table (its lock): every revocation
    # takes the two in that order, as a node's revocation does through its hooks.
    serialise(crl_lock_name(INTERMEDIATE_CRL))
    db.session.refresh(certificate)
    if certificate.revoked_at is not None:
        raise Conflict(_l("This certificate is revoked already."), code="already_revoked")
    in_service = in_service_role(certificate)
    now = utcnow()
    certificate.revoked_at, certificate.revocation_reason = now, reason
    audit.record("certificate.revoke", certificate.serial, {"node": certificate.node_id, "reason": reason},
                 actor=by.username)
    if reason == "key_compromise":
        _revoke_same_key(certificate, now=now, actor=by.username)
    replacement = None
    if in_service == "route_signer":  # nodes would keep accepting tables signed by a revoked key
        replacement = own_keys.rotate_route_signer(actor=by.username)
    elif in_service == "management":  # and nodes would keep accepting our polls with it
        replacement = own_keys.rotate_management_certificate(actor=by.username)
    regenerate_crl()  # recorded as the revocation above
    if certificate.node_id:
        for hook in service.certificate_revoked + service.certificate_changed:
            hook(certificate.node_id)
    return Revoked(certificate, replacement)


def same_key_certificates(certificate: Certificate) -> list[Certificate]:
    """The node's other unrevoked certificates of this certificate's key: what revoking it as key_compromise
    revokes with it (`revoke`), and what the certificate page says it will."""
    if certificate.node_id is None:
        return []
    return list(db.session.scalars(select(Certificate).where(
        Certificate.node_id == certificate.node_id, Certificate.key_sha256 == certificate.key_sha256,
        Certificate.serial != certificate.serial, Certificate.revoked_at.is_(None)).order_by(Certificate.serial)))


def _revoke_same_key(compromised: Certificate, *, now, actor: str) -> None:
    """A compromised key is never good again (protocol.md), and a renewal may have kept it: every other
    certificate of the node that certifies it is revoked with it, or whoever stole the key opens sessions
    with the older one and the routing table goes back to listing that."""
    for row in same_key_certificates(compromised):  # read under the node's lock (`revoke`)
        row.revoked_at, row.revocation_reason = now, "key_compromise"
        audit.record("certificate.revoke", row.serial, {"node": row.node_id, "reason": "key_compromise",
                                                        "same_key_as": compromised.serial}, actor=actor)


def revoke_with_node(row: Certificate, reason: str, *, now) -> bool:
    """A node's certificate revoked because of what happened to the node (its revocation, a new host):
    queued behind an admin revoking the same certificate at that moment, so it is revoked, and audited,
    once. False when it was revoked already."""
    serialise(f"certificate:{row.serial}")
    db.session.refresh(row)
    if row.revoked_at is not None:
        return False
    row.revoked_at, row.revocation_reason = now, reason
    audit.record("certificate.revoke", row.serial, {"node": row.node_id, "reason": reason})
    return True


def in_service_role(certificate: Certificate, *, from_files: bool = False) -> str | None:
    """"route_signer" or "management" when the row is the management node's certificate in use now
    (revoking it replaces it at once), else None. A revocation asks the loaded CA, which it needs anyway;
    `from_files` asks the certificate files instead, opening no key: the detail page shows while the CA key
    cannot be opened (it answered 503 then), and says nothing of a role it cannot read."""
    if certificate.kind not in ("route_signer", "management"):
        return None
    if from_files:
        from cryptography import x509

        from app.pki import published
        try:
            current = x509.load_pem_x509_certificate(published.certificate_pem(
                published.ROUTE_SIGNER if certificate.kind == "route_signer" else published.MANAGEMENT))
        except (published.CAUnavailable, service.CANotReady):
            return None
    else:
        loaded = service.authority()
        current = (loaded.route_signer_certificate if certificate.kind == "route_signer"
                   else loaded.management_certificate)
    return certificate.kind if current is not None and service.fingerprint(current) == certificate.sha256 else None


def regenerate_crl(*, actor: str | None = None, above: int | None = None) -> CRLState:
    """The intermediate's CRL (row INTERMEDIATE_CRL): every revoked certificate it issued. Audited as `ca.crl`
    when someone asked for it (`actor`: `flask ca init`, `flask ca crl --regenerate`, the scheduler's refresh),
    as the root's CRL is; a revocation's CRL goes without an actor, being part of the revocation it records.

    `above`: after restoring a backup, nodes may hold CRLs the restored database never saw, and take a CRL of
    the same number as not older (RFC 5280 §5.2.3), though it may lack revocations made since the backup. The
    new CRL's number is then `above + 1` (at least), skipping the numbers nodes may hold."""
    require_number_above(above, HIGHEST_ABOVE)
    serialise(crl_lock_name(INTERMEDIATE_CRL))
    revoked = db.session.execute(select(Certificate.serial, Certificate.revoked_at, Certificate.revocation_reason)
                                 .where(Certificate.revoked_at.is_not(None))).all()
    entries = [(int(serial, 16), at, reason) for serial, at, reason in revoked]
    state = _next_crl(INTERMEDIATE_CRL, current_app.config["MPIM_CRL_DAYS"],
                      lambda number, since, until: service.authority().build_crl(
                          entries, crl_number=number, this_update=since, next_update=until), above=above,
                      newest_entry=max((at for _, at, _ in entries), default=None))
    if actor is not None:
        detail = {"next_update": state.next_update, "revoked": len(entries)}
        audit.record("ca.crl", str(state.crl_number), detail | ({"above": above} if above is not None else {}),
                     actor=actor)
    return state


def regenerate_root_crl(*, root_key_path: Path | None = None, actor: str | None = None,
                        above: int | None = None) -> CRLState:
    """The root's CRL (row ROOT_CRL), signed with the root key: from the CA directory while it is
    online, else from `root_key_path` (the exported key, brought back for this). It lists the intermediates
    the root revoked (`intermediate.revoke`), so every re-signing, the scheduler's too, keeps listing them.
    `above`: as `regenerate_crl`'s, after a restore (nodes keep the root's CRL too, and take none numbered
    below the one they hold)."""
    require_number_above(above, HIGHEST_ABOVE)
    loaded = service.authority()
    root_key = loaded.load_root_key(root_key_path)
    serialise(crl_lock_name(ROOT_CRL))
    entries = [(int(serial, 16), at, reason) for serial, at, reason in db.session.execute(
        select(RevokedIntermediate.serial, RevokedIntermediate.revoked_at, RevokedIntermediate.reason))]
    state = _next_crl(ROOT_CRL, current_app.config["MPIM_ROOT_CRL_DAYS"],
                      lambda number, since, until: loaded.build_root_crl(root_key, entries, crl_number=number,
                                                                         this_update=since, next_update=until),
                      above=above, newest_entry=max((at for _, at, _ in entries), default=None))
    detail = {"next_update": state.next_update, "revoked": len(entries)}
    audit.record("ca.root_crl", str(state.crl_number), detail | ({"above": above} if above is not None else {}),
                 actor=actor)
    return state


def crl_lock_name(row_id: int) -> str:
    """Held from reading what a CRL lists until it is committed, so that two CRLs signed at once (a revocation's
    and another's, or the scheduler's refresh) are signed one after the other: the second lists what the first
    committed, under the next number. Lock order: after the key, node and certificate locks, before the routing
    table's (`revoke` takes it before a route signer's rotation publishes)."""
    return f"crl:{row_id}"


def _next_crl(row_id: int, days: int, build, *, above: int | None = None,
              newest_entry: datetime | None = None) -> CRLState:
    """Sign the next CRL of one issuer with `build(number, this_update, next_update)` and keep it; its number is
    above `above` too, when given. The caller holds `crl_lock_name(row_id)`; the row is read afresh (the session
    may hold it from before the lock).

    thisUpdate is backdated as a certificate's notBefore is (`authority.BACKDATE`): a verifier whose clock runs a
    little behind ours refused every certificate ("CRL is not yet valid") for a while after each new CRL. Never
    before the newest revocation it lists (`newest_entry`), though: a CRL states what was revoked as of its
    thisUpdate, and one listing a revocation made after it reads inconsistent to strict checkers. The CRL signed
    for a revocation thus starts about when it is signed, the scheduler's refreshes a minute back. nextUpdate
    stays `days` after signing, which the scheduler's half-time refresh reads."""
    now = utcnow().replace(microsecond=0)
    state = db.session.get(CRLState, row_id, populate_existing=True)
    number = max(state.crl_number if state else 0, above or 0) + 1
    this_update = now - BACKDATE
    if newest_entry is not None:  # CRL times are whole seconds: the entry's, cut, is at or before this
        this_update = min(now, max(this_update, newest_entry.replace(microsecond=0)))
    crl = build(number, this_update, now + timedelta(days=days))
    if state is None:
        state = CRLState(id=row_id)
        db.session.add(state)
    state.crl_number, state.this_update, state.next_update = number, this_update, crl.next_update_utc
    state.pem = crl.public_bytes(serialization.Encoding.PEM).decode()
    state.der = crl.public_bytes(serialization.Encoding.DER)
    db.session.flush()
    return state


def crl_refresh_job() -> str:
    """Scheduler job: a new CRL once half of the current one's validity has passed; the root's CRL
    too while the root key is online (offline, the dashboard warns before it runs out)."""
    if not service.is_ready():
        return "no CA"
    now = utcnow()
    done = []
    state = db.session.get(CRLState, INTERMEDIATE_CRL)
    half = timedelta(days=current_app.config["MPIM_CRL_DAYS"]) / 2
    if state is not None and state.next_update - now > half:
        done.append(f"CRL {state.crl_number} good until {state.next_update.isoformat()}")
    else:
        state = regenerate_crl(actor="scheduler")
        done.append(f"issued CRL {state.crl_number}")
    root_state = db.session.get(CRLState, ROOT_CRL)
    root_half = timedelta(days=current_app.config["MPIM_ROOT_CRL_DAYS"]) / 2
    if service.authority().root_key_online and (root_state is None or root_state.next_update - now <= root_half):
        root_state = regenerate_root_crl(actor="scheduler")
        done.append(f"issued root CRL {root_state.crl_number}")
    db.session.commit()
    return "; ".join(done)


def current_crl(which: int = INTERMEDIATE_CRL) -> CRLState:
    """The intermediate's CRL or the root's (ROOT_CRL)."""
    state = db.session.get(CRLState, which)
    if state is None:
        # No root CRL while the intermediate's exists: a CA from before root CRLs. Neither: no CA at all, and
        # `flask ca root-crl` would refuse too.
        first = which == INTERMEDIATE_CRL or db.session.get(CRLState, INTERMEDIATE_CRL) is None
        if first and service.is_ready():  # the CA directory holds a CA `flask ca init` refuses to overwrite
            from app.pki import agreement

            raise service.CANotReady(agreement.no_records_message(), code="database_mismatch")
        raise service.CANotReady("No CRL has been issued: run `flask ca init`." if first else
                                 "No root CRL has been issued: run `flask ca root-crl --root-key PATH`.")
    return state


# What the responder gives as every certificate's reason once the root revoked the intermediate for this one: a
# compromised CA key is RFC 5280's cACompromise for what the CA signed; the other reasons fit its certificates as
# they fit the CA.
CA_REVOCATION_AS_LEAF_REASON = {"key_compromise": "ca_compromise"}


def ocsp_response(request_der: bytes) -> bytes:
    """The OCSP answer (DER) about a certificate of the intermediate, signed with its key. Once the root revoked the
    intermediate (`intermediate.revoke`), every serial is answered revoked, as RFC 6960 §2.7 allows for a CA whose
    key is compromised: from the intermediate's revocation and for its reason, unless the certificate was revoked
    before on its own. A serial never issued here too (whoever holds the key mints certificates we never saw), in
    RFC 6960 §2.2's form for a non-issued certificate: certificateHold at 1970-01-01, marked as such. A
    verifier that asks OCSP and not the root's CRL then refuses what the intermediate signed, where it was told
    "good", signed with the very key the ministry declared compromised; the key signs nothing a thief holding it
    could not sign anyway."""
    from app.pki import intermediate  # it imports this module

    def lookup(serial: int) -> ocsp.CertStatus:
        row = db.session.get(Certificate, format(serial, "x"))
        revoked_ca = intermediate.revocation_of_current()
        if revoked_ca is not None and row is None:
            return ocsp.CertStatus.revoked_non_issued()
        if revoked_ca is not None and (row.revoked_at is None or row.revoked_at > revoked_ca.revoked_at):
            return ocsp.CertStatus("revoked", revoked_ca.revoked_at,
                                   CA_REVOCATION_AS_LEAF_REASON.get(revoked_ca.reason, revoked_ca.reason))
        if row is None:
            return ocsp.CertStatus("unknown")
        if row.revoked_at is not None:
            return ocsp.CertStatus("revoked", row.revoked_at, row.revocation_reason)
        return ocsp.CertStatus("good")

    loaded = service.authority()
    return ocsp.respond(request_der, lookup, issuer=loaded.intermediate_certificate,
                        signing_key=loaded.intermediate_key)
