"""The CRLs a `Node` checks routing tables against (docs/protocol.md §4): the intermediate's (`/ca/crl.crl`, kept
in `tls/crl.crl`), which the route signer must not be on, and the root's (`/ca/root-crl.crl`, kept in
`tls/root-crl.crl`), which the intermediate must not be on. Each is fetched with the ETag of the one kept, given to
the route client, kept when the route client takes it, and shown by `status`.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from app.appnode.registry import RegistryError, write_atomic
from app.pki.crl import entity_tag_of
from app.routing.verification import RouteRejected

log = logging.getLogger("mpim.appnode")

# A CRL is fetched again after this long (docs/protocol.md §2: at least hourly); the intermediate's also before its
# nextUpdate, and both whenever the table names a signer the node does not hold.
REVOCATION_LIST_INTERVAL = 3600.0


class RevocationListsMixin:
    """The CRLs of a `Node`. Relies on the node's `identity` and `registry`, and on `routes` (RouteTableMixin)."""

    def _refresh_revocation_lists(self, *, force: bool = False, chain_pem: bytes | None = None) -> None:
        """Both CRLs when due (or `force`); `chain_pem`: intermediates fetched beside a rotated signer, which the
        intermediate's CRL may come from (the route client takes only those chaining to the root held)."""
        self._refresh_revocation_list(force=force, chain_pem=chain_pem)
        self._refresh_root_revocation_list(force=force)

    def _refresh_revocation_list(self, *, force: bool = False, chain_pem: bytes | None = None) -> None:
        """Fetch the intermediate's CRL for the route client when it is due (or `force`), and keep it in
        `tls/crl.crl`. A CRL that cannot be fetched or is not taken is logged and changes nothing: the table held
        stays in use, and a new one is taken only while the CRL held is current (docs/protocol.md §4).

        It asks with the ETag of the CRL kept (If-None-Match; the ETag is a function of its bytes), and a 304 is
        that CRL served again: given to the route client as a 200 of it would be, and a fetch as far as the hour
        goes. It makes the CRL no fresher than its nextUpdate: past that, new tables are still refused
        (`revocation_unknown`), and the node asks again at every pull until the management node issues another."""
        if force or self._revocation_list_due():
            self._fetch_revocation_list(self.identity.crl_file, of_root=False, chain_pem=chain_pem)

    def _refresh_root_revocation_list(self, *, force: bool = False) -> None:
        """Fetch the root's CRL, as `_refresh_revocation_list` does the intermediate's, into `tls/root-crl.crl`:
        hourly, not by its nextUpdate, since a root whose key is offline may serve one long past it, and asking at
        every pull would only get that one again. Without one, or with one past its nextUpdate, new tables are
        still taken (`status` warns); what the one held lists is refused whatever its age."""
        if force or _age(self.identity.root_crl_file) >= REVOCATION_LIST_INTERVAL:
            self._fetch_revocation_list(self.identity.root_crl_file, of_root=True)

    def _fetch_revocation_list(self, kept_file: Path, *, of_root: bool, chain_pem: bytes | None = None) -> None:
        what = "the root's CRL the intermediate" if of_root else "the CRL the route signer"
        try:
            kept = kept_file.read_bytes()
        except OSError:  # none yet (or unreadable): the CRL in full
            kept = None
        try:
            fetched = self.registry.fetch_crl(entity_tag_of(kept) if kept else None, root=of_root)
            data = kept if fetched is None else fetched
            chain = self.identity.chain_file.read_bytes() + (b"\n" + chain_pem if chain_pem else b"")
            taken = self.routes.use_revocation_list(data, chain, of_root=of_root)
        except (RegistryError, RouteRejected) as error:
            log.warning("%s is checked against was not refreshed: %s", what, error.message)
            return
        try:
            if taken and fetched is not None:
                write_atomic(kept_file, data)
            elif kept_file.exists():
                os.utime(kept_file)  # fetched now; the one kept is newer, or is the one served (304)
        except OSError as error:  # the route client holds it: only a restart would do without it
            log.warning("the CRL fetched could not be kept in %s: %s", kept_file, error)

    def held_revocation_list(self) -> dict | None:
        """The CRL kept in `tls/crl.crl`, for `status`: its number and times, and whether it is still current (past
        its nextUpdate, new tables are refused as `revocation_unknown`). None when none is kept or it is unreadable."""
        held = _read(self.identity.crl_file)
        return _described(held) if held is not None else None

    def held_root_revocation_list(self) -> dict | None:
        """The root's CRL kept in `tls/root-crl.crl`, for `status`, as `held_revocation_list`, and whether it lists
        an intermediate of `tls/chain.pem` (new tables signed through it are refused as `intermediate_revoked`).
        Past its nextUpdate it is still used; None when none is kept or it is unreadable."""
        held = _read(self.identity.root_crl_file)
        if held is None:
            return None
        try:
            chain = x509.load_pem_x509_certificates(self.identity.chain_file.read_bytes())
        except (OSError, ValueError):
            chain = []
        revoked = any(ca.issuer == held.issuer and held.get_revoked_certificate_by_serial_number(ca.serial_number)
                      is not None for ca in chain)
        return {**_described(held), "intermediate_revoked": revoked}

    def _revocation_list_due(self) -> bool:
        next_update = self.routes.revocation_list_next_update
        return (_age(self.identity.crl_file) >= REVOCATION_LIST_INTERVAL or next_update is None
                or next_update <= self.routes.now())


def _age(path: Path) -> float:
    """Seconds since `path` was last fetched (written or touched); infinite when there is none."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def _read(path: Path) -> x509.CertificateRevocationList | None:
    try:
        held = x509.load_der_x509_crl(path.read_bytes())
        held.extensions.get_extension_for_class(x509.CRLNumber)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return None
    return held


def _described(held: x509.CertificateRevocationList) -> dict:
    next_update = held.next_update_utc
    return {"number": held.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number,
            "this_update": held.last_update_utc.isoformat(),
            "next_update": next_update.isoformat() if next_update else None,
            "current": next_update is not None and next_update > datetime.now(UTC)}
