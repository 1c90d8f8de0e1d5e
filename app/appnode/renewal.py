"""Certificate renewal (docs/protocol.md §4): the node's own renewal in the last third of its certificate's
validity, the CSR its operator hands a ministry admin, and installing the certificate an admin issued for one
of the node's keys. Kept apart from route_table.py, which pulls the routing table that asks for the last of these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from app.appnode.certificate import CertificateNotInstalled, KeyNotHeld, check_issued, key_holder
from app.appnode.outbox import retry_after_seconds
from app.appnode.registry import Identity, RegistryError, write_atomic
from app.appnode.store import utcnow

log = logging.getLogger("mpim.appnode")

# The node loop asks whether renewal is due this often; a refusal with Retry-After brings the next ask forward
# to that delay (capped as a peer's, at an hour), but never sooner than RENEWAL_RETRY_MIN.
RENEWAL_CHECK_EVERY = 3600.0
RENEWAL_RETRY_MIN = 5.0

# Session refusals (docs/protocol.md §4) in which the management node says this node's certificate is revoked:
# `status` shows them as the certificate problem they are, not only as the registry's refusal.
CERTIFICATE_REVOKED = {
    "node_revoked": "certificate {sha256} revoked by the management node, which revoked node {node_id} "
                    "(a revocation is final): to enrol this node again under a new node id, keeping its database, "
                    "get a new enrollment token and run `join --again --token TOKEN` (docs/operations.md, "
                    "\"A node enrolled again\")",
    "certificate_revoked": "certificate {sha256} revoked by the management node: this node can open no node session "
                           "until a ministry admin renews node {node_id} from a CSR for a new key made here "
                           "(`python -m app.appnode csr --new-key`; a key revoked as compromised is never "
                           "certified again); the next route pull then opens its session with that key and "
                           "installs the certificate",
}
# The session refusal that a certificate issued for the pending key may answer: the node has a valid certificate,
# but not for the current key, whose signature is refused. certificate_revoked, certificate_expired and
# no_certificate say the node has no valid certificate at all (told only to a key once certified for the node,
# as the current key is): the pending key could open no session either, on every pull until an admin renews it.
PENDING_KEY_MAY_OPEN = frozenset({"bad_signature"})


class RenewalMixin:
    """A `Node`'s certificate. Relies on the node's `identity`, `registry`, `routes`, `peers`, `node_id`,
    `certificate_changed` hooks, `_certificate_lock` and `_note_certificate_problem`."""

    def renewal_opens(self) -> datetime:
        """The start of the last third of the certificate's validity (SPEC §4 renewal window); NotJoined before
        `join` fetched the certificate."""
        self.node_id  # noqa: B018 (NotJoined, the refusal every command gives before `join`)
        certificate = self.identity.certificate()
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        return end - (end - start) / 3

    def renewal_due(self, now: datetime | None = None) -> bool:
        return (now or utcnow()) >= self.renewal_opens()

    def renew_if_due(self, now: datetime | None = None) -> float:
        """The node loop's renewal round (§4): renews once the last third of the validity has begun, and returns
        the seconds until the next round, RENEWAL_CHECK_EVERY. A refusal with Retry-After (503 `ca_unavailable`
        while the management node's CA key cannot be opened) keeps the current certificate (and the pending key,
        for the next try), is logged in one line, and returns that delay, as `retry_after_seconds` caps a
        peer's, at least RENEWAL_RETRY_MIN. Other failures are raised: the loop logs them and asks again in
        RENEWAL_CHECK_EVERY."""
        if not self.renewal_due(now):
            return RENEWAL_CHECK_EVERY
        try:
            fingerprint = self.renew()
        except RegistryError as error:
            if error.retry_after is None:
                raise
            delay = min(max(retry_after_seconds(error.retry_after), RENEWAL_RETRY_MIN), RENEWAL_CHECK_EVERY)
            log.warning("certificate renewal put off (%s, HTTP %s): %s; keeping certificate %s, valid until %s; "
                        "trying again in %.0f s", error.code, error.status, str(error.message).rstrip("."),
                        self.identity.fingerprint(),
                        self.identity.certificate().not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ"), delay)
            return delay
        log.info("renewed the node certificate: %s", fingerprint)
        return RENEWAL_CHECK_EVERY

    def renew(self) -> str:
        """A new key and CSR; the old certificate keeps working until the table carries the new one. A pending
        key `csr --new-key` made is used rather than replaced, so the CSR its operator handed out stays good."""
        node_id = self.node_id  # before the pending key is made: a node that has not joined keeps no key for it
        pending = self.identity.pending_key_file
        key = self.identity.key(pending) if pending.exists() else self.identity.generate_key(pending)
        key_pem = pending.read_bytes()  # a route pull may promote it meanwhile, once the table lists the new one
        pem_chain = self.registry.renew(node_id, Identity.csr_for(key, node_id))
        with self._certificate_lock:
            write_atomic(self.identity.key_file, key_pem, 0o600)
            self.identity.store_certificate(pem_chain)
            pending.unlink(missing_ok=True)
            return self._use_certificate()

    def certificate_request(self, *, new_key: bool = False,
                            deliver: Callable[[str], None] | None = None) -> tuple[str, str, bool]:
        """A PEM CSR for a ministry admin to renew this node from (the console, or `flask ca renew`), for the
        current key or, with `new_key`, for the pending key (made now, 0600, or reused if one is waiting).
        `deliver` (`csr --out` writing its file) is handed the CSR before a new pending key is kept: when it
        fails, no key is left that the next run would reuse with a CSR nobody has.
        Returns the CSR, which key ("current" or "pending") and whether a waiting pending key was reused."""
        node_id = self.node_id
        if not new_key:
            request = Identity.csr_for(self.identity.key(), node_id)
            if deliver is not None:
                deliver(request)
            return request, "current", False
        pending = self.identity.pending_key_file
        with self._certificate_lock:
            reused = pending.exists()
            key = self.identity.key(pending) if reused else Identity.new_key()
            request = Identity.csr_for(key, node_id)
            if deliver is not None:
                deliver(request)
            if not reused:
                self.identity.keep_key(key, pending)
        return request, "pending", reused

    def adopt_listed_certificate(self, listed_sha256: str) -> str:
        """§4: the table lists this node with another certificate (an admin renewed it from a CSR the operator
        handed over). Fetch the node's current certificate with the node session, check it (chain, node id,
        the listed fingerprint) and install it if this node holds its key, promoting a pending key; otherwise
        record the problem for `status` and raise CertificateNotInstalled. Returns the new fingerprint."""
        with self._certificate_lock:
            if self.identity.fingerprint() == self.routes.own_fingerprint == listed_sha256.lower():
                return listed_sha256.lower()  # another thread installed it while this one waited
            return self._install_current_certificate(listed_sha256)

    def adopt_pending_certificate(self) -> str | None:
        """§4, after a key compromise: the management node refuses a session signed with the current key, whose
        certificates are all revoked, but a ministry admin may have renewed the node from the CSR `csr --new-key`
        made. Open the session with the pending key (RegistryError if that is refused too), fetch the node's
        current certificate with it and install it as `adopt_listed_certificate` does, the pending key becoming
        the current key. None if no key is pending any more (another process installed it meanwhile)."""
        pending = self.identity.pending_key_file
        with self._certificate_lock:
            if not pending.exists():
                return None
            self.registry.session_token(self.node_id, fresh=True, key_file=pending)
            return self._install_current_certificate(None)

    def _install_current_certificate(self, listed_sha256: str | None) -> str:
        """Under `_certificate_lock`: the node's current certificate, fetched with the node session and checked
        (against `listed_sha256` when a table lists one), installed if it certifies a key this node holds."""
        node_id = self.node_id
        try:
            issued = check_issued(self.registry.current_certificate(node_id), node_id=node_id,
                                  listed_sha256=listed_sha256, root_pem=self.identity.ca_file.read_bytes(),
                                  chain_pem=self.identity.chain_file.read_bytes())
            pending = self.identity.pending_key_file
            holder = key_holder(issued.certificate, self.identity.key(),
                                self.identity.key(pending) if pending.exists() else None)
            if holder is None:
                raise KeyNotHeld(
                    f"the management node issued certificate {issued.fingerprint} for a key this node does "
                    f"not hold; it keeps certificate {self.identity.fingerprint()} and routing table version "
                    f"{self.routes.version}. Make a CSR here (`python -m app.appnode csr`, or `csr --new-key`) "
                    f"and ask a ministry admin to renew node {node_id} from it")
        except CertificateNotInstalled as error:
            self._note_certificate_problem(error.message)
            raise
        if holder == "pending":
            write_atomic(self.identity.key_file, pending.read_bytes(), 0o600)
        self.identity.store_certificate(issued.pem_chain)
        if holder == "pending":
            pending.unlink(missing_ok=True)
        fingerprint = self._use_certificate()
        log.info("installed certificate %s, which the management node issued for this node's %s key",
                 fingerprint, holder)
        return fingerprint

    def _use_certificate(self) -> str:
        """After the certificate file changed: the route client expects it, new connections present it."""
        fingerprint = self.identity.fingerprint()
        self.routes.set_identity(self.node_id, fingerprint)
        self.peers.reset()
        for hook in self.certificate_changed:
            hook()
        return fingerprint
