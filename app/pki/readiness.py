"""Whether this process can sign with the CA: for /healthz, the console's warning and the start-up log.

A wrong passphrase (or an unreadable key file) used to show only when the first issuance, revocation
or OCSP request failed. `condition()` says it at once, and cheaply enough to be asked on every
/healthz probe and every console page:

* once the CA is loaded (`service.authority()`, cached per app) it is "ok" without touching a file:
  this process signs with the keys it holds;
* a failed load is remembered with what it depended on (the CA files' identities and the
  passphrase) and tried again only when one of them changes: a corrected passphrase file, a key
  restored or its permissions fixed, a share mounted again. A failure that heals without any such
  change (a passing I/O error) is seen by the next request that needs the CA, which loads it again
  and caches it, and then by `condition()`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Literal

from flask import current_app
from flask_babel import LazyString

from app.i18n import english
from app.pki import authority as ca
from app.pki import keys, service

State = Literal["ok", "not_initialised", "files_missing", "passphrase_missing", "key_unreadable"]
# What `Authority.load` reads: a change to any of them may turn a failure into a success.
LOADED_FILES = ("root.pem", "intermediate.pem", "intermediate.key", "route-signer.pem", "route-signer.key",
                "management.pem", "management.key")
FAILURE = "mpim_ca_failure"  # app.extensions key: (what the failed load depended on, its condition)


@dataclass(frozen=True)
class Condition:
    """`state` is what /healthz shows; `reason` (naming the file) is for the log, in English, and for
    ministry admins, in their language (a lazy translation), not for anonymous callers of /healthz."""

    state: State
    reason: str | LazyString = ""

    @property
    def serving(self) -> bool:
        """False when this instance should not get traffic: its CA exists but it cannot sign with it.
        "not_initialised" is the state of every instance before `flask ca init`: nothing to route around."""
        return self.state in ("ok", "not_initialised")


OK = Condition("ok")


def condition() -> Condition:
    """This process's CA: "ok" (it can sign; the root key may be offline, the intermediate issues),
    "not_initialised" (no `flask ca init` yet), "files_missing" (the database holds the CA's CRL but the
    CA directory has no intermediate certificate: an unmounted share, a wrong MPIM_CA_DIR),
    "passphrase_missing" or "key_unreadable" (a wrong passphrase, a key or certificate file that cannot be read)."""
    if service.authority_loaded():
        return OK
    app = current_app._get_current_object()
    directory = service.ca_directory()
    if not ca.is_initialised(directory):
        return Condition("files_missing" if service.database_holds_ca() else "not_initialised",
                         service.missing_ca_message())
    depends_on = _what_loading_depends_on(directory)
    remembered = app.extensions.get(FAILURE)
    if remembered is not None and remembered[0] == depends_on:
        return remembered[1]
    try:
        service.authority()
    except service.CANotReady as error:  # no passphrase (the directory was checked above)
        found = Condition("passphrase_missing", error.message)
    except keys.CAKeyUnreadable as error:
        found = Condition("key_unreadable", error.message)
    else:
        app.extensions.pop(FAILURE, None)
        return OK
    app.extensions[FAILURE] = (depends_on, found)
    return found


def _what_loading_depends_on(directory) -> tuple:
    """The identity of every file the CA is loaded from (ctime too: chmod and chown change only it)
    and a digest of the passphrase (MPIM_CA_PASSPHRASE_FILE is read again on each load)."""
    def identity(name: str) -> tuple | str:
        try:
            status = os.stat(directory / name)
        except OSError as error:
            return type(error).__name__
        return (status.st_dev, status.st_ino, status.st_mode, status.st_mtime_ns, status.st_ctime_ns,
                status.st_size)

    try:
        passphrase = hashlib.sha256(service.passphrase()).hexdigest()
    except service.CANotReady:
        passphrase = None
    return tuple(identity(name) for name in LOADED_FILES), passphrase


def health_check() -> tuple[str, bool, str]:
    """`console.health_checks`' "ca": /healthz and the start-up log. A CA this process can sign with whose
    intermediate the root revoked is "intermediate_revoked", not serving: nothing it signs is worth anything.
    One the database does not know (a database and a CA directory restored from different moments, or of
    different registries: `agreement`) is "database_mismatch", not serving: what it signs cannot be listed
    or revoked here."""
    from app.pki import agreement, intermediate

    found = condition()
    if found.state == "ok":
        mismatch = agreement.mismatch()
        if mismatch:
            return "database_mismatch", False, " ".join(english(reason) for reason in mismatch)
        revoked = intermediate.revocation_of_current()
        if revoked is not None:
            return "intermediate_revoked", False, english(intermediate.revoked_message(revoked))
        # Past its end every issuance fails with ca_expired: judged by the clock the authority issues by.
        loaded = service.authority()
        end = loaded.intermediate_certificate.not_valid_after_utc
        if end <= loaded.clock():
            return "intermediate_expired", False, f"The intermediate CA certificate expired on {end.isoformat()}."
    return found.state, found.serving, english(found.reason)
