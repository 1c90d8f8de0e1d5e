"""SPEC §5 on the application node: accept a pulled routing table only after TUF's order of checks.

Size first (before parsing), then the signer certificate and the signature over the exact body
bytes, then the version (no rollback), then `expires_at` (no freeze), then the contents, and only
then is a delta applied and the new table written to storage. A rejected table changes nothing.
A client with storage also follows that file: a newer table another process (the node's CLI) stored
there is adopted before the next lookups, under the same rules, as on a restart. A stored table is
verified again from the signed documents stored with it (`app.routing.storage`); one that fails, or that
an older version stored without them, is logged and passed over, and the next pull replaces it.
Accepting holds a lock file beside it (POSIX `flock`) from reading the stored version to writing, so the
server and the CLI accepting at the same moment cannot leave the older of their two tables stored.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from app.errors import DomainError
from app.routing import document as route_document
from app.routing.document import ROUTE_SIGNER_USAGE, MalformedDocument
from app.routing.storage import (
    FileIdentity,
    SignedDocument,
    StoredTable,
    UnreadableStorage,
    file_identity,
    read_stored_table,
    storage_lock,
    write_stored_table,
)

DEFAULT_MAX_BODY_SIZE = 8 * 1024 * 1024
DEFAULT_STORAGE_CHECK_INTERVAL = 1.0
MAX_CHAIN_DEPTH = 4

Certificates = bytes | x509.Certificate | Sequence[x509.Certificate]

log = logging.getLogger(__name__)


class RouteRejected(DomainError):
    """§5: the node refuses this table; `code` says why (too_large, bad_signer, bad_signature,
    rollback, expired, malformed, own_entry_mismatch, delta_base_mismatch, storage_corrupt; for a stored
    table only, storage_unverified)."""

    code = "route_rejected"
    status = 422

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code)


class OwnEntryMismatch(RouteRejected):
    """`own_entry_mismatch`: the table lists this node with `listed_sha256`, not the certificate it holds
    (after an admin renewal the node may fetch and install the listed certificate, then pull again)."""

    def __init__(self, node_id: str, listed_sha256: str, own_sha256: str):
        super().__init__("own_entry_mismatch", f"the table lists {node_id} with certificate {listed_sha256}, "
                         f"this node holds {own_sha256}")
        self.listed_sha256 = listed_sha256


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
    """`accepted` (a new version is held) or `unchanged` (that version was already held)."""

    outcome: Literal["accepted", "unchanged"]
    version: int
    previous_version: int | None = None
    changes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Held:
    """One accepted table with its lookups and the signed documents it was built from (to store them
    with it), swapped in whole so readers never see half an update."""

    table: dict
    documents: tuple[SignedDocument, ...] = field(repr=False)
    expires_at: datetime
    by_id: dict[str, dict] = field(repr=False)
    by_fingerprint: dict[str, dict] = field(repr=False)

    @classmethod
    def of(cls, table: dict, documents: tuple[SignedDocument, ...]) -> _Held:
        return cls(table, documents, route_document.parse_time(table["expires_at"], "expires_at"),
                   {entry["node_id"]: entry for entry in table["nodes"]},
                   {entry["cert_sha256"]: entry for entry in table["nodes"]})


def _load_certificates(value: Certificates | None) -> list[x509.Certificate]:
    if value is None:
        return []
    if isinstance(value, bytes):
        return x509.load_pem_x509_certificates(value) if value.strip() else []
    if isinstance(value, x509.Certificate):
        return [value]
    return list(value)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RouteClient:
    """Holds the newest routing table this node has accepted, and answers peer lookups from it.

    `trust_anchor` is the root CA certificate(s) (`GET /ca/ca.pem`); `intermediates` the issuing
    CA(s) (`GET /ca/chain.pem`), which may also arrive per call as `chain_pem`. `node_id` and
    `own_fingerprint` are this node's identity once it has joined (see `set_identity`). With
    `storage_path`, each accepted table is written atomically there and reloaded on start, so
    the rollback check survives a restart, and a newer table another process stored there is
    adopted: the file's identity is looked at, at most once per `storage_check_interval` seconds
    (0: on every lookup), before answering. `signer_usage` is the extended key usage the signer
    certificate must carry (None to skip; node certificates chain to the same root).
    """

    def __init__(self, trust_anchor: Certificates, *, intermediates: Certificates | None = None,
                 node_id: str | None = None, own_fingerprint: str | None = None,
                 storage_path: str | os.PathLike[str] | None = None,
                 max_body_size: int = DEFAULT_MAX_BODY_SIZE, now: Callable[[], datetime] = _utcnow,
                 signer_usage: x509.ObjectIdentifier | None = ROUTE_SIGNER_USAGE,
                 storage_check_interval: float = DEFAULT_STORAGE_CHECK_INTERVAL):
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
            return self._accept_signed(self._verified_document(signed), signed)
        except MalformedDocument as error:
            raise RouteRejected("malformed", str(error)) from None

    def _verified_document(self, signed: SignedDocument) -> dict[str, Any]:
        """Size, signer and signature, then just enough parsing to order the remaining checks."""
        if len(signed.body) > self.max_body_size:
            raise RouteRejected("too_large", f"routing table of {len(signed.body)} bytes exceeds "
                                f"{self.max_body_size}")
        signer = self._verify_signer(signed.signer_cert_pem, signed.chain_pem, signed.signer_fingerprint)
        self._verify_signature(signer, signed.body, signed.signature_b64)
        return _parse(signed.body)

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
                return AcceptResult("unchanged", version, held_version)
            if route_document.parse_time(document.get("expires_at"), "expires_at") <= self.now():
                raise RouteRejected("expired", f"routing table version {version} expired at {document['expires_at']}")
            table = self._next_table(document, held)
            self._check_own_entry(table)
            new_held = _Held.of(table, _documents_after(held, document, signed))
            self._store(new_held)
            changes = route_document.describe_changes(held.by_id if held else {}, new_held.by_id)
            self._held = new_held
        return AcceptResult("accepted", version, held_version, tuple(changes))

    def _verify_signer(self, signer_cert_pem: bytes, chain_pem: bytes | None, fingerprint: str) -> x509.Certificate:
        """§5: the certificate named by `X-Route-Signer`, fit to sign tables, chaining to the anchor."""
        try:
            signer = x509.load_pem_x509_certificate(signer_cert_pem)
            pool = self._intermediates + _load_certificates(chain_pem)
        except ValueError:
            raise RouteRejected("bad_signer", "the signer certificate or chain is not valid PEM") from None
        actual = route_document.certificate_fingerprint(signer)
        if actual != fingerprint.strip().lower():
            raise RouteRejected("bad_signer", "the signer certificate does not match X-Route-Signer")
        now = self.now()
        if not signer.not_valid_before_utc <= now <= signer.not_valid_after_utc:
            raise RouteRejected("bad_signer", "the signer certificate is outside its validity period")
        self._check_signer_profile(signer)
        current = signer
        for _ in range(MAX_CHAIN_DEPTH):
            if any(_issued_by(current, root) for root in self._roots):
                return signer
            issuer = next((ca for ca in pool if _is_usable_ca(ca, now) and _issued_by(current, ca)), None)
            if issuer is None:
                break
            current = issuer
        raise RouteRejected("bad_signer", "the signer certificate does not chain to the trust anchor")

    def _check_signer_profile(self, signer: x509.Certificate) -> None:
        if not isinstance(signer.public_key(), ec.EllipticCurvePublicKey):
            raise RouteRejected("bad_signer", "the signer certificate does not hold an EC key")
        constraints = _extension(signer, x509.BasicConstraints)
        if constraints is not None and constraints.ca:
            raise RouteRejected("bad_signer", "a CA certificate may not sign routing tables")
        key_usage = _extension(signer, x509.KeyUsage)
        if key_usage is not None and not key_usage.digital_signature:
            raise RouteRejected("bad_signer", "the signer certificate may not make digital signatures")
        if self.signer_usage is not None:
            usages = _extension(signer, x509.ExtendedKeyUsage)
            if usages is None or self.signer_usage not in usages:
                raise RouteRejected("bad_signer", "the signer certificate is not a route-signing certificate")

    @staticmethod
    def _verify_signature(signer: x509.Certificate, body: bytes, signature_b64: str) -> None:
        try:
            signature = base64.b64decode(signature_b64, validate=True)
            signer.public_key().verify(signature, body, ec.ECDSA(hashes.SHA256()))
        except (binascii.Error, ValueError, InvalidSignature):
            raise RouteRejected("bad_signature", "X-Route-Signature does not verify over the body") from None

    def _next_table(self, document: dict, held: _Held | None) -> dict:
        """The full table to hold: the document itself, or the held table with a delta applied."""
        if not route_document.is_delta(document):
            route_document.check_table(document)
            return {**document, "nodes": sorted(document["nodes"], key=lambda entry: entry["node_id"])}
        route_document.check_delta(document)
        if held is None or document["since"] != held.table["version"]:
            raise RouteRejected("delta_base_mismatch", f"delta since {document['since']} does not apply to the "
                                f"held version {held.table['version'] if held else None}; pull the full table")
        nodes = dict(held.by_id)
        for node_id in document["removed"]:
            if nodes.pop(node_id, None) is None:
                raise RouteRejected("delta_base_mismatch", f"delta removes {node_id}, absent from the held table")
        nodes.update((entry["node_id"], entry) for entry in document["changed"])
        table = route_document.full_table(document["version"], nodes.values(), issuer=document["issuer"],
                                          issued_at=route_document.parse_time(document["issued_at"], "issued_at"),
                                          expires_at=route_document.parse_time(document["expires_at"], "expires_at"))
        route_document.check_table(table)
        return table

    def _check_own_entry(self, table: dict) -> None:
        if not (self.node_id and self.own_fingerprint):
            return
        own = next((entry for entry in table["nodes"] if entry["node_id"] == self.node_id), None)
        if own is not None and own["cert_sha256"] != self.own_fingerprint:
            raise OwnEntryMismatch(self.node_id, own["cert_sha256"], self.own_fingerprint)

    # --- pulling ---------------------------------------------------------------------------------

    def pull(self, fetch: Callable[[dict[str, str]], RouteResponse], signer_cert_pem: bytes,
             chain_pem: bytes | None = None) -> AcceptResult:
        """One §4 `GET /api/v1/routes` round: `fetch(headers)` does the HTTP (URL, `?since=`, session),
        this sends `If-None-Match` for the held version and accepts a 200 or takes a 304 as unchanged."""
        held_version = self.version
        headers = {"Accept": "application/json"}
        if held_version is not None:
            headers["If-None-Match"] = route_document.etag(held_version)
        response = fetch(headers)
        if response.status == 304 and held_version is not None:
            return AcceptResult("unchanged", held_version, held_version)
        if response.status != 200:
            raise RouteUnavailable(f"GET /api/v1/routes answered {response.status}")
        signature = _header(response.headers, route_document.SIGNATURE_HEADER)
        signer = _header(response.headers, route_document.SIGNER_HEADER)
        if signer is None:
            raise RouteRejected("bad_signer", "the response has no X-Route-Signer header")
        if signature is None:
            raise RouteRejected("bad_signature", "the response has no X-Route-Signature header")
        return self.accept(response.body, signature, signer, signer_cert_pem, chain_pem)

    # --- storage ---------------------------------------------------------------------------------

    def _load(self) -> _Held | None:
        if self.storage_path is None:
            return None
        # Starting empty from an unreadable file would silently drop rollback protection: make the operator
        # look. A readable one that fails verification is passed over with a warning, as if it were absent.
        stored = self._read_storage()
        return self._verified_storage(stored) if stored is not None else None

    def _read_storage(self) -> StoredTable | None:
        """The stored table, unverified (None if there is no file), noting which file it came from;
        RouteRejected `storage_corrupt` if it cannot be read."""
        assert self.storage_path is not None
        try:
            stored = read_stored_table(self.storage_path)
        except UnreadableStorage as error:
            self._stored_identity = error.identity
            raise RouteRejected("storage_corrupt", f"{self.storage_path} is unreadable: {error}") from None
        if stored is not None:
            self._stored_identity = stored.identity
        return stored

    def _verified_storage(self, stored: StoredTable) -> _Held | None:
        """The stored table if its signed documents verify as pulled ones would and, replayed in order, give
        exactly that table; otherwise None, with a warning naming the file and the reason."""
        try:
            if not stored.documents:
                raise RouteRejected("storage_unverified", "it holds no signed documents to verify it by "
                                    "(an older version of the node stored it)")
            held: _Held | None = None
            for signed in stored.documents:
                document = self._verified_document(signed)
                held = _Held.of(self._next_table(document, held), _documents_after(held, document, signed))
            assert held is not None
            if held.table != stored.table:
                raise RouteRejected("storage_unverified", "its table is not the one its signed documents give")
        except (RouteRejected, MalformedDocument) as error:
            log.warning("not using the routing table stored in %s: %s: %s", self.storage_path, error.code,
                        error.message)
            return None
        return held

    def _follow_storage(self) -> None:
        """Under `_lock`: adopt the stored table if another process replaced the file with a newer version that
        verifies, unexpired, and lists this node with its own certificate. Anything else keeps the held table;
        a table listing another certificate for this node is left to the node's pull, which can install it."""
        assert self.storage_path is not None
        self._next_storage_check = time.monotonic() + self.storage_check_interval
        try:
            identity = file_identity(os.stat(self.storage_path))
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("cannot look at the stored routing table %s: %s", self.storage_path, error)
            return
        if identity == self._stored_identity:
            return
        held = self._held
        try:
            read = self._read_storage()
        except RouteRejected as error:
            log.error("keeping routing table version %s: %s", held.table["version"] if held else None, error)
            return
        if read is None or (held is not None and read.table["version"] <= held.table["version"]):
            return
        stored = self._verified_storage(read)
        if stored is None:
            return
        version = stored.table["version"]
        if self.now() >= stored.expires_at:
            log.warning("not adopting stored routing table version %s: it expired at %s", version,
                        stored.table["expires_at"])
            return
        try:
            self._check_own_entry(stored.table)
        except OwnEntryMismatch as error:
            log.warning("not adopting stored routing table version %s until this node's pull installs the "
                        "listed certificate: %s", version, error)
            return
        self._held = stored
        log.info("adopted routing table version %s, which another process stored in %s", version,
                 self.storage_path)

    def _storage_lock(self) -> contextlib.AbstractContextManager[None]:
        return storage_lock(self.storage_path) if self.storage_path is not None else contextlib.nullcontext()

    def _store(self, held: _Held) -> None:
        if self.storage_path is not None:
            self._stored_identity = write_stored_table(self.storage_path, held.table, held.documents)


def _documents_after(held: _Held | None, document: dict[str, Any],
                     signed: SignedDocument) -> tuple[SignedDocument, ...]:
    """What verifies the table `document` leads to: a full table alone, a delta after those of its base."""
    if held is None or not route_document.is_delta(document):
        return (signed,)
    return (*held.documents, signed)


def _parse(body: bytes) -> dict[str, Any]:
    """Just enough to order the checks: a JSON object with an integer version."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedDocument("the routing table is not UTF-8 JSON") from None
    if not isinstance(document, dict) or type(document.get("version")) is not int:
        raise MalformedDocument("the routing table has no integer version")
    return document


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_usable_ca(certificate: x509.Certificate, now: datetime) -> bool:
    constraints = _extension(certificate, x509.BasicConstraints)
    return (constraints is not None and constraints.ca
            and certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc)


def _extension(certificate: x509.Certificate, kind: type) -> Any:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None
