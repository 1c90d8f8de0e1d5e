"""The management node's own keys: the route signer (routing tables) and its TLS identity (health polls).

Both renew themselves in the last third of their lifetime (`service_renewal_job`) and are replaced at
once when revoked; the CA certificates above them only warn, long before they expire. A route signer
in use whose certificate is revoked all the same (a CA directory restored from a backup taken before
the revocation, a replacement committed whose files could not be put in place), or expired (the scheduler
did not run), signs no routing table, which every node would refuse: /healthz and the console say so, and
`service_renewal_job` replaces it.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import NamedTuple

from flask_babel import LazyString, gettext, ngettext
from flask_babel import lazy_gettext as _l
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import event, select
from sqlalchemy.orm import Session, SessionTransaction

from app.database import utcnow
from app.errors import DomainError
from app.extensions import db
from app.i18n import local_time
from app.pki import authority, service
from app.pki.authority import ServiceRole, StagedServicePair, discard_service_pair
from app.pki.models import ROOT_CRL, Certificate, CRLState

ROOT_CRL_WARNING_DAYS = 60
# session.info: the (authority, staged pair) of each rotation in the transaction, installed once it commits.
STAGED = "mpim_staged_service_pairs"
log = logging.getLogger(__name__)


class RouteSignerUnusable(DomainError):
    """No routing table is signed with the route signer in use until it is replaced: nodes would refuse it."""

    state = "unusable"  # what /healthz says of it
    status = 503


class RouteSignerRevoked(RouteSignerUnusable):
    code = "route_signer_revoked"
    state = "revoked"


class RouteSignerExpired(RouteSignerUnusable):
    code = "route_signer_expired"
    state = "expired"


def route_signer():
    """(signing key, certificate) for routing tables: the pair this transaction rotated to, if it did (its
    tables are signed with the key they name), else the pair in use."""
    staged = _staged_in_transaction("route-signer")
    if staged is not None:
        return staged.key.signer(), staged.certificate
    loaded = service.authority()
    return loaded.route_signer_key.signer(), loaded.route_signer_certificate


def route_signer_certificate():
    """The route signer's certificate as `route_signer` has it, opening no key: verifying a table needs only the
    certificate, and works while the CA key cannot be opened."""
    staged = _staged_in_transaction("route-signer")
    if staged is not None:
        return staged.certificate
    directory = service.ca_directory()
    if not authority.is_initialised(directory):
        raise service.CANotReady(service.missing_ca_message())
    return authority.service_certificate(directory, "route-signer")


def route_signer_to_sign_with():
    """`route_signer()`, refused while its certificate is revoked (RouteSignerRevoked: nodes check the signer
    against the CRL and would refuse every table it signs, and a table signed with a key that may have leaked
    is worth nothing) or has expired (RouteSignerExpired: nodes refuse a table whose signer has ended)."""
    key, certificate = route_signer()
    problem = route_signer_problem(certificate)
    if problem is not None:
        raise problem
    return key, certificate


def route_signer_problem(certificate) -> RouteSignerUnusable | None:
    """Why the route signer `certificate` may sign no table, or None: revoked, else expired."""
    row = revoked_row(certificate)
    if row is not None:
        return RouteSignerRevoked(revoked_route_signer_message(row))
    end = certificate.not_valid_after_utc
    if end <= utcnow():
        return RouteSignerExpired(_l(
            "The route signer in use (certificate %(serial)s) expired on %(date)s: nodes refuse every routing table "
            "it signs, so none is signed or published. Run `flask ca rotate-route-signer` (the scheduler's "
            "ca.service_renewal job does within the hour).", serial=format(certificate.serial_number, "x"),
            date=local_time(end, "%Y-%m-%d %H:%M")))
    return None


def revoked_row(certificate) -> Certificate | None:
    """The certificate's row if it is revoked, read from the database (another process may have revoked it)."""
    return db.session.scalar(select(Certificate).where(Certificate.serial == format(certificate.serial_number, "x"),
                                                       Certificate.revoked_at.is_not(None)))


def revoked_route_signer_message(row: Certificate) -> LazyString:
    return _l("The route signer in use (certificate %(serial)s) is revoked: nodes refuse every routing table it "
              "signs, so none is signed or published. Run `flask ca rotate-route-signer` (the scheduler's "
              "ca.service_renewal job does within the hour).", serial=row.serial)


def health_check() -> tuple[str, bool, str]:
    """`console.health_checks`' "route_signer": "revoked" or "expired" (not serving: no table can be published
    here) while the signer in use is, else "ok"; "unknown" while this process cannot open the CA ("ca" says
    why)."""
    from app.i18n import english
    from app.pki import readiness

    if readiness.condition().state != "ok":
        return "unknown", True, ""
    problem = route_signer_problem(route_signer()[1])
    return ("ok", True, "") if problem is None else (problem.state, False, english(problem.message))


class Rotation(NamedTuple):
    certificate: Certificate  # the new pair's
    recorded: Certificate | None  # the replaced pair's, recorded now: the database did not know it (`agreement`)


def rotate(kind: str, *, actor: str) -> Rotation:
    """A new pair for "route_signer" (the routing table is then re-signed with it: `route_signer_changed`) or
    "management" (health polling picks it up on its next round). The pair replaces the one in use only when
    the transaction commits (`_rotate`)."""
    rotation = _rotate("route-signer" if kind == "route_signer" else "management", kind, actor)
    if kind == "route_signer":
        for hook in service.route_signer_changed:
            hook(actor)
    return rotation


def rotate_route_signer(*, actor: str) -> Certificate:
    return rotate("route_signer", actor=actor).certificate


def rotate_management_certificate(*, actor: str) -> Certificate:
    return rotate("management", actor=actor).certificate


def _rotate(role: ServiceRole, kind: str, actor: str) -> Rotation:
    """Stage a new pair and record its certificate. Its files go in place of the pair in use after the commit
    (`_install_committed`), so a commit that fails leaves the pair in use where it was, on disk and in every
    process, instead of a key the database never recorded; the staged files are then removed
    (`_discard_uncommitted`). The outermost transaction decides: no caller rotates inside a savepoint.

    The pair in use is recorded first when the database does not know it (one restored from a backup taken
    before it was made, beside the CA directory kept): it was issued and may be in nodes' hands, so it must be
    listed, and revocable if its key leaked. Refused (503 database_mismatch) with a database that is not the
    CA directory's: a row there would claim for its CA a certificate another CA issued."""
    from app.pki import agreement, intermediate

    intermediate.require_not_revoked()  # nodes would refuse the new pair as what it replaces
    loaded = service.authority()
    other_ca = agreement.other_ca_reason(loaded.intermediate_certificate)
    if other_ca is not None:
        raise service.CANotReady(other_ca, code="database_mismatch")
    db.session.connection()  # begin the transaction the staged pair belongs to
    in_use = loaded.route_signer_certificate if role == "route-signer" else loaded.management_certificate
    recorded = None
    if db.session.get(Certificate, format(in_use.serial_number, "x")) is None:
        recorded = service.store(in_use, kind, None, actor, action="certificate.record",
                                 issued_at=in_use.not_valid_before_utc)
    staged = loaded.stage_service_pair(role)
    db.session.info.setdefault(STAGED, []).append((loaded, staged))
    return Rotation(service.store(staged.certificate, kind, None, actor), recorded)


def _staged_in_transaction(role: ServiceRole) -> StagedServicePair | None:
    for _, staged in reversed(db.session.info.get(STAGED, ())):
        if staged.role == role:
            return staged
    return None


def _install_committed(session: Session) -> None:
    """After commit: the database knows the new certificates, so their pairs go in place. A failure here cannot
    undo the commit: it is logged with the staged files' names, which are left for the operator."""
    if session.in_nested_transaction():  # a savepoint released: the outermost transaction has not committed
        return
    for loaded, staged in session.info.pop(STAGED, ()):
        try:
            loaded.install_service_pair(staged)
        except OSError:
            log.exception("the %s pair %s was committed but could not be put in place; its files are %s and %s",
                          staged.role, format(staged.certificate.serial_number, "x"), staged.key_path,
                          staged.certificate_path)


def _discard_uncommitted(session: Session, transaction: SessionTransaction) -> None:
    """The outermost transaction ended without a commit (after one, `_install_committed` took the pairs)."""
    if transaction.parent is None:
        for _, staged in session.info.pop(STAGED, ()):
            discard_service_pair(staged)


event.listen(FlaskSession, "after_commit", _install_committed)
event.listen(FlaskSession, "after_transaction_end", _discard_uncommitted)


def service_certificates_due(now: datetime | None = None) -> list[str]:
    """The management node's own certificates in the last third of their lifetime, or revoked while in use."""
    now = now or utcnow()
    loaded = service.authority()
    due = []
    for role, certificate in (("route-signer", loaded.route_signer_certificate),
                              ("management", loaded.management_certificate)):
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        if certificate.not_valid_after_utc - now <= lifetime / 3 or revoked_row(certificate) is not None:
            due.append(role)
    return due


def service_renewal_job() -> str:
    """Scheduler job: renew the route signer and the management node's TLS certificate in the last
    third of their lifetime, so neither runs out unnoticed (an expired route signer would make every
    node refuse the routing table), and replace one in use that is revoked (nodes refuse what it signs)."""
    if not service.is_ready():
        return "no CA"
    due = service_certificates_due()
    for role in due:
        if role == "route-signer":
            rotate_route_signer(actor="scheduler")
        else:
            rotate_management_certificate(actor="scheduler")
    db.session.commit()
    return f"renewed {', '.join(due)}" if due else "nothing due"


def present_management_identity(context) -> None:
    """Load the management node's TLS certificate and key into `context` (an `ssl.SSLContext`), under
    the rotation lock: a renewal in another process never hands us its new key beside the old certificate."""
    directory = service.ca_directory()
    with service.authority().service_files_settled():
        context.load_cert_chain(directory / "management.pem", directory / "management.key",
                                password=service.passphrase())


def management_client_ssl_context():
    """TLS context for polling nodes: trusts our CA, presents the management node's certificate."""
    import ssl

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=service.authority().chain_pem().decode())
    present_management_identity(context)
    return context


def expiry_warnings(now: datetime | None = None) -> list[str]:
    """Long before a CA certificate expires: a year for the root, half a year for the intermediate."""
    if not service.is_ready():
        return []
    now = now or utcnow()
    loaded = service.authority()
    warnings = []
    # The route signer and the management certificate renew themselves in their last third
    # (`service_renewal_job`); a warning for them means the scheduler is not running.
    for certificate, end, horizon in ((_l("root CA certificate"), loaded.root_certificate.not_valid_after_utc, 365),
                                      (_l("intermediate CA certificate"),
                                       loaded.intermediate_certificate.not_valid_after_utc, 180),
                                      (_l("route signer certificate"),
                                       loaded.route_signer_certificate.not_valid_after_utc, 30),
                                      (_l("management node TLS certificate"),
                                       loaded.management_certificate.not_valid_after_utc, 30)):
        date = local_time(end, "%Y-%m-%d %H:%M")
        if end <= now:  # said as what happened, not as "expires in 0 days" for ever after
            warnings.append(gettext("The %(certificate)s expired on %(date)s.", certificate=certificate, date=date))
        elif end - now < timedelta(days=1):
            warnings.append(gettext("The %(certificate)s expires within a day (%(date)s).",
                                    certificate=certificate, date=date))
        elif end - now < timedelta(days=horizon):
            warnings.append(ngettext("The %(certificate)s expires in %(num)s day (%(date)s).",
                                     "The %(certificate)s expires in %(num)s days (%(date)s).", (end - now).days,
                                     certificate=certificate, date=date))
    root_crl = db.session.get(CRLState, ROOT_CRL)
    said = _root_crl_warning(root_crl.next_update, now) if root_crl is not None else None
    return warnings + ([said] if said else [])


def _root_crl_warning(next_update: datetime, now: datetime) -> str | None:
    """The root CRL's end, said as `expiry_warnings` says a certificate's, with the way to sign it again."""
    date, left = local_time(next_update, "%Y-%m-%d %H:%M"), next_update - now
    if left <= timedelta(0):
        return gettext("The root CRL ran out on %(date)s: run `flask ca root-crl --root-key FILE` with the root key "
                       "kept offline (or `flask ca root-crl` with it back in the CA directory).", date=date)
    if left < timedelta(days=1):
        return gettext("The root CRL runs out within a day (%(date)s): run `flask ca root-crl --root-key FILE` with "
                       "the root key kept offline (or `flask ca root-crl` with it back in the CA directory).",
                       date=date)
    if left < timedelta(days=ROOT_CRL_WARNING_DAYS):
        return ngettext("The root CRL runs out in %(num)s day (%(date)s): run `flask ca root-crl --root-key FILE` "
                        "with the root key kept offline (or `flask ca root-crl` with it back in the CA directory).",
                        "The root CRL runs out in %(num)s days (%(date)s): run `flask ca root-crl --root-key FILE` "
                        "with the root key kept offline (or `flask ca root-crl` with it back in the CA directory).",
                        left.days, date=date)
    return None
