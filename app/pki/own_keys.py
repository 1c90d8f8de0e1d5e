"""The management node's own keys: the route signer (routing tables) and its TLS identity (health polls).

Both renew themselves in the last third of their lifetime (`service_renewal_job`) and are replaced at
once when revoked; the CA certificates above them only warn, long before they expire.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from flask_babel import lazy_gettext as _l

from app.database import utcnow
from app.extensions import db
from app.pki import service
from app.pki.models import ROOT_CRL, Certificate, CRLState

ROOT_CRL_WARNING_DAYS = 60

def route_signer():
    """(signing key, certificate) for routing tables."""
    loaded = service.authority()
    return loaded.route_signer_key.signer(), loaded.route_signer_certificate


def rotate_route_signer(*, actor: str) -> Certificate:
    """A new route-signing pair; the routing table is then re-signed with it (`route_signer_changed`)."""
    certificate = service.authority().create_service_certificate("route-signer")
    row = service.store(certificate, "route_signer", None, actor)
    for hook in service.route_signer_changed:
        hook(actor)
    return row


def rotate_management_certificate(*, actor: str) -> Certificate:
    """A new TLS identity for the management node (health polling picks it up on its next round)."""
    return service.store(service.authority().create_service_certificate("management"), "management", None, actor)


def service_certificates_due(now: datetime | None = None) -> list[str]:
    """The management node's own certificates in the last third of their lifetime."""
    now = now or utcnow()
    loaded = service.authority()
    due = []
    for role, certificate in (("route-signer", loaded.route_signer_certificate),
                              ("management", loaded.management_certificate)):
        lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
        if certificate.not_valid_after_utc - now <= lifetime / 3:
            due.append(role)
    return due


def service_renewal_job() -> str:
    """Scheduler job: renew the route signer and the management node's TLS certificate in the last
    third of their lifetime, so neither runs out unnoticed (an expired route signer would make every
    node refuse the routing table)."""
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
    for label, certificate, horizon in ((_l("root CA"), loaded.root_certificate, 365),
                                        (_l("intermediate CA"), loaded.intermediate_certificate, 180),
                                        (_l("route signer"), loaded.route_signer_certificate, 30),
                                        (_l("management node TLS"), loaded.management_certificate, 30)):
        left = certificate.not_valid_after_utc - now
        if left < timedelta(days=horizon):
            warnings.append(_l("The %(label)s certificate expires in %(days)s days (%(date)s).", label=label,
                               days=max(0, left.days), date=certificate.not_valid_after_utc.date().isoformat()))
    root_crl = db.session.get(CRLState, ROOT_CRL)
    if root_crl is not None and root_crl.next_update - now < timedelta(days=ROOT_CRL_WARNING_DAYS):
        warnings.append(_l("The root CRL runs out in %(days)s days (%(date)s): bring the root key online and run "
                           "`flask ca root-crl`.", days=max(0, (root_crl.next_update - now).days),
                           date=root_crl.next_update.date().isoformat()))
    return warnings
