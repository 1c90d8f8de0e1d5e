"""SPEC §5 the routing table: its wire shape, byte-exact serialisation, deltas, checks and signature.

A full table is `{version, issued_at, expires_at, issuer, nodes}`; a delta carries `since`, `changed`
and `removed` instead of `nodes`. The body is signed exactly as sent (no canonicalisation), so
`openssl dgst -sha256 -verify signer-pubkey.pem -signature sig.der body.json` verifies it.
Pure functions: no database, no Flask; both the management node and application nodes use them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from app.errors import DomainError

STATUSES = ("up", "down", "unknown")
# SPEC §4 A.1: the Appendix A functions a node may announce. Kept here rather than imported from
# app.admission.models so an application node can verify tables without the registry's database layer.
CAPABILITIES = ("text", "image", "voice", "file", "download", "single_chat", "group", "read_count",
                "sticker", "presence")
# RFC 9336 id-kp-documentSigning: marks the one certificate whose key may sign routing tables.
# Node certificates chain to the same root, so chaining alone must not be enough to sign a table.
ROUTE_SIGNER_USAGE = x509.ObjectIdentifier("1.3.6.1.5.5.7.3.36")
SIGNATURE_HEADER = "X-Route-Signature"
SIGNER_HEADER = "X-Route-Signer"

NODE_ID = re.compile(r"^[0-9]{20}$")
DIVISION_CODE = re.compile(r"^[0-9]{6}$")
FINGERPRINT = re.compile(r"^[0-9a-f]{64}$")
# Field labels used by describe_changes, in the order the console lists them.
FIELD_LABELS = (("division_code", "division"), ("org_name", "organisation"), ("system_name", "system name"),
                ("endpoint", "endpoint"), ("cert_sha256", "certificate"), ("capabilities", "capabilities"))

Entry = dict[str, Any]


class Signer(Protocol):
    """Anything holding the route-signing key: a cryptography EC private key, or a CA wrapper."""

    def sign(self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes: ...


class MalformedDocument(DomainError):
    """The table or delta breaks the §5 shape (the message names the first broken field)."""

    code = "malformed"
    status = 400


# --- building and serialising -------------------------------------------------------------------

def format_time(moment: datetime) -> str:
    """RFC 3339 UTC with a `Z`, to the second: the only time format in a table (SPEC §4)."""
    if moment.tzinfo is None:
        raise ValueError("routing table times must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: object, field: str) -> datetime:
    """The aware UTC datetime of an RFC 3339 `...Z` string; MalformedDocument otherwise."""
    if not isinstance(value, str) or not value.endswith("Z"):
        raise MalformedDocument(f"{field} must be an RFC 3339 UTC time ending in Z")
    try:
        return datetime.fromisoformat(value).astimezone(UTC)
    except ValueError:
        raise MalformedDocument(f"{field} must be an RFC 3339 UTC time ending in Z") from None


def full_table(version: int, nodes: Iterable[Entry], *, issuer: str, issued_at: datetime,
               expires_at: datetime) -> dict:
    """§5 full table; `nodes` are sorted by node_id so equal contents give equal bytes."""
    return {"version": version, "issued_at": format_time(issued_at), "expires_at": format_time(expires_at),
            "issuer": issuer, "nodes": sorted(nodes, key=lambda entry: entry["node_id"])}


def delta_document(version: int, since: int, changed: Iterable[Entry], removed: Iterable[str], *, issuer: str,
                   issued_at: datetime, expires_at: datetime) -> dict:
    """§5 delta from version `since` to `version`: entries added or changed, node ids removed."""
    return {"version": version, "since": since, "issued_at": format_time(issued_at),
            "expires_at": format_time(expires_at), "issuer": issuer,
            "changed": sorted(changed, key=lambda entry: entry["node_id"]), "removed": sorted(removed)}


def serialise(document: Mapping[str, Any]) -> bytes:
    """Compact deterministic UTF-8 JSON: these bytes are what is signed and sent, unchanged."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def etag(version: int) -> str:
    """The strong ETag of a table version, as sent in `ETag` and echoed in `If-None-Match`."""
    return f'"{version}"'


# --- deltas and their description ----------------------------------------------------------------

def nodes_by_id(entries: Iterable[Entry]) -> dict[str, Entry]:
    """Index a `nodes` list by node_id, the shape compute_delta and describe_changes take."""
    return {entry["node_id"]: entry for entry in entries}


def compute_delta(old_nodes: Mapping[str, Entry], new_nodes: Mapping[str, Entry]) -> tuple[list[Entry], list[str]]:
    """(changed, removed): entries new or different in `new_nodes`, ids gone from it; both sorted."""
    changed = [new_nodes[node_id] for node_id in sorted(new_nodes) if old_nodes.get(node_id) != new_nodes[node_id]]
    removed = sorted(set(old_nodes) - set(new_nodes))
    return changed, removed


def describe_changes(old_nodes: Mapping[str, Entry], new_nodes: Mapping[str, Entry]) -> list[str]:
    """One human line per change, by node id: `… added`, `… removed`, `… status up→down`, `… endpoint changed`."""
    lines: list[str] = []
    for node_id in sorted(set(old_nodes) | set(new_nodes)):
        old, new = old_nodes.get(node_id), new_nodes.get(node_id)
        if old is None:
            lines.append(f"{node_id} added")
        elif new is None:
            lines.append(f"{node_id} removed")
        else:
            if old.get("status") != new.get("status"):
                lines.append(f"{node_id} status {old.get('status')}→{new.get('status')}")
            lines.extend(f"{node_id} {label} changed" for field, label in FIELD_LABELS
                         if old.get(field) != new.get(field))
    return lines


# --- checking ------------------------------------------------------------------------------------

def check_entry(entry: object, where: str = "entry") -> None:
    """§5 node entry: 20-digit node_id, https endpoint with a host, known status and capabilities,
    64-hex lowercase cert_sha256. Unknown extra fields are allowed, for newer servers."""
    if not isinstance(entry, dict):
        raise MalformedDocument(f"{where} must be an object")
    node_id = entry.get("node_id")
    if not isinstance(node_id, str) or not NODE_ID.fullmatch(node_id):
        raise MalformedDocument(f"{where}: node_id must be 20 digits")
    where = f"node {node_id}"
    if not isinstance(entry.get("division_code"), str) or not DIVISION_CODE.fullmatch(entry["division_code"]):
        raise MalformedDocument(f"{where}: division_code must be 6 digits")
    for field in ("org_name", "system_name"):
        if not isinstance(entry.get(field), str) or not entry[field].strip():
            raise MalformedDocument(f"{where}: {field} must be a non-empty string")
    _check_endpoint(entry.get("endpoint"), where)
    if entry.get("status") not in STATUSES:
        raise MalformedDocument(f"{where}: status must be one of {', '.join(STATUSES)}")
    if not isinstance(entry.get("cert_sha256"), str) or not FINGERPRINT.fullmatch(entry["cert_sha256"]):
        raise MalformedDocument(f"{where}: cert_sha256 must be 64 lowercase hex digits")
    capabilities = entry.get("capabilities")
    if not isinstance(capabilities, list) or not all(isinstance(item, str) for item in capabilities):
        raise MalformedDocument(f"{where}: capabilities must be a list of strings")
    unknown = sorted(set(capabilities) - set(CAPABILITIES))
    if unknown or len(set(capabilities)) != len(capabilities):
        raise MalformedDocument(f"{where}: capabilities must be distinct known names (got {unknown or 'repeats'})")


def _check_endpoint(endpoint: object, where: str) -> None:
    if not isinstance(endpoint, str) or any(char.isspace() for char in endpoint):
        raise MalformedDocument(f"{where}: endpoint must be an https URL")
    try:
        parts = urlsplit(endpoint)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number in range
    except ValueError:
        raise MalformedDocument(f"{where}: endpoint must be an https URL") from None
    if parts.scheme != "https" or not parts.hostname or parts.username is not None:
        raise MalformedDocument(f"{where}: endpoint must be an https URL with a host and no credentials")


def _check_header(document: object) -> None:
    if not isinstance(document, dict):
        raise MalformedDocument("the routing table must be a JSON object")
    version = document.get("version")
    if type(version) is not int or version < 0:
        raise MalformedDocument("version must be a non-negative integer")
    if not isinstance(document.get("issuer"), str) or not NODE_ID.fullmatch(document["issuer"]):
        raise MalformedDocument("issuer must be a 20-digit node id")
    if parse_time(document.get("issued_at"), "issued_at") > parse_time(document.get("expires_at"), "expires_at"):
        raise MalformedDocument("issued_at is after expires_at")


def _check_entries(entries: object, field: str) -> None:
    if not isinstance(entries, list):
        raise MalformedDocument(f"{field} must be a list")
    for position, entry in enumerate(entries):
        check_entry(entry, f"{field}[{position}]")
    # Two entries for one node, or one certificate claimed by two nodes, would make peer lookup ambiguous.
    if len({entry["node_id"] for entry in entries}) != len(entries):
        raise MalformedDocument(f"{field} lists a node id twice")
    if len({entry["cert_sha256"] for entry in entries}) != len(entries):
        raise MalformedDocument(f"{field} lists a certificate fingerprint twice")


def is_delta(document: Mapping[str, Any]) -> bool:
    """A delta answers `?since=`; it carries `since` instead of `nodes`."""
    return "since" in document


def check_table(document: object) -> None:
    """Raise MalformedDocument unless `document` has the §5 full-table shape."""
    _check_header(document)
    _check_entries(document.get("nodes"), "nodes")


def check_delta(document: object) -> None:
    """Raise MalformedDocument unless `document` has the §5 delta shape (`since` below `version`)."""
    _check_header(document)
    since = document.get("since")
    if type(since) is not int or not 0 <= since < document["version"]:
        raise MalformedDocument("since must be an integer below version")
    _check_entries(document.get("changed"), "changed")
    removed = document.get("removed")
    if not isinstance(removed, list) or not all(isinstance(item, str) and NODE_ID.fullmatch(item) for item in removed):
        raise MalformedDocument("removed must be a list of 20-digit node ids")
    if len(set(removed)) != len(removed) or set(removed) & {entry["node_id"] for entry in document["changed"]}:
        raise MalformedDocument("removed repeats a node id or names one that is also changed")


# --- signing -------------------------------------------------------------------------------------

def certificate_fingerprint(certificate: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the certificate's DER: `cert_sha256` and `X-Route-Signer`."""
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


def sign_body(body: bytes, signer: Signer) -> bytes:
    """ECDSA-SHA256 DER signature over the exact body bytes (§5)."""
    return signer.sign(body, ec.ECDSA(hashes.SHA256()))


def signature_headers(body: bytes, signer: Signer, signer_cert: x509.Certificate | bytes) -> dict[str, str]:
    """The §5 response headers for `body`: base64 DER signature and the signer cert fingerprint."""
    if isinstance(signer_cert, bytes):
        signer_cert = x509.load_pem_x509_certificate(signer_cert)
    return {SIGNATURE_HEADER: base64.b64encode(sign_body(body, signer)).decode("ascii"),
            SIGNER_HEADER: certificate_fingerprint(signer_cert)}
