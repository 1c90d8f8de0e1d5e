"""SPEC §5 on the application node: the accepted routing table on disk, with what verifies it again.

The file holds the table and the signed documents it was built from, exactly as received: the last full
table and every delta applied to it since, each with its body bytes, signature, signer certificate and
chain, so the route client checks a stored table as it checks a pulled one before trusting it (someone
who can edit the file must not be able to change an endpoint or a fingerprint). A full table starts the
list afresh. Format 1 files kept no signer certificate: they read, with no documents, and are never trusted.
Writes are atomic, and a lock file beside the table serialises the processes sharing it (POSIX `flock`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: processes sharing a data directory are not serialised
    fcntl = None  # type: ignore[assignment]

from app.routing import document as route_document
from app.routing.document import MalformedDocument

STORAGE_FORMAT = 2

FileIdentity = tuple[int, int, int]


class UnreadableStorage(Exception):
    """The file is there but holds no stored table; `identity` is the file's, if it could be opened."""

    def __init__(self, reason: str, identity: FileIdentity | None = None):
        super().__init__(reason)
        self.identity = identity


@dataclass(frozen=True)
class SignedDocument:
    """A pulled table or delta as received: everything §5 verification needs, then and after a restart."""

    body: bytes
    signature_b64: str
    signer_fingerprint: str
    signer_cert_pem: bytes
    chain_pem: bytes | None = None


@dataclass(frozen=True)
class StoredTable:
    """What the file says: the table, the signed documents it claims to come from (none in format 1)."""

    table: dict
    documents: tuple[SignedDocument, ...]
    identity: FileIdentity


def file_identity(status: os.stat_result) -> FileIdentity:
    """Changes whenever the file is replaced (a new inode) or rewritten."""
    return status.st_ino, status.st_mtime_ns, status.st_size


def read_stored_table(path: Path) -> StoredTable | None:
    """The stored table, unverified (None if there is no file); UnreadableStorage if it cannot be read."""
    identity = None
    try:
        with open(path, "rb") as stream:
            identity = file_identity(os.fstat(stream.fileno()))
            record = json.loads(stream.read().decode("utf-8"))
        table = record["table"]
        route_document.check_table(table)
        documents = tuple(_signed_document(item) for item in record["documents"]) \
            if record.get("format") == STORAGE_FORMAT else ()
        return StoredTable(table, documents, identity)
    except FileNotFoundError:
        return None
    except KeyError as error:  # str() of a KeyError is only the key's repr
        raise UnreadableStorage(f"it is not a stored routing table: it has no {error}", identity) from None
    except (OSError, ValueError, TypeError, AttributeError, RecursionError, binascii.Error,
            MalformedDocument) as error:
        raise UnreadableStorage(str(error), identity) from None


def write_stored_table(path: Path, table: dict, documents: Sequence[SignedDocument]) -> FileIdentity:
    """Write the table with the signed documents it came from, atomically: a crash leaves old or new."""
    record = {"format": STORAGE_FORMAT, "table": table, "documents": [_document_record(item) for item in documents]}
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(route_document.serialise(record))
            stream.flush()
            os.fsync(stream.fileno())
            written = file_identity(os.fstat(stream.fileno()))  # a rename keeps inode, mtime and size
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if hasattr(os, "O_DIRECTORY"):
        directory_handle = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory_handle)
        finally:
            os.close(directory_handle)
    return written


@contextlib.contextmanager
def storage_lock(path: Path) -> Iterator[None]:
    """Across processes sharing the stored table (the node's server and its CLI): from looking at the
    stored version to writing the new one, so two accepting at once cannot leave the older on disk."""
    if fcntl is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "a+b") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _document_record(signed: SignedDocument) -> dict:
    """Bytes as base64, so they come back exactly as received (a chain file may carry any text around its PEM)."""
    return {"body": _base64(signed.body), "signature": signed.signature_b64,
            "signer_sha256": signed.signer_fingerprint, "signer_certificate": _base64(signed.signer_cert_pem),
            "chain": _base64(signed.chain_pem) if signed.chain_pem is not None else None}


def _signed_document(item: dict) -> SignedDocument:
    chain = item["chain"]
    return SignedDocument(base64.b64decode(item["body"], validate=True), str(item["signature"]),
                          str(item["signer_sha256"]), base64.b64decode(item["signer_certificate"], validate=True),
                          base64.b64decode(chain, validate=True) if chain is not None else None)


def _base64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
