"""The issuing CA revoked by the root (`flask ca revoke-intermediate`): what to do when the intermediate's key
leaks. The root's CRL lists it (`revocation.regenerate_root_crl` reads `RevokedIntermediate`), every node then
refuses routing tables signed through it (docs/protocol.md, "the root's CRL"), and this CA signs no certificate
with it again: whatever it signs is worthless. There is no way back: recovery is a new CA (docs/operations.md).
"""

from __future__ import annotations

from pathlib import Path

from flask_babel import LazyString
from flask_babel import lazy_gettext as _l

from app.audit import service as audit
from app.database import serialise, utcnow
from app.errors import Conflict, DomainError, PermissionDenied, ValidationFailed
from app.extensions import db
from app.pki import revocation, service
from app.pki.models import INTERMEDIATE_REVOCATION_REASONS, ROOT_CRL, RevokedIntermediate


class IntermediateRevoked(DomainError):
    """Issuance refused: the certificate would chain through an intermediate every node refuses. 503, as
    `CAExpired`: no request can succeed until there is a new CA."""

    code = "intermediate_revoked"
    status = 503


def check_reason(reason: str) -> None:
    """Refuse a reason that does not fit a CA certificate, before anything is asked or signed."""
    if reason not in INTERMEDIATE_REVOCATION_REASONS:
        raise ValidationFailed(
            f"{reason!r} is not a reason to revoke the issuing CA: use one of "
            f"{', '.join(INTERMEDIATE_REVOCATION_REASONS)}.", code="invalid_reason", field="reason")


def revoke(reason: str, *, by=None, root_key_path: Path | None = None, above: int | None = None) -> RevokedIntermediate:
    """Record the intermediate in use as revoked and sign the root's CRL listing it, with the root key from the
    CA directory or `root_key_path` (as `flask ca root-crl`). `by`: the console user acting, else the operator on
    the server ("cli"). Final: nothing takes it off the root's CRL. `above`: as `regenerate_root_crl`'s, when a
    restored database forgot the revocation nodes hold."""
    if by is not None and by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    check_reason(reason)
    certificate = service.authority().intermediate_certificate
    serial = format(certificate.serial_number, "x")
    serialise(revocation.crl_lock_name(ROOT_CRL))  # two operators at once: one revokes, the other is told
    if db.session.get(RevokedIntermediate, serial, populate_existing=True) is not None:
        raise Conflict(f"The issuing CA {serial} is revoked already.", code="already_revoked")
    actor = by.username if by is not None else "cli"
    row = RevokedIntermediate(serial=serial, subject=certificate.subject.rfc4514_string()[:300],
                              sha256=service.fingerprint(certificate), reason=reason, revoked_at=utcnow(),
                              revoked_by=actor)
    db.session.add(row)
    db.session.flush()
    audit.record("ca.revoke_intermediate", serial, {"reason": reason, "subject": row.subject, "sha256": row.sha256},
                 actor=actor)
    revocation.regenerate_root_crl(root_key_path=root_key_path, actor=actor, above=above)  # a wrong key: undone
    return row


def revocation_of_current() -> RevokedIntermediate | None:
    """The revocation of the intermediate this CA signs with, if the root revoked it."""
    return db.session.get(RevokedIntermediate, format(service.authority().intermediate_certificate.serial_number,
                                                      "x"))


def revoked_message(row: RevokedIntermediate) -> LazyString:
    return _l("The issuing CA (intermediate) is revoked on the root's CRL (certificate %(serial)s, %(reason)s): "
              "every node refuses new routing tables signed through it, and no certificate is issued or renewed. "
              "Recovery is a new CA: see the operations guide.", serial=row.serial, reason=row.reason)


def require_not_revoked() -> None:
    """Before signing a certificate with the intermediate."""
    row = revocation_of_current()
    if row is not None:
        raise IntermediateRevoked(revoked_message(row))
