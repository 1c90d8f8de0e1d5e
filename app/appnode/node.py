"""The reference application node's domain, `Node`: the web layer, the CLI and the server loop all call it.

One `Node` is one data directory. Every method opens its own short database session, so the CLI and the
server process can work on the same node at once (SQLite in WAL mode serialises their writes).

This module holds what every part of the node stands on: the constructor and its shared state, the raw
write connection and joining the network (identity). Each other job is a mixin in a module of its own, since
the single class had grown to 1,600 lines (STYLE rule 7): route_table.py (the routing table, docs/protocol.md
§2.2-§2.3), receiving.py (§5.4), groups.py, group_home.py and group_confirmation.py (A.12), ephemeral.py
(A.13, A.15), sending.py (A.9, A.11), files.py (A.10), outbox.py (§6), reading.py and renewal.py (§4
certificates); messages.py holds what they share.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from app.appnode.certificate import KeyNotHeld, check_issued, key_holder
from app.appnode.config import NodeConfig, check_division, check_endpoint, check_listen, check_registry_url
from app.appnode.ephemeral import EphemeralMixin
from app.appnode.files import FilesMixin
from app.appnode.group_confirmation import GroupConfirmationMixin
from app.appnode.group_home import GroupHomeMixin
from app.appnode.groups import GroupsMixin
from app.appnode.messages import Reply, address, declared_type, image_size, local_part, media_type
from app.appnode.outbox import DELIVERY_PARALLELISM, OutboxMixin
from app.appnode.peer_slots import PeerSlots
from app.appnode.protocol import Conflict
from app.appnode.reading import ReadingMixin
from app.appnode.receiving import ReceivingMixin
from app.appnode.registry import (
    CannotWrite,
    Identity,
    NotJoined,
    RegistryClient,
    RegistryError,
    registry_context,
    write_private,
)
from app.appnode.renewal import RenewalMixin
from app.appnode.route_table import REFRESH_INTERVAL, RouteTableMixin
from app.appnode.sending import SendingMixin
from app.appnode.store import get_setting, put_setting
from app.appnode.store_schema import open_database
from app.appnode.transport import PeerPool, client_context
from app.appnode.trust_anchor import TrustAnchorMixin
from app.routing.client import RouteClient

# What callers import from here. The message helpers live in messages.py and are re-exported so that their
# callers need not change. The sections' constants are not: a patch must reach the module that reads them.
__all__ = ["Node", "NotJoined", "Reply", "address", "declared_type", "image_size", "local_part", "media_type"]

log = logging.getLogger("mpim.appnode")


class Node(ReceivingMixin, GroupsMixin, GroupHomeMixin, GroupConfirmationMixin, EphemeralMixin, SendingMixin,
           FilesMixin, OutboxMixin, ReadingMixin, RenewalMixin, RouteTableMixin, TrustAnchorMixin):
    """One node data directory. The state every section shares is set up here; each mixin's docstring names
    what it uses of it and of the other mixins."""

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)
        self.config = NodeConfig.load(self.data_dir)
        self.db = open_database(self.data_dir / "node.db")
        self.engine = self.db.kw["bind"]
        self.identity = Identity(self.data_dir)
        self.registry = RegistryClient(self.config.registry_url, self.identity,
                                       ca_file=self.config.registry_ca_file)
        self.peers = PeerPool(lambda: client_context(self.identity.cert_file, self.identity.key_file,
                                                     self.identity.bundle_file))
        self.files_dir = self.data_dir / "files"
        self.wake = threading.Event()
        self._routes: RouteClient | None = None
        self._routes_lock = threading.Lock()
        self._last_refresh = 0.0  # the last pull taken, scheduled or on demand: how fresh the table is
        # When the sending side last pulled for a recipient's node, and that pull's error (None: it was taken).
        self._recipient_pull: tuple[float, str | None] = (-REFRESH_INTERVAL, None)
        self._caller_refresh = -REFRESH_INTERVAL  # when the receiving side last pulled for a caller not in it
        self._pull_failed_at = -REFRESH_INTERVAL  # when a pull last failed: delivery does not pull for 30 s after
        self._pull_lock = threading.Lock()  # those two pulls: check the interval, pull and record in one step
        self._expired_logged: str | None = None  # the `expires_at` of the expired table last logged as held still
        self._node_id: str | None = None
        self._delivery_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._peer_slots = PeerSlots(DELIVERY_PARALLELISM)
        self._writing = threading.Lock()
        self._hot = None
        self._known_users: set[str] = set()
        self._certificate_lock = threading.Lock()
        # Called after the node's certificate changed (renewal, or one an admin issued): the server reloads.
        self.certificate_changed: list[Callable[[], None]] = []

    def close(self) -> None:
        """The process is stopping: deliveries in flight fail now (they stay in the outbox and are retried
        after the restart) and the delivery threads end, so the process exits within gunicorn's grace."""
        self.peers.abort()
        with self._pool_lock:
            pool, self._delivery_pool = self._delivery_pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    @contextmanager
    def _raw(self):
        """The process's own DBAPI connection, bypassing the ORM, for one short write transaction; whatever
        is not committed is rolled back. Writers of this process take turns on `_writing`: SQLite has one
        writer at a time, and a thread waiting on a Python lock wakes at once, where SQLite's busy handler
        would sleep for milliseconds. One connection kept open saves a pool checkout per message."""
        with self._writing:
            if self._hot is None:
                self._hot = self.engine.raw_connection()
            try:
                yield self._hot
            finally:
                self._hot.rollback()  # a no-op after a commit

    # ---- identity ----------------------------------------------------------------------------------------
    @classmethod
    def init(cls, data_dir: str | Path, config: NodeConfig, *, ui_password: str | None = None) -> Node:
        """A new node directory: configuration, database, key (the key never leaves it) and, when given, the
        page's operator password. All or nothing: the listen address, division code, endpoint, the management
        node's address and its CA file are checked before anything is written, and a failure after that removes
        what init made (a half-made node was refused as already_initialised by the next init, and failed every
        other command)."""
        data_dir = Path(data_dir)
        if (data_dir / NodeConfig.FILE).exists():
            raise Conflict(f"{data_dir} already holds a node", code="already_initialised")
        check_listen(config.listen, "listen")
        check_division(config.division_code, "division_code")
        check_endpoint(config.endpoint, "endpoint")
        check_registry_url(config.registry_url, "registry_url")
        registry_context(config.registry_ca_file)
        if data_dir.exists() and not data_dir.is_dir():
            raise CannotWrite(f"{data_dir} is a file, not a directory to create the node in")
        with _undone_on_failure(data_dir):
            config.save(data_dir)
            node = cls(data_dir)
            try:
                node.identity.generate_key()
                if ui_password is not None:
                    write_private(data_dir / "ui_password", ui_password.encode())
            except BaseException:
                node.engine.dispose()  # the database file is about to go
                raise
        return node

    def amend_config(self, **wanted: str) -> dict[str, tuple[str, str]]:
        """`init --if-missing` run again with other values (a wrong division, registry or its CA file the first time):
        before the node has applied, they replace the stored ones; after, they would contradict what the
        management node holds, so they are refused. Returns what changed, as name → (old, new)."""
        path = self.data_dir / NodeConfig.FILE
        stored = json.loads(path.read_text("utf-8"))  # the file itself, without the environment's overrides
        changes = {name: (stored.get(name), value) for name, value in wanted.items() if stored.get(name) != value}
        if not changes:
            return {}
        if self.setting("application_id") is not None or self.joined:
            listed = "; ".join(f"{name} {old} (given {new})" for name, (old, new) in changes.items())
            raise Conflict(f"{self.data_dir} holds a node that has already applied with {listed}: use another data "
                           f"directory (NAME), or remove this one to start over", code="already_applied")
        if "listen" in changes:
            check_listen(changes["listen"][1], "listen")
        if "registry_url" in changes:
            check_registry_url(changes["registry_url"][1], "registry_url")
        if "registry_ca_file" in changes:  # before the file is written: a CA file that cannot be read changes nothing
            registry_context(changes["registry_ca_file"][1])
        stored.update({name: new for name, (_, new) in changes.items()})
        path.write_text(json.dumps(stored, ensure_ascii=False, indent=2) + "\n", "utf-8")
        self.config = NodeConfig.load(self.data_dir)
        self.registry = RegistryClient(self.config.registry_url, self.identity, ca_file=self.config.registry_ca_file)
        return changes

    @property
    def node_id(self) -> str:
        if self._node_id is None:
            with self.db() as session:
                self._node_id = get_setting(session, "node_id")
        if self._node_id is None:
            raise NotJoined("this node has not joined the network yet")
        return self._node_id

    def notice_joined_again(self) -> bool:
        """Whether `join --again`, run in another process beside this server, gave the node a new id (and with it a
        new key and certificate, written before the id). The server then takes them up as a renewal does (the
        `certificate_changed` hooks: `run` reloads its worker, which reads them), where it used to answer as the
        old id, refusing messages for the new one as `wrong_recipient`, until an operator restarted it."""
        if self._node_id is None:  # not read yet: the next reader reads the stored one
            return False
        stored = self.setting("node_id")
        if stored is None or stored == self._node_id:
            return False
        former = self._node_id
        log.info("this node joined again as %s (was %s): serving as %s from now on", stored, former, stored)
        self._node_id, self._routes = stored, None
        try:
            self._use_certificate()
        except BaseException:  # taken up by the next check, not left half done
            self._node_id = former
            raise
        return True

    @property
    def joined(self) -> bool:
        try:
            return bool(self.node_id) and self.identity.has_certificate()
        except NotJoined:
            return False

    def setting(self, key: str) -> str | None:
        with self.db() as session:
            return get_setting(session, key)

    def information(self) -> dict:
        """A.1 node information for the application."""
        config = self.config
        return {"division_code": config.division_code, "org_name": config.org_name,
                "system_name": config.system_name, "vendor": config.vendor, "endpoint": config.endpoint,
                "contact": config.contact, "capabilities": list(config.capabilities)}

    def apply(self, enrollment_token: str, *, keep_root: bool = False) -> str:
        """SPEC §3 step 2: the A.1 information and a CSR, with the enrollment token. The root, the chain and the
        route signer are fetched first, unless `keep_root` (`join --again`: the root is the one `trust-root` took
        out of band, §10, never one from the network)."""
        if not keep_root:
            self.registry.fetch_ca()
            key = self.identity.key()
        else:  # a new key, kept as the pending key until its certificate is installed: the old one stays certified
            pending = self.identity.pending_key_file
            key = self.identity.key(pending) if pending.exists() else self.identity.generate_key(pending)
        csr = Identity.csr_for(key)
        application_id = self.registry.apply(enrollment_token, self.information(), csr)
        with self.db.begin() as session:
            put_setting(session, "application_id", application_id)
            put_setting(session, "enrollment_token", enrollment_token)
        return application_id

    def await_approval(self, timeout: float = 3600, interval: float = 2.0, *, keep_root: bool = False) -> str:
        """Poll the application until a ministry admin decides; then fetch the certificate. With `keep_root`
        (`join --again`) it is installed only if it chains to the root held and names the node id approved
        (CertificateNotInstalled otherwise: the node keeps its certificate and id)."""
        with self.db() as session:
            application_id = get_setting(session, "application_id")
            token = get_setting(session, "enrollment_token")
        if application_id is None or token is None:
            raise NotJoined("apply with an enrollment token first")
        deadline = time.monotonic() + timeout
        while True:
            status = self.registry.application(token, application_id)
            if status["status"] == "rejected":
                raise Conflict(f"the application was rejected: {status.get('reason', '')}",
                               code="application_rejected")
            if status.get("node_id"):
                break
            if time.monotonic() > deadline:
                raise RegistryError(f"application {application_id} still pending: a ministry admin must approve it "
                                    f"(console 接入申请 / Applications, or `flask applications approve "
                                    f"{application_id} --user NAME`); run the same command again to keep waiting",
                                    code="application_pending")
            time.sleep(interval)
        node_id = status["node_id"]
        issued = self.registry.fetch_certificate(node_id, token)
        if keep_root:
            self._install_enrolled_again(issued, node_id)
        else:
            self.identity.store_certificate(issued)
        with self.db.begin() as session:
            put_setting(session, "node_id", node_id)
            put_setting(session, "enrollment_token", "")  # used up: forget the secret
        self._node_id = node_id
        self._routes = None
        return node_id

    def _install_enrolled_again(self, issued: bytes, node_id: str) -> None:
        """`join --again`: the certificate must chain to the root held, name `node_id` and certify the pending key
        `apply` made, which becomes the node's key (CertificateNotInstalled otherwise: nothing changes)."""
        tls = self.identity
        checked = check_issued(issued, node_id=node_id, listed_sha256=None, root_pem=tls.ca_file.read_bytes(),
                               chain_pem=tls.chain_file.read_bytes())
        if tls.has_certificate() and tls.fingerprint() == checked.fingerprint:
            return  # installed by a run cut short before it recorded the node id: the caller records it now
        pending = tls.pending_key_file
        # "current" too once the key is the pending one: a run cut short after writing the key, before the
        # certificate, is finished by running it again
        holder = key_holder(checked.certificate, tls.key(), tls.key(pending)) if pending.exists() else None
        if holder is None or (holder == "current" and tls.key_file.read_bytes() != pending.read_bytes()):
            raise KeyNotHeld(f"the management node issued certificate {checked.fingerprint} for a key other than the "
                             f"one this node applied with ({pending})")
        write_private(tls.key_file, pending.read_bytes())
        tls.store_certificate(issued)
        pending.unlink(missing_ok=True)  # last: until the certificate is in place, a run again needs it


@contextmanager
def _undone_on_failure(data_dir: Path):
    """`Node.init`'s writing: if it fails, what it created goes (the directory, and the parents it made, when it
    was not there; else the entries it added), and an OSError is the refusal cannot_write, naming the path."""
    made = None  # the outermost directory that is not there yet
    missing = data_dir
    while not missing.exists() and missing != missing.parent:
        made, missing = missing, missing.parent
    before = set() if made else set(os.listdir(data_dir))
    try:
        yield
    except BaseException as error:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        else:
            for name in set(os.listdir(data_dir)) - before:
                path = data_dir / name
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        if isinstance(error, OSError):
            which = f" ({error.filename})" if error.filename and Path(error.filename) != data_dir else ""
            raise CannotWrite(f"cannot create the node in {data_dir}{which}: {error.strerror or error}") from None
        raise
