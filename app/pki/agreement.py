"""Whether the database and the CA directory are of the same registry and the same moment.

They are backed up apart (a database dump, a copy of MPIM_CA_DIR), so a restore can put them together from
different moments: a database restored alone from a backup taken before the route signer was rotated does not
know the signer in use, which `flask ca list` then leaves out and `flask ca revoke` cannot find (the answer to
its key leaking); an empty database, or another registry's, beside a CA directory knows none of its CA. Each
of the CA directory's certificates must be the database's: the intermediate, as the issuer of the CRL the
database keeps (it has no row: it issues them), the route signer and the management certificate by their rows.

`mismatch()` is asked by /healthz and the console's banner: a match is compared again once a minute per process,
and at once when the loaded CA's certificates change (a rotation by another process), so a probe costs no query;
a mismatch is compared again at every probe, so the moment it is mended shows.
"""

from __future__ import annotations

import time

from cryptography import x509
from flask import current_app
from flask_babel import LazyString
from flask_babel import lazy_gettext as _l
from sqlalchemy import select

from app.extensions import db
from app.pki import authority as ca
from app.pki import service
from app.pki.models import INTERMEDIATE_CRL, Certificate, CRLState

COMPARED = "mpim_ca_agreement"  # app.extensions key: (the loaded CA's serials, when compared, the mismatch found)
RECHECK_SECONDS = 60


def mismatch() -> tuple[LazyString, ...]:
    """Why the CA directory and the database do not belong together, one reason per certificate (none: they
    do). Asked only of a CA this process has loaded (`readiness.condition()` is "ok"). Lazy translations, so
    each reader gets their own language from the one comparison."""
    loaded = service.authority()
    serials = tuple(certificate.serial_number for certificate in (
        loaded.intermediate_certificate, loaded.route_signer_certificate, loaded.management_certificate))
    app = current_app._get_current_object()
    remembered = app.extensions.get(COMPARED)
    now = time.monotonic()
    # A match is kept for a minute; a mismatch is compared again at every probe: `flask ca init` writes the CA
    # directory before it commits the CRL and rows, and a probe in between must not keep "no record" a minute.
    if (remembered is not None and remembered[0] == serials and not remembered[2]
            and now - remembered[1] < RECHECK_SECONDS):
        return remembered[2]
    found = _compare(loaded)
    app.extensions[COMPARED] = (serials, now, found)
    return found


def _compare(loaded: ca.Authority) -> tuple[LazyString, ...]:
    other_ca = other_ca_reason(loaded.intermediate_certificate)
    if other_ca is not None:
        return (other_ca,)  # the service certificates are another CA's too: one reason says it
    in_use = {"route-signer.pem": loaded.route_signer_certificate, "management.pem": loaded.management_certificate}
    known = dict(db.session.execute(select(Certificate.serial, Certificate.sha256).where(
        Certificate.serial.in_([format(certificate.serial_number, "x") for certificate in in_use.values()]))).all())
    return tuple(unrecorded_message(name, certificate) for name, certificate in in_use.items()
                 if known.get(format(certificate.serial_number, "x")) != service.fingerprint(certificate))


def other_ca_reason(intermediate: x509.Certificate) -> LazyString | None:
    """Why the database is not the intermediate's (it holds no CRL, or one another CA signed), or None. A
    rotation asks it too: it would record a certificate the database's CA never issued."""
    return issuer_reason(intermediate, db.session.scalar(select(CRLState.der).where(CRLState.id == INTERMEDIATE_CRL)))


def issuer_reason(intermediate: x509.Certificate, der: bytes | None) -> LazyString | None:
    """`other_ca_reason` for a database whose CRL (DER; None: it holds none) is `der`: `flask db-restore` asks it of
    a backup before putting it in place."""
    serial = format(intermediate.serial_number, "x")
    directory = str(service.ca_directory())
    if der is None:
        return _l("%(directory)s holds a CA (intermediate %(serial)s), but the database holds no record of it: it "
                  "is empty, or another registry's. %(remedy)s", directory=directory, serial=serial,
                  remedy=restore_remedy())
    try:
        signed_by_it = x509.load_der_x509_crl(der).is_signature_valid(intermediate.public_key())
    except (ValueError, TypeError):
        signed_by_it = False
    if signed_by_it:
        return None
    return _l("The database's CRL was signed by another issuing CA than intermediate.pem in %(directory)s "
              "(certificate %(serial)s): the database and the CA directory are of different registries. "
              "%(remedy)s", directory=directory, serial=serial, remedy=restore_remedy())


def restore_remedy() -> LazyString:
    return _l("Restore the database backed up with this CA directory, or set MPIM_CA_DIR to the CA directory of "
              "this database (docs/operations.md, \"CA keys and rotation\").")


def no_records_message() -> LazyString:
    """For `flask ca crl`, /ca/crl.crl and `flask ca init` while the CA directory holds a CA the database does
    not know: "run `flask ca init`" sent the operator to a command that refuses, as it must."""
    return _l("The CA directory holds a CA, but the database holds no record of it (no CRL): the database is "
              "empty, or another registry's. %(remedy)s", remedy=restore_remedy())


def unrecorded_message(name: str, certificate: x509.Certificate) -> LazyString:
    serial = format(certificate.serial_number, "x")
    if name == "route-signer.pem":
        return _l("The route signer in use, route-signer.pem (certificate %(serial)s), is not in the database: the "
                  "database is older than the CA directory (restored alone from a backup taken before the signer was "
                  "rotated). Nodes accept the tables it signs, but it cannot be listed or revoked here. Run `flask ca "
                  "rotate-route-signer`: it records this certificate and replaces it; revoke it then (`flask ca "
                  "revoke %(serial)s`) if its key may have leaked.", serial=serial)
    return _l("The management node's TLS certificate in use, management.pem (certificate %(serial)s), is not in the "
              "database: the database is older than the CA directory (restored alone from a backup taken before "
              "the certificate was renewed). It cannot be listed or revoked here. Run `flask ca "
              "rotate-management-certificate`: it records this certificate and replaces it; revoke it then (`flask "
              "ca revoke %(serial)s`) if its key may have leaked.", serial=serial)
