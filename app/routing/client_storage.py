"""SPEC §5 on the application node: the route client's stored table, trusted only once it verifies again.

On start the client loads the table it stored (`app.routing.storage` keeps it with the signed documents it
was built from) and replays those documents through the checks a pulled table passes; one that fails, or a
file that does not read as a stored table, is logged and passed over, and the next pull replaces it. While
running, it adopts a newer table another process sharing the file (the node's CLI) stored, under the same
rules. Kept apart from client.py, which accepts pulled tables and writes them here under the lock file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time

from app.routing.document import MalformedDocument
from app.routing.storage import (
    StoredTable,
    UnreadableStorage,
    file_identity,
    read_stored_table,
    storage_lock,
    write_stored_table,
)
from app.routing.verification import OwnEntryMismatch, RouteRejected, _documents_after, _Held

# The route client's logger, whichever of its modules logs: operators read one name in the node's log.
log = logging.getLogger("app.routing.client")


class StoredTableMixin:
    """A `RouteClient`'s storage file. Relies on the client's `storage_path`, `storage_check_interval`, `now`,
    `_held`, `_stored_identity` and `_next_storage_check`, and on `_verified_document`, `_next_table` and
    `_check_own_entry` (VerificationMixin)."""

    def _load(self) -> _Held | None:
        """On start: the stored table if it reads and verifies. One that does not read (garbage, cut short,
        not UTF-8, not a stored table) is passed over with a warning, as one that fails verification is: either
        is as easily made by whoever can write the file, and refusing to start over it kept the node from the
        fresh table its next pull installs (rollback protection then rests on `expires_at`, as after a loss)."""
        if self.storage_path is None:
            return None
        try:
            stored = self._read_storage()
        except RouteRejected as error:
            log.warning("not using the routing table stored in %s: %s: %s", self.storage_path, error.code,
                        error.message)
            return None
        return self._verified_storage(stored) if stored is not None else None

    def _read_storage(self) -> StoredTable | None:
        """The stored table, unverified (None if there is no file), noting which file it came from;
        RouteRejected `storage_corrupt` if it cannot be read."""
        assert self.storage_path is not None
        try:
            stored = read_stored_table(self.storage_path)
        except UnreadableStorage as error:
            self._stored_identity = error.identity
            raise RouteRejected("storage_corrupt", f"it is unreadable: {error}") from None
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
            log.error("keeping routing table version %s: %s: %s", held.table["version"] if held else None,
                      self.storage_path, error)
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
