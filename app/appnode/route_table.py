"""The routing table of a `Node` (docs/protocol.md §2.2-§2.3, SPEC §5): the route client over the stored
table, the pull from the management node and what it leaves for `status`, and the pulls made before a node
missing from the table is refused, as a caller (`_refresh_for_peer`) or as a recipient (`_pull_for_recipient`).
"""

from __future__ import annotations

import logging
import time

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from app.appnode.protocol import UnknownPeer
from app.appnode.registry import NotJoined, RegistryError, write_atomic
from app.appnode.renewal import CERTIFICATE_REVOKED, PENDING_KEY_MAY_OPEN
from app.appnode.revocation_lists import RevocationListsMixin
from app.appnode.store import put_setting
from app.errors import DomainError
from app.routing.client import RouteClient
from app.routing.verification import OwnEntryMismatch, RouteRejected

log = logging.getLogger("mpim.appnode")

REFRESH_INTERVAL = 30.0


def expired_account(version: int, expires_at: str) -> str:
    """Why no node can be looked up while the held table has expired (§5): the management node serves it still, not
    re-signed, which only its operators can mend. "Expired" is by this machine's clock, which may be ahead."""
    return (f"this node's routing table v{version} expired at {expires_at} and the management node has not "
            f"re-signed it (or this machine's clock is ahead): ask its operators")


class RouteTableMixin(RevocationListsMixin):
    """The routing table of a `Node`. Relies on the node's `db`, `identity`, `registry`, `data_dir`, `node_id`,
    `joined`, `setting`, `_routes`, `_routes_lock`, `_last_refresh`, `_recipient_pull`, `_pull_failed_at`,
    `_caller_refresh`, `_pull_lock` and `_expired_logged`, and on `adopt_listed_certificate` and
    `adopt_pending_certificate` (RenewalMixin); the CRLs it checks tables against are RevocationListsMixin's."""

    @property
    def routes(self) -> RouteClient:
        with self._routes_lock:
            if self._routes is None:
                if not self.identity.ca_file.exists():
                    raise NotJoined("the CA certificates have not been fetched yet")
                own = self.identity.fingerprint() if self.joined else None
                crl_file, root_crl_file = self.identity.crl_file, self.identity.root_crl_file
                self._routes = RouteClient(self.identity.ca_file.read_bytes(),
                                           intermediates=self.identity.chain_file.read_bytes(),
                                           node_id=self.node_id if self.joined else None, own_fingerprint=own,
                                           storage_path=self.data_dir / "routes.json",
                                           revocation_list=crl_file.read_bytes() if crl_file.exists() else None,
                                           require_revocation_list=True,
                                           root_revocation_list=(root_crl_file.read_bytes()
                                                                 if root_crl_file.exists() else None))
            return self._routes

    def reload_routes(self) -> None:
        """Re-read the table the server process stored (the CLI's view of the network)."""
        with self._routes_lock:
            self._routes = None

    def sync_routes(self):
        """One `GET /api/v1/routes` round through the route client (signature, rollback, freeze, contents). When
        it fails is noted (`_pull_failed_at`): delivery does not pull again for REFRESH_INTERVAL after. A pull that
        leaves the node on an expired table (`expired_at`) is logged once per table, not on every pull."""
        try:
            result = self._sync_routes()
        except Exception:
            self._pull_failed_at = time.monotonic()
            raise
        if result.expired_at is not None and result.expired_at != self._expired_logged:
            log.error("left on an expired table: %s", expired_account(result.version, result.expired_at))
        self._expired_logged = result.expired_at
        return result

    def expired_table(self) -> str | None:
        """`expired_account` of the held table once it has expired; None while it is current, when none is held,
        or before `join` fetched the CA certificates."""
        try:
            routes = self.routes
        except NotJoined:
            return None
        version, expires_at = routes.version, routes.expires_at
        if version is None or expires_at is None or not routes.expired:
            return None
        return expired_account(version, expires_at)

    def _sync_routes(self):
        node_id = self.node_id

        def fetch(headers, since):  # always the full table: one signed document to store and verify again
            result = self.registry.with_session(node_id, "GET", "/api/v1/routes", headers=headers)
            if result.status in (429, 503):  # put off, as a session can be: a RegistryError keeps its Retry-After
                raise self.registry.fail(result, "the routing table is unavailable")
            return result

        self._refresh_revocation_lists()
        mended: set[str] = set()
        fetched: tuple[bytes, bytes] | None = None  # a rotated signer and chain, kept only once a table takes them
        while True:
            try:
                signer_pem, chain_pem = fetched or (self.identity.signer_file.read_bytes(),
                                                    self.identity.chain_file.read_bytes())
                result = self.routes.pull(fetch, signer_pem, chain_pem)
                break
            except RegistryError as error:
                if "pending_key" not in mended and self._recovered_with_pending_key(error):
                    mended.add("pending_key")
                    continue  # the pending key is the current key now: pull with its session
                # `status` shows it: a suspended or revoked node cannot open sessions, so its own table,
                # which still lists it, would otherwise look healthy.
                self._note_registry_problem(f"{error.code}: {error.message}")
                if error.code in CERTIFICATE_REVOKED:
                    self._note_certificate_problem(CERTIFICATE_REVOKED[error.code].format(
                        sha256=self.identity.fingerprint(), node_id=node_id))
                raise
            except RouteRejected as error:
                if error.code == "bad_signer" and fetched is not None:
                    raise RouteRejected("bad_signer", f"{error.message}, nor does the route signer the management "
                                        f"node serves at {self.registry.base_url}/ca/route-signer.pem: the trust "
                                        "anchor (tls/ca.pem) is the root this node took when it joined (or by "
                                        "`trust-root`), never replaced by a pull; after a new root, install the "
                                        "one the management node's operators hand over with `trust-root FILE` "
                                        "(docs/operations.md)") from None
                if error.code in mended or error.code not in ("bad_signer", "own_entry_mismatch"):
                    raise
                mended.add(error.code)
                if isinstance(error, OwnEntryMismatch):
                    self.adopt_listed_certificate(error.listed_sha256)  # then pull once more
                else:
                    # The signer may have been rotated: fetch it (never the root: whoever answers for the
                    # management node's address could serve their own) and pull once more with it, which the
                    # route client takes only if it chains to the root held (`_keep_signer`).
                    fetched = self.registry.fetch_signer()
                    # A rotation may come with the old signer's revocation: a CRL listing it drops a table it
                    # signed (which a leaked key may have made, of a version no genuine table reaches); and a
                    # signer the node has not seen may be one a revoked intermediate's key minted.
                    self._refresh_revocation_lists(force=True, chain_pem=b"".join(
                        ca.public_bytes(Encoding.PEM) for ca in _certificates(fetched[1])))
        if fetched is not None:
            self._keep_signer(*fetched)
        self._last_refresh = time.monotonic()
        if result.outcome == "accepted":
            self._note_certificate_problem("")
        self._note_registry_problem("")
        return result

    def _keep_signer(self, signer_pem: bytes, chain_pem: bytes) -> None:
        """After a table the fetched signer signed was taken: keep that signer in `tls/route-signer.pem`, and any
        CA on its path to the root held that `tls/chain.pem` lacks, appended to it and to the peers' bundle
        (`tls/ca-bundle.pem`). Only what the route client verified is written, re-encoded: whatever else the
        fetched files held (another root, stray certificates) is never trusted, for tables or for peers."""
        try:
            path = self.routes.verified_signer_chain(signer_pem, chain_pem)
        except RouteRejected as error:  # a 304 answered the pull: nothing the signer signed was taken
            log.warning("the route signer the management node serves was not kept: %s", error.message)
            return
        try:
            held_chain = self.identity.chain_file.read_bytes()
            held = _certificates(held_chain)
            added = b"".join(ca.public_bytes(Encoding.PEM) for ca in path[1:-1] if ca not in held)
            if added:
                chain = held_chain + (b"" if held_chain.endswith(b"\n") or not held_chain else b"\n") + added
                write_atomic(self.identity.chain_file, chain)
                write_atomic(self.identity.bundle_file, self.identity.ca_file.read_bytes() + chain)
            write_atomic(self.identity.signer_file, path[0].public_bytes(Encoding.PEM))
        except OSError as error:  # the table is taken; the next pull fetches the signer again
            log.warning("the new route signer could not be kept in %s: %s", self.identity.dir, error)

    def _recovered_with_pending_key(self, refusal: RegistryError) -> bool:
        """The session signed with the current key was refused; if a key is pending (`csr --new-key`), try it
        (`adopt_pending_certificate`). False when that is refused too: the current key's refusal stands."""
        if refusal.code not in PENDING_KEY_MAY_OPEN or not self.identity.pending_key_file.exists():
            return False
        try:
            self.adopt_pending_certificate()
        except RegistryError as error:
            log.info("a node session with the pending key was refused too: %s", error.message)
            return False
        return True

    def _note_registry_problem(self, problem: str) -> None:
        if (self.setting("registry_problem") or "") != problem:
            with self.db.begin() as session:
                put_setting(session, "registry_problem", problem)

    def _note_certificate_problem(self, problem: str) -> None:
        """For `status`; logged once when it starts, cleared ("") by a table that takes this node's certificate."""
        if (self.setting("certificate_problem") or "") != problem:
            if problem:
                log.error("%s", problem)
            with self.db.begin() as session:
                put_setting(session, "certificate_problem", problem)

    def _refresh_for_peer(self) -> None:
        """§2.3: before refusing a caller, refresh the table, at most once per REFRESH_INTERVAL. Only these
        refreshes count against it: a pull lists only nodes approved before it, and when the caller was approved
        this side cannot tell (its certificate's notBefore is backdated, on the management node's clock), so a
        scheduled pull a moment ago would refuse a node approved just after it until the next one. A caller
        outside the table (suspended, revoked: retried for an hour) still makes at most one pull per interval.
        Under `_pull_lock`, as `_pull_for_recipient`."""
        with self._pull_lock:
            started = time.monotonic()
            if started - self._caller_refresh < REFRESH_INTERVAL:
                return
            self._caller_refresh = started
            try:
                self.sync_routes()
            except DomainError as error:
                log.warning("route refresh failed: %s", error)

    def _pull_for_recipient(self, node_id: str, *, refused_sha256: str | None = None,
                            wait: bool = True) -> str | None:
        """§2.3 on the sending side (a message, a group request to the home node, a download): a node approved
        since the last pull is missing from this table until the next one (every `route_interval`), so before
        refusing a recipient's node pull once, at most once per REFRESH_INTERVAL (a mistyped node id must not
        make every send pull). Waits on the network: call it before the write transaction opens. None when the
        node is in the table; else what to tell the user about the table (`peer_entry`'s `unknown`), so a refusal
        is not taken for a stale table, nor for a wrong node id while the table has expired (`expired_table`).

        The check of the interval, the pull and its record are one step under `_pull_lock` (a server's threads
        call this at once): two threads finding the same new node would otherwise both pass the check and both
        pull, and a thread that finds the interval just taken waits for that pull, whose table may list its node,
        rather than refuse at once. Only a thread missing a node waits, at most the management node's timeout;
        none holds a transaction or `_writing` (the pull writes settings, and every caller pulls before its
        transaction), so the lock cannot close a cycle.

        With `refused_sha256` (the outbox, when the node presented another certificate than the table's): the
        node counts as listed only with another certificate than that one, so a renewal the table has not caught
        up with is pulled for the same way.

        Without `wait` (delivery, whose batch waits on its slowest row): no pull within REFRESH_INTERVAL of a pull
        that failed (a hung management node held each batch its timeout, 15 s), and none behind another thread's
        pull in progress; the row goes on with the table as it is."""
        def listed() -> bool:
            entry = self.routes.peek(node_id)
            return entry is not None and (refused_sha256 is None or entry["cert_sha256"] != refused_sha256)

        if listed():
            return None
        if not wait:
            if time.monotonic() - self._pull_failed_at < REFRESH_INTERVAL:
                return self._unlisted(", and pulling the table from the management node failed less than 30 s ago")
            if not self._pull_lock.acquire(blocking=False):
                return self._unlisted(", and a pull of the table from the management node is under way")
        else:
            self._pull_lock.acquire()
        try:
            started = time.monotonic()
            if started - self._recipient_pull[0] >= REFRESH_INTERVAL:
                failure = None
                try:
                    self.sync_routes()
                except DomainError as error:
                    log.warning("route pull for node %s failed: %s", node_id, error)
                    failure = error.message
                self._recipient_pull = (started, failure)
            when, failure = self._recipient_pull
        finally:
            self._pull_lock.release()
        if listed():  # this thread's pull, or the one it waited for, lists it
            return None
        if expired := self.expired_table():  # whatever the pull did, no node is listed: not the node id's fault
            return f"; no node is: {expired}"
        if failure is not None and self._last_refresh < when:  # no pull has been taken since it failed
            return f", and pulling the table from the management node failed: {failure}"
        ago = time.monotonic() - self._last_refresh
        pulled = "just now" if ago < 1 else f"{ago:.0f} s ago"
        return (f" as pulled from the management node {pulled}: check the node id, and that the management "
                f"node has approved it")

    def _unlisted(self, otherwise: str) -> str:
        """`_pull_for_recipient`'s account without a pull: the expired table if it has, else `otherwise`."""
        expired = self.expired_table()
        return f"; no node is: {expired}" if expired else otherwise

    def peer_entry(self, node_id: str, unknown: str | None = None):
        """The table's entry for `node_id`, or unknown_peer; `unknown` is `_pull_for_recipient`'s account. While
        the held table has expired no node is in it, and the refusal says so rather than doubt the node id."""
        entry = self.routes.peek(node_id)
        if entry is None:
            if expired := self.expired_table():
                raise UnknownPeer(f"node {node_id} cannot be looked up: {expired}", field="to")
            raise UnknownPeer(f"node {node_id} is not in this node's routing table{unknown or ''}", field="to")
        return entry


def _certificates(pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem) if pem.strip() else []
    except ValueError:
        return []
