"""SPEC §5 on the application node: accept a pulled routing table only after TUF's order of checks.

Size first (before parsing), then the signer certificate (its chain, and its issuer's CRL:
client_revocation.py) and the signature over the exact body bytes, then the version (no rollback),
then `expires_at` (no freeze), then the contents, and only then is a delta applied and the new table
written to storage. A rejected table changes nothing.
A client with storage also follows that file: a newer table another process (the node's CLI) stored
there is adopted before the next lookups, under the same rules, as on a restart. A stored table is
verified again from the signed documents stored with it (`app.routing.storage`); one that fails, that
an older version stored without them, or that does not read at all, is logged and passed over, and the next
pull replaces it.
Accepting holds a lock file beside it (POSIX `flock`) from reading the stored version to writing, so the
server and the CLI accepting at the same moment cannot leave the older of their two tables stored.
This module orders the checks and holds the accepted table; the checks of one signed document are in
verification.py, and loading and following the stored table in client_storage.py.
"""

from __future__ import annotations

import copy
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509

from app.errors import DomainError
from app.routing import document as route_document
from app.routing.client_revocation import RevocationMixin
from app.routing.client_storage import StoredTableMixin
from app.routing.document import ROUTE_SIGNER_USAGE, MalformedDocument
from app.routing.storage import FileIdentity, SignedDocument
from app.routing.verification import (
    Certificates,
    RouteRejected,
    VerificationMixin,
    _documents_after,
    _Held,
    _load_certificates,
)

DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
DEFAULT_STORAGE_CHECK_INTERVAL = 1.0
# A pull asks for the full table instead of a delta once this many deltas are held after the last full table:
# each is stored, and verified again on every load, until a full table replaces them.
MAX_STORED_DELTAS = 32


class RouteUnavailable(DomainError):
    """The management node answered a pull with neither a table (200) nor `304 Not Modified`."""

    code = "route_unavailable"
    status = 502


class RouteResponse(Protocol):
    """What `RouteClient.pull` needs from the caller's HTTP response."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class AcceptResult:
    """`accepted` (a new version is held) or `unchanged` (that version was already held). `expired_at` is the
    `expires_at` of an unchanged table that has expired (§5: not used): the management node serves it still, not
    re-signed, and a pull does not mend it; None otherwise."""

    outcome: Literal["accepted", "unchanged"]
    version: int
    previous_version: int | None = None
    changes: tuple[str, ...] = ()
    expired_at: str | None = None


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RouteClient(VerificationMixin, RevocationMixin, StoredTableMixin):
    """Holds the newest routing table this node has accepted, and answers peer lookups from it.

    `trust_anchor` is the root CA certificate(s) (`GET /ca/ca.pem`); `intermediates` the issuing
    CA(s) (`GET /ca/chain.pem`), which may also arrive per call as `chain_pem`. `node_id` and
    `own_fingerprint` are this node's identity once it has joined (see `set_identity`). With
    `storage_path`, each accepted table is written atomically there and reloaded on start, so
    the rollback check survives a restart, and a newer table another process stored there is
    adopted: the file's identity is looked at, at most once per `storage_check_interval` seconds
    (0: on every lookup), before answering. `signer_usage` is the extended key usage the signer
    certificate must carry (None to skip; node certificates chain to the same root).
    `revocation_list` is a CRL of the signer's issuer kept from before (later ones: `use_revocation_list`); with
    `require_revocation_list` a new table needs a current one (see client_revocation.py). `root_revocation_list`
    is the root's CRL kept from before (later ones: `use_revocation_list(..., of_root=True)`).
    """

    def __init__(self, trust_anchor: Certificates, *, intermediates: Certificates | None = None,
                 node_id: str | None = None, own_fingerprint: str | None = None,
                 storage_path: str | os.PathLike[str] | None = None,
                 max_body_size: int = DEFAULT_MAX_BODY_SIZE, now: Callable[[], datetime] = _utcnow,
                 signer_usage: x509.ObjectIdentifier | None = ROUTE_SIGNER_USAGE,
                 storage_check_interval: float = DEFAULT_STORAGE_CHECK_INTERVAL,
                 revocation_list: bytes | None = None, require_revocation_list: bool = False,
                 root_revocation_list: bytes | None = None):
        self._roots = _load_certificates(trust_anchor)
        if not self._roots:
            raise ValueError("a route client needs at least one trust anchor")
        self._intermediates = _load_certificates(intermediates)
        self.node_id = node_id
        self.own_fingerprint = own_fingerprint.lower() if own_fingerprint else None
        self.storage_path = Path(storage_path) if storage_path is not None else None
        self.max_body_size = max_body_size
        self.now = now
        self.signer_usage = signer_usage
        self.storage_check_interval = storage_check_interval
        self.require_revocation_list = require_revocation_list
        self._revocation_lists: dict[bytes, x509.CertificateRevocationList] = {}  # by the issuer's key
        self._use_initial_revocation_list(revocation_list)
        self._use_initial_revocation_list(root_revocation_list, of_root=True)
        self._lock = threading.Lock()
        self._stored_identity: FileIdentity | None = None  # of the file last read, written or passed over
        self._next_storage_check = time.monotonic() + storage_check_interval
        self._held: _Held | None = self._load()

    def set_identity(self, node_id: str, own_fingerprint: str) -> None:
        """After joining or renewing: the next table must list this node with this fingerprint."""
        self.node_id, self.own_fingerprint = node_id, own_fingerprint.lower()

    # --- what the node reads ---------------------------------------------------------------------

    @property
    def table(self) -> dict | None:
        """A copy of the held table (even if expired: for display and diagnosis), or None."""
        held = self._current()
        return copy.deepcopy(held.table) if held else None

    @property
    def version(self) -> int | None:
        held = self._current()
        return held.table["version"] if held else None

    @property
    def expires_at(self) -> str | None:
        """The held table's `expires_at` (past or not), as it reads, or None."""
        held = self._current()
        return held.table["expires_at"] if held else None

    @property
    def expired(self) -> bool:
        """§5: a node must not use a table past `expires_at`; lookups answer nothing until a new one."""
        held = self._current()
        return held is None or self.now() >= held.expires_at

    def entry(self, node_id: str) -> dict | None:
        """The node's entry in the held, unexpired table."""
        held = self._usable()
        found = held.by_id.get(node_id) if held else None
        return copy.deepcopy(found) if found else None

    def peek(self, node_id: str) -> Mapping[str, Any] | None:
        """Like `entry`, without the copy, for hot paths that only read it (the table is replaced whole,
        never changed in place, so the mapping stays consistent; callers must not modify it)."""
        held = self._usable()
        return held.by_id.get(node_id) if held else None

    def entry_for_fingerprint(self, cert_sha256: str) -> dict | None:
        """The entry whose current certificate has this SHA-256 fingerprint (hex, any case)."""
        held = self._usable()
        found = held.by_fingerprint.get(cert_sha256.lower()) if held else None
        return copy.deepcopy(found) if found else None

    def is_trusted_peer(self, node_id: str, cert_sha256: str) -> bool:
        """§6 mutual TLS: the caller is listed (any status) with exactly this certificate fingerprint."""
        held = self._usable()
        found = held.by_id.get(node_id) if held else None
        return found is not None and found["cert_sha256"] == cert_sha256.lower()

    def _usable(self) -> _Held | None:
        held = self._current()
        return None if held is None or self.now() >= held.expires_at else held

    def _current(self) -> _Held | None:
        """The held table, after adopting a newer one stored by another process if it is time to look."""
        if self.storage_path is not None and time.monotonic() >= self._next_storage_check:
            # Never wait on the lock here: whoever holds it is accepting a table, which is as new as any.
            if self._lock.acquire(blocking=False):
                try:
                    self._follow_storage()
                finally:
                    self._lock.release()
        return self._held

    # --- accepting a table -----------------------------------------------------------------------

    def accept(self, body: bytes, signature_b64: str, signer_fingerprint: str, signer_cert_pem: bytes,
               chain_pem: bytes | None = None) -> AcceptResult:
        """Check a pulled table or delta in TUF's order and hold it; RouteRejected(code) otherwise."""
        signed = SignedDocument(body, signature_b64, signer_fingerprint.lower(), signer_cert_pem, chain_pem)
        try:
            return self._accept_signed(self._verified_document(signed, pulled=True), signed)
        except MalformedDocument as error:
            raise RouteRejected("malformed", str(error)) from None

    def _accept_signed(self, document: dict[str, Any], signed: SignedDocument) -> AcceptResult:
        with self._lock, self._storage_lock():
            if self.storage_path is not None:
                self._follow_storage()  # so a version another process stored is never overwritten by an older one
            held = self._held
            held_version = held.table["version"] if held else None
            version = document["version"]
            if held_version is not None and version < held_version:
                raise RouteRejected("rollback", f"version {version} is older than the held version {held_version}")
            if version == held_version:
                return self._unchanged(held)
            if route_document.parse_time(document.get("expires_at"), "expires_at") <= self.now():
                raise RouteRejected("expired", f"routing table version {version} expired at {document['expires_at']}")
            table = self._next_table(document, held)
            self._check_own_entry(table)
            new_held = _Held.of(table, _documents_after(held, document, signed))
            self._store(new_held)
            changes = route_document.describe_changes(held.by_id if held else {}, new_held.by_id)
            self._held = new_held
        return AcceptResult("accepted", version, held_version, tuple(changes))

    def _unchanged(self, held: _Held) -> AcceptResult:
        version = held.table["version"]
        expired_at = held.table["expires_at"] if self.now() >= held.expires_at else None
        return AcceptResult("unchanged", version, version, expired_at=expired_at)

    def verified_signer_chain(self, signer_cert_pem: bytes, chain_pem: bytes | None = None) -> list[x509.Certificate]:
        """A route signer certificate (the first of `signer_cert_pem`) after the checks a new table's signer gets:
        its profile (documentSigning), its validity, its chain through `chain_pem` or the intermediates held to a
        trust anchor, and the CRLs held. The path found, the signer first and the trust anchor last; RouteRejected
        otherwise. What a node may keep of a signer and chain it fetched (a rotation): never another root."""
        try:
            fingerprint = route_document.certificate_fingerprint(x509.load_pem_x509_certificate(signer_cert_pem))
        except ValueError:
            raise RouteRejected("bad_signer", "the signer certificate is not valid PEM") from None
        return self._verified_chain(signer_cert_pem, chain_pem, fingerprint, pulled=True)

    # --- pulling ---------------------------------------------------------------------------------

    def pull(self, fetch: Callable[[dict[str, str], int | None], RouteResponse], signer_cert_pem: bytes,
             chain_pem: bytes | None = None) -> AcceptResult:
        """One §4 `GET /api/v1/routes` round: `fetch(headers, since)` does the HTTP (URL, session), asking for
        a delta (`?since=<since>`) when `since` is a version and for the full table when it is None (a fetch
        may always ask for the full table); this sends `If-None-Match` for the held version and accepts a 200
        or takes a 304 as unchanged (with `expired_at` when the held table has expired: a 304 does not mend it)."""
        held = self._current()
        held_version = held.table["version"] if held else None
        headers = {"Accept": "application/json"}
        if held_version is not None:
            headers["If-None-Match"] = route_document.etag(held_version)
        response = fetch(headers, _delta_base(held))
        if response.status == 304 and held is not None:
            return self._unchanged(held)
        if response.status != 200:
            raise RouteUnavailable(f"GET /api/v1/routes answered {response.status}")
        signature = _header(response.headers, route_document.SIGNATURE_HEADER)
        signer = _header(response.headers, route_document.SIGNER_HEADER)
        if signer is None:
            raise RouteRejected("bad_signer", "the response has no X-Route-Signer header")
        if signature is None:
            raise RouteRejected("bad_signature", "the response has no X-Route-Signature header")
        return self.accept(response.body, signature, signer, signer_cert_pem, chain_pem)


def _delta_base(held: _Held | None) -> int | None:
    """The version a pull may ask a delta from; None, for the full table, when nothing is held or once
    MAX_STORED_DELTAS deltas are held after the full table (its signed documents are that one and the deltas)."""
    if held is None or len(held.documents) > MAX_STORED_DELTAS:
        return None
    return held.table["version"]


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
