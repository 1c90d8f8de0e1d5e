"""The reference application node's domain: joining, receiving (docs/protocol.md §5.4), sending, groups,
files, read state and presence, and the outbox. The web layer, the CLI and the server loop all call this.

One `Node` is one data directory. Every method opens its own short database session, so the CLI and the
server process can work on the same node at once (SQLite in WAL mode serialises their writes).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.appnode import filetypes, protocol
from app.appnode.certificate import CertificateNotInstalled, KeyNotHeld, check_issued, key_holder
from app.appnode.config import NodeConfig
from app.appnode.ephemeral import EphemeralMixin
from app.appnode.files import FilesMixin
from app.appnode.messages import (
    FILE_KINDS,
    PATHS,
    Reply,
    address,
    declared_type,
    image_size,
    local_part,
    media_type,
)
from app.appnode.outbox import OutboxMixin
from app.appnode.protocol import (
    CertificateMismatch,
    Conflict,
    InvalidJSON,
    NotAParticipant,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    UnknownPeer,
    UnsupportedCapability,
    UnsupportedMediaType,
    node_of,
)
from app.appnode.reading import ReadingMixin
from app.appnode.registry import Identity, RegistryClient, RegistryError, write_atomic
from app.appnode.sending import SendingMixin
from app.appnode.store import (
    Group,
    Received,
    User,
    get_setting,
    insert_message,
    insert_received,
    open_database,
    put_setting,
    raw_cursor,
    user_row,
    utcnow,
)
from app.appnode.transport import PeerCertificateMismatch, PeerPool, PeerUnreachable, client_context
from app.errors import DomainError
from app.routing.client import OwnEntryMismatch, RouteClient, RouteRejected

# What callers import from here. The message helpers live in messages.py and are re-exported so that their
# callers need not change. The sections' constants are not: a patch must reach the module that reads them.
__all__ = ["Node", "NotJoined", "Reply", "address", "declared_type", "image_size", "local_part", "media_type"]

log = logging.getLogger("mpim.appnode")

REFRESH_INTERVAL = 30.0
# A member confirmation (§8.9) may run inside a request's write transaction: a short answer timeout bounds
# how long one slow member node can hold up this node's other writes.
CONFIRM_TIMEOUT = 5.0
MAX_GROUP_MEMBERS = 3000


class NotJoined(DomainError):
    code, status = "not_joined", 409


def _strict_object(pairs):
    """JSON objects without duplicate keys (docs/protocol.md §2.5)."""
    result = {}
    for key, value in pairs:
        if key in result:
            raise InvalidJSON(f"duplicate key {key!r}")
        result[key] = value
    return result


class Node(EphemeralMixin, SendingMixin, FilesMixin, OutboxMixin, ReadingMixin):
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
        self._last_refresh = 0.0
        self._node_id: str | None = None
        self._delivery_pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._writing = threading.Lock()
        self._hot = None
        self._known_users: set[str] = set()
        self._certificate_lock = threading.Lock()
        # Called after the node's certificate changed (renewal, or one an admin issued): the server reloads.
        self.certificate_changed: list[Callable[[], None]] = []

    # ---- identity ----------------------------------------------------------------------------------------
    @classmethod
    def init(cls, data_dir: str | Path, config: NodeConfig) -> Node:
        """A new node directory: configuration, database and key (the key never leaves it)."""
        data_dir = Path(data_dir)
        if (data_dir / NodeConfig.FILE).exists():
            raise Conflict(f"{data_dir} already holds a node", code="already_initialised")
        config.save(data_dir)
        node = cls(data_dir)
        node.identity.generate_key()
        return node

    def amend_config(self, **wanted: str) -> dict[str, tuple[str, str]]:
        """`init --if-missing` run again with other values (a wrong division or registry the first time):
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

    def apply(self, enrollment_token: str) -> str:
        """SPEC §3 step 2: the A.1 information and a CSR, with the enrollment token."""
        self.registry.fetch_ca()
        csr = Identity.csr_for(self.identity.key())
        application_id = self.registry.apply(enrollment_token, self.information(), csr)
        with self.db.begin() as session:
            put_setting(session, "application_id", application_id)
            put_setting(session, "enrollment_token", enrollment_token)
        return application_id

    def await_approval(self, timeout: float = 3600, interval: float = 2.0) -> str:
        """Poll the application until a ministry admin decides; then fetch the certificate."""
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
                raise RegistryError("still pending", code="application_pending")
            time.sleep(interval)
        node_id = status["node_id"]
        self.identity.store_certificate(self.registry.fetch_certificate(node_id, token))
        with self.db.begin() as session:
            put_setting(session, "node_id", node_id)
            put_setting(session, "enrollment_token", "")  # used up: forget the secret
        self._node_id = node_id
        self._routes = None
        return node_id

    # ---- routes ------------------------------------------------------------------------------------------
    @property
    def routes(self) -> RouteClient:
        with self._routes_lock:
            if self._routes is None:
                if not self.identity.ca_file.exists():
                    raise NotJoined("the CA certificates have not been fetched yet")
                own = self.identity.fingerprint() if self.joined else None
                self._routes = RouteClient(self.identity.ca_file.read_bytes(),
                                           intermediates=self.identity.chain_file.read_bytes(),
                                           node_id=self.node_id if self.joined else None, own_fingerprint=own,
                                           storage_path=self.data_dir / "routes.json")
            return self._routes

    def reload_routes(self) -> None:
        """Re-read the table the server process stored (the CLI's view of the network)."""
        with self._routes_lock:
            self._routes = None

    def sync_routes(self):
        """One `GET /api/v1/routes` round through the route client (signature, rollback, freeze, contents)."""
        node_id = self.node_id

        def fetch(headers):
            return self.registry.with_session(node_id, "GET", "/api/v1/routes", headers=headers)

        mended: set[str] = set()
        while True:
            try:
                result = self.routes.pull(fetch, self.identity.signer_file.read_bytes(),
                                          self.identity.chain_file.read_bytes())
                break
            except RegistryError as error:
                # `status` shows it: a suspended or revoked node cannot open sessions, so its own table,
                # which still lists it, would otherwise look healthy.
                self._note_registry_problem(f"{error.code}: {error.message}")
                raise
            except RouteRejected as error:
                if error.code in mended or error.code not in ("bad_signer", "own_entry_mismatch"):
                    raise
                mended.add(error.code)
                if isinstance(error, OwnEntryMismatch):
                    self.adopt_listed_certificate(error.listed_sha256)  # then pull once more
                else:
                    self.registry.fetch_ca()  # the signer may have been rotated: fetch it and try once more
        self._last_refresh = time.monotonic()
        if result.outcome == "accepted" and self.setting("certificate_problem"):
            with self.db.begin() as session:
                put_setting(session, "certificate_problem", "")
        self._note_registry_problem("")
        return result

    def _note_registry_problem(self, problem: str) -> None:
        if (self.setting("registry_problem") or "") != problem:
            with self.db.begin() as session:
                put_setting(session, "registry_problem", problem)

    def _refresh_for_peer(self) -> None:
        """§2.3: before refusing a caller, refresh the table, at most once per 30 s."""
        if time.monotonic() - self._last_refresh < REFRESH_INTERVAL:
            return
        self._last_refresh = time.monotonic()
        try:
            self.sync_routes()
        except DomainError as error:
            log.warning("route refresh failed: %s", error)

    def peer_entry(self, node_id: str):
        entry = self.routes.peek(node_id)
        if entry is None:
            raise UnknownPeer(f"node {node_id} is not in this node's routing table", field="to")
        return entry

    # ---- certificate renewal --------------------------------------------------------------------------
    def renewal_due(self, now: datetime | None = None) -> bool:
        """The last third of the certificate's validity (SPEC §4 renewal window)."""
        certificate = self.identity.certificate()
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        return (now or utcnow()) >= end - (end - start) / 3

    def renew(self) -> str:
        """A new key and CSR; the old certificate keeps working until the table carries the new one. A pending
        key `csr --new-key` made is used rather than replaced, so the CSR its operator handed out stays good."""
        pending = self.identity.pending_key_file
        key = self.identity.key(pending) if pending.exists() else self.identity.generate_key(pending)
        key_pem = pending.read_bytes()  # a route pull may promote it meanwhile, once the table lists the new one
        pem_chain = self.registry.renew(self.node_id, Identity.csr_for(key, self.node_id))
        with self._certificate_lock:
            write_atomic(self.identity.key_file, key_pem, 0o600)
            self.identity.store_certificate(pem_chain)
            pending.unlink(missing_ok=True)
            return self._use_certificate()

    def certificate_request(self, *, new_key: bool = False) -> tuple[str, str, bool]:
        """A PEM CSR for a ministry admin to renew this node from (the console, or `flask ca renew`), for the
        current key or, with `new_key`, for the pending key (made now, 0600, or reused if one is waiting).
        Returns the CSR, which key ("current" or "pending") and whether a waiting pending key was reused."""
        node_id = self.node_id
        if not new_key:
            return Identity.csr_for(self.identity.key(), node_id), "current", False
        pending = self.identity.pending_key_file
        with self._certificate_lock:
            reused = pending.exists()
            key = self.identity.key(pending) if reused else self.identity.generate_key(pending)
        return Identity.csr_for(key, node_id), "pending", reused

    def adopt_listed_certificate(self, listed_sha256: str) -> str:
        """§4: the table lists this node with another certificate (an admin renewed it from a CSR the operator
        handed over). Fetch the node's current certificate with the node session, check it (chain, node id,
        the listed fingerprint) and install it if this node holds its key, promoting a pending key; otherwise
        record the problem for `status` and raise CertificateNotInstalled. Returns the new fingerprint."""
        node_id = self.node_id
        with self._certificate_lock:
            if self.identity.fingerprint() == self.routes.own_fingerprint == listed_sha256.lower():
                return listed_sha256.lower()  # another thread installed it while this one waited
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
                if self.setting("certificate_problem") != error.message:
                    log.error("%s", error.message)
                    with self.db.begin() as session:
                        put_setting(session, "certificate_problem", error.message)
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

    # ---- receiving (docs/protocol.md §5.4) ------------------------------------------------------------
    def receive(self, kind: str, body: bytes, content_type: str | None, peer_certificate: bytes | None) -> Reply:
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType("send application/json")
        if len(body) > protocol.MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is over {protocol.MAX_BODY_BYTES} bytes")
        try:
            envelope = json.loads(body.decode("utf-8"), object_pairs_hook=_strict_object)
        except (UnicodeDecodeError, ValueError, RecursionError) as error:
            # RecursionError: nested deeper than the parser goes; refused like any other body that is not JSON
            # (a 5xx would have the sender retry it for 48 hours).
            if isinstance(error, InvalidJSON):
                raise
            raise InvalidJSON("the body is not JSON") from None
        if not isinstance(envelope, dict):
            raise InvalidJSON("the body is not a JSON object")
        protocol.check_envelope(envelope, node_id=self.node_id, expected_type=kind)
        self._check_peer(envelope["from_node"], peer_certificate)
        if kind == "download":
            self._require_capability("download")
            return self._serve_download(envelope)
        now = utcnow()
        if kind == "message" and envelope["payload"]["chat_type"] == "single":
            return self._receive_single(envelope, now)
        try:
            enqueued = self._receive_in_transaction(kind, envelope, now)
        except DomainError as error:
            self._withdraw_confirmed(error)
            raise
        if isinstance(enqueued, Reply):
            return enqueued  # a duplicate
        if enqueued:
            self.wake.set()  # relays and announcements to deliver: the loop need not wait for its next round
        return Reply(document=protocol.make_ack(envelope["message_id"], now))

    def _receive_in_transaction(self, kind: str, envelope: dict, now: datetime) -> bool | Reply:
        with self._writing, self.db() as session:
            if kind != "ephemeral":
                # The dedup record first: a repeat fails on the primary key before anything else is done.
                try:
                    insert_received(raw_cursor(session), envelope["from_node"], envelope["message_id"], now)
                except sqlite3.IntegrityError:
                    session.rollback()
                    return self._duplicate(envelope)
            handler = {"message": self._accept_message, "group_op": self._accept_group_op,
                       "ephemeral": self._accept_ephemeral}[kind]
            enqueued = handler(session, envelope)
            session.commit()
        return enqueued

    def _receive_single(self, envelope: dict, now: datetime) -> Reply:
        """A.11, the hot path: dedup record, recipient check and the message in one short transaction."""
        message = envelope["payload"]
        self._require_capability(message["msg_type"])
        self._require_capability("single_chat")
        self._check_content(message)
        with self._raw() as connection:
            cursor = connection.cursor()
            try:
                insert_received(cursor, envelope["from_node"], envelope["message_id"], now)
            except sqlite3.IntegrityError:
                connection.rollback()
                return self._duplicate(envelope)
            recipient = local_part(message["to"])
            if recipient not in self._known_users:  # users are never deleted: a user seen once exists
                if user_row(cursor, recipient) is None:
                    raise NotFound(f"no user {message['to']} here", field="payload.to")
                self._known_users.add(recipient)
            insert_message(cursor, self._message_values(message, [message["sender"]["node_id"], self.node_id]))
            connection.commit()
        return Reply(document=protocol.make_ack(envelope["message_id"], now))

    def _duplicate(self, envelope: dict) -> Reply:
        with self.db() as session:
            seen = session.get(Received, (envelope["from_node"], envelope["message_id"]))
        return Reply(document=protocol.make_ack(envelope["message_id"], seen.received_at, duplicate=True))

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

    def _check_peer(self, from_node: str, certificate: bytes | None) -> None:
        if not certificate:
            raise CertificateMismatch("federation requests need a client certificate", field="from_node")
        fingerprint = hashlib.sha256(certificate).hexdigest()
        if self.routes.is_trusted_peer(from_node, fingerprint):
            return
        self._refresh_for_peer()
        if self.routes.is_trusted_peer(from_node, fingerprint):
            return
        if self.routes.peek(from_node) is None:
            raise UnknownPeer(f"node {from_node} is not in this node's routing table", field="from_node")
        raise CertificateMismatch(f"the client certificate is not the one the routing table lists for {from_node}",
                                  field="from_node")

    def _require_capability(self, name: str) -> None:
        if name not in self.config.capabilities:
            raise UnsupportedCapability(f"this node does not offer {name}")

    def _check_content(self, message: dict) -> None:
        msg_type, content = message["msg_type"], message["content"]
        if msg_type in FILE_KINDS and content["size"] > self.config.limit(msg_type):
            raise PayloadTooLarge(f"a {msg_type} of {content['size']} bytes is over this node's limit of "
                                  f"{self.config.limit(msg_type)}", field="payload.content.size")
        if msg_type == "file" and content["mime_type"] in filetypes.EXECUTABLE_TYPES:
            raise UnsupportedMediaType("this node does not accept executables", field="payload.content.mime_type")
        thumbnail = content.get("thumbnail") if msg_type == "image" else None
        if thumbnail:
            data = base64.b64decode(thumbnail["data"])
            filetypes.check_size(len(data), filetypes.LIMITS["thumbnail"])
            try:
                filetypes.check_declared(data, thumbnail["format"])
            except UnsupportedMediaType as error:
                raise UnsupportedMediaType(f"thumbnail: {error}", field="payload.content.thumbnail.data") from None

    def _accept_message(self, session: Session, envelope: dict) -> bool:
        message = envelope["payload"]
        self._require_capability(message["msg_type"])
        self._require_capability("group")  # single chats take _receive_single
        self._check_content(message)
        me = self.node_id
        home = node_of(message["to"])
        if home != me:  # relayed by the home node (protocol.check_envelope made sure)
            group = session.get(Group, (local_part(message["to"]), home))
            self._store_message(session, message, self._member_nodes(group) if group else [home, me])
            return
        group = session.get(Group, (local_part(message["to"]), me))
        if group is None or group.dismissed:
            raise NotFound(f"no group {message['to']}", field="payload.to")
        sender = address(message["sender"]["user_id"], message["sender"]["node_id"])
        if sender not in group.members:
            raise NotAParticipant(f"{sender} is not a member of {message['to']}", field="payload.sender")
        self._store_message(session, message, self._member_nodes(group))
        self._fan_out(session, message, [peer for peer in self._member_nodes(group)
                                         if peer not in (me, envelope["from_node"])])
        return True

    @staticmethod
    def _message_values(message: dict, participants: Iterable[str]) -> dict:
        sender = message["sender"]
        return dict(message_id=message["message_id"], conversation_id=message["conversation_id"],
                    chat_type=message["chat_type"], sender_address=address(sender["user_id"], sender["node_id"]),
                    origin_node=sender["node_id"], to=message["to"], msg_type=message["msg_type"],
                    document=message, send_time=message["send_time"], received_at=utcnow(),
                    participant_nodes=sorted(set(participants)))

    def _store_message(self, session: Session, message: dict, participants: Iterable[str]) -> dict:
        """Keep an A.9 message once, however many paths bring it (e.g. a relay of our own)."""
        values = self._message_values(message, participants)
        insert_message(raw_cursor(session), values)
        return values

    @staticmethod
    def _member_nodes(group: Group | None) -> list[str]:
        return sorted({node_of(member) for member in group.members}) if group else []

    # ---- groups (A.12) -------------------------------------------------------------------------------
    def _accept_group_op(self, session: Session, envelope: dict) -> bool:
        self._require_capability("group")
        op = envelope["payload"]
        if "seq" in op:
            self._apply_announcement(session, op)
        else:
            if op["op"] == "create":
                raise Conflict("a group is created by its home node, never requested", field="payload.op")
            self._apply_at_home(session, op["op"], op["group_id"], op["operator"], op.get("target_user_ids", []),
                                op.get("group_info", {}))
            return True
        return False

    def _apply_announcement(self, session: Session, op: dict) -> None:
        key = (op["group_id"], op["home_node_id"])
        group = session.get(Group, key)
        if group is not None and op["seq"] <= group.seq:
            return  # already applied (or older): acknowledged and ignored
        info = op["group_info"]
        me = self.node_id
        if not any(node_of(member) == me for member in info["members"]):
            if group is not None:
                session.delete(group)
            return
        # Only this node knows its users: the home node relies on this refusal (§8.9) to keep phantoms out.
        # Only the users the operation adds (or makes owner) are checked, so a phantom let in before this
        # check existed blocks no later operation.
        if op["op"] in ("create", "invite", "transfer_owner"):
            known = set(group.members) if group is not None and op["op"] == "invite" else set()
            for user in op.get("target_user_ids", []):
                if node_of(user) == me and user not in known and session.get(User, local_part(user)) is None:
                    raise NotFound(f"no user {user} here", field="payload.target_user_ids")
        if group is None:
            group = Group(group_id=op["group_id"], home_node_id=op["home_node_id"], seq=op["seq"],
                          name=info["name"], owner=info["owner"], members=[])
            session.add(group)
        group.name, group.notice, group.owner = info["name"], info.get("notice", ""), info["owner"]
        group.members, group.seq, group.dismissed = list(info["members"]), op["seq"], op["op"] == "dismiss"

    def _apply_at_home(self, session: Session, op: str, group_id: str, operator: str, targets: list[str],
                       info: dict) -> Group:
        """The home node applies an operation and announces the group's whole new state. One that changes
        nothing (inviting members, a member joining, renaming to the same name) takes no seq and is not
        announced (§8.9); kicking someone who is not a member is refused."""
        me = self.node_id
        group = session.get(Group, (group_id, me))
        if group is None:
            raise NotFound(f"no group {group_id}@{me}", field="payload.group_id")
        if group.dismissed:
            raise Conflict("the group is dismissed", field="payload.group_id")
        members, removed, before = list(group.members), [], group.info()
        owner_only = op in ("dismiss", "kick", "update_info", "transfer_owner")
        if owner_only and operator != group.owner:
            raise PermissionDenied(f"only the owner may {op}", field="payload.operator")
        if op not in ("join",) and operator not in members:
            raise NotAParticipant(f"{operator} is not a member", field="payload.operator")
        if op == "dismiss":
            removed, members = members, []
            group.dismissed = True
        elif op == "invite":
            added = [target for target in targets if target not in members]
            self._check_new_members(session, added)
            members += added
        elif op == "join":
            if operator not in members:
                members.append(operator)
        elif op == "quit":
            if operator == group.owner:
                raise Conflict("the owner cannot quit: transfer the group first", field="payload.operator")
            members.remove(operator)
            removed = [operator]
        elif op == "kick":
            if group.owner in targets:
                raise Conflict("the owner cannot be kicked", field="payload.target_user_ids")
            strangers = [target for target in targets if target not in members]
            if strangers:
                raise NotAParticipant(f"not a member: {', '.join(strangers)}", field="payload.target_user_ids")
            removed = list(targets)
            members = [member for member in members if member not in removed]
        elif op == "update_info":
            group.name = info.get("name", group.name)
            group.notice = info.get("notice", group.notice)
        elif op == "transfer_owner":
            if targets[0] not in members:
                raise NotAParticipant(f"{targets[0]} is not a member", field="payload.target_user_ids")
            self._check_new_members(session, targets[:1])  # never to a member added before this check existed
            group.owner = targets[0]
        if len(members) > MAX_GROUP_MEMBERS:
            raise Conflict(f"a group has at most {MAX_GROUP_MEMBERS} members", field="payload.target_user_ids")
        group.members = members
        if not group.dismissed and group.info() == before:
            return group  # nothing changed: no new state to number or announce
        group.seq += 1
        confirmed = self._confirm_new_members(group, before, op, operator, targets)
        self._announce(session, group, op, operator, targets, removed, confirmed)
        return group

    def _check_new_members(self, session: Session, users: Iterable[str],
                           field: str = "payload.target_user_ids") -> None:
        """A member must be someone: a user of this node, or of a node the routing table lists with `group`
        (§6). A phantom would inflate unread counts, keep envelopes to an unknown node retrying, and could be
        made owner, leaving nobody to manage the group."""
        me = self.node_id
        for user in users:
            node = node_of(user)
            if node == me:
                if session.get(User, local_part(user)) is None:
                    raise NotFound(f"no user {user} on this node", field=field)
                continue
            entry = self.routes.peek(node)
            if entry is None:
                raise NotFound(f"{user}: node {node} is not in the routing table", field=field)
            if "group" not in entry["capabilities"]:
                raise UnsupportedCapability(f"{user}: node {node} does not take part in groups", field=field)

    @staticmethod
    def _announcement(group: Group, op: str, operator: str, targets: list[str]) -> dict:
        announcement = {"op": op, "group_id": group.group_id, "home_node_id": group.home_node_id,
                        "operator": operator, "group_info": group.info(), "seq": group.seq}
        if targets:
            announcement["target_user_ids"] = list(targets)
        protocol.validate("group_op", announcement)
        return announcement

    def _announce(self, session: Session, group: Group, op: str, operator: str, targets: list[str],
                  removed: list[str], confirmed: dict[str, dict] | None = None) -> None:
        """Queue the announcement to every member's node; a node that confirmed it already gets the same
        envelope again (acknowledged as a duplicate), so the outbox still records every announcement."""
        announcement = self._announcement(group, op, operator, targets)
        me, confirmed = self.node_id, confirmed or {}
        for peer in sorted({node_of(user) for user in [*group.members, *removed]} - {me}):
            self._enqueue(session, peer, "group_op", confirmed.get(peer) or protocol.make_envelope(
                from_node=me, to_node=peer, type="group_op", payload=announcement))

    def _confirm_new_members(self, group: Group, before: dict | None, op: str, operator: str,
                             targets: list[str]) -> dict[str, dict]:
        """Only a user's own node knows whether the user exists (§8.9). Before the home node applies a state
        that gives another node new members (or the ownership), it delivers the announcement to that node at
        once; the node refuses it (`not_found`) if it lacks the user. A refusal, or no answer, refuses the
        operation. Returns the confirmed envelopes by node. Nodes are asked one by one: if a later one
        refuses, those that took the state are sent the unchanged one with a higher seq (`_withdraw`)."""
        me = self.node_id
        old_members = set(before["members"]) if before else set()
        gaining = {member for member in group.members if member not in old_members}
        if before is None or group.owner != before["owner"]:
            gaining.add(group.owner)
        peers = sorted({node_of(user) for user in gaining} - {me})
        if not peers:
            return {}
        announcement = self._announcement(group, op, operator, targets)
        confirmed: dict[str, dict] = {}
        for peer in peers:
            envelope = protocol.make_envelope(from_node=me, to_node=peer, type="group_op", payload=announcement)
            refusal = self._deliver_now(peer, envelope, sorted(user for user in gaining if node_of(user) == peer))
            if refusal is None:
                confirmed[peer] = envelope
                continue
            if confirmed:  # undone after the caller's rollback, when the group is as it was (`_withdraw`)
                refusal.withdraw = (group.group_id, group.seq, sorted(confirmed), group.name, group.owner)
            raise refusal
        return confirmed

    def _withdraw_confirmed(self, error: DomainError) -> None:
        """Called with a refusal after the caller's rollback: withdraws a state some nodes confirmed."""
        if getattr(error, "withdraw", None):
            self._withdraw(*error.withdraw)

    def _withdraw(self, group_id: str, seq: int, peers: list[str], name: str, owner: str) -> None:
        """Some nodes took a state that another node then refused: the home node numbers its unchanged state
        (or, for a group never created, a dismissal) above the withdrawn one and announces it to them."""
        me = self.node_id
        with self._writing, self.db() as session:
            group = session.get(Group, (group_id, me))
            if group is None:  # a refused create: the replicas go, the id stays taken
                group = Group(group_id=group_id, home_node_id=me, name=name, notice="", owner=owner, members=[],
                              seq=seq, dismissed=True)
                session.add(group)
                op = "dismiss"
            else:
                op = "update_info"
            group.seq = max(group.seq, seq) + 1
            announcement = self._announcement(group, op, group.owner, [])
            for peer in peers:
                self._enqueue(session, peer, "group_op", protocol.make_envelope(
                    from_node=me, to_node=peer, type="group_op", payload=announcement))
            session.commit()
        self.deliver()  # at once: until then those nodes show members the group never had

    def _deliver_now(self, peer: str, envelope: dict, gaining: list[str]) -> DomainError | None:
        """One synchronous attempt, outside the outbox: None when accepted, else the error to refuse with."""
        entry = self.routes.peek(peer)
        users = ", ".join(gaining)
        if entry is None:
            return NotFound(f"node {peer} is not in the routing table", field="payload.target_user_ids")
        body = json.dumps(envelope, ensure_ascii=False).encode()
        try:
            response = self.peers.post(entry["endpoint"], PATHS["group_op"], body, pin=entry["cert_sha256"],
                                       timeout=CONFIRM_TIMEOUT)
        except (PeerUnreachable, PeerCertificateMismatch) as failure:
            return Conflict(f"cannot confirm members {users}: node {peer} did not answer ({failure}); "
                            "nothing changed, try again later", field="payload.target_user_ids")
        if response.status == 200:
            return None
        code = self._error_code(response.body)
        if response.status == 429 or response.status >= 500 or code in ("unknown_peer", "certificate_mismatch"):
            return Conflict(f"cannot confirm members {users}: node {peer} answered HTTP {response.status} "
                            f"({code}); nothing changed, try again later", field="payload.target_user_ids")
        return self._peer_error(response)

    def create_group(self, owner_user_id: str, name: str, members: Iterable[str] = (), notice: str = "") -> Group:
        """A new group homed on this node, announced (seq 1) to every member's node."""
        me = self.node_id
        owner = address(owner_user_id, me)
        with self.db() as session:
            if session.get(User, owner_user_id) is None:
                raise NotFound(f"no local user {owner_user_id}")
            initial = [owner] + [member for member in dict.fromkeys(members) if member != owner]
            self._check_new_members(session, initial[1:], field="members")
            group = Group(group_id="g" + secrets.token_hex(6), home_node_id=me, name=name, notice=notice,
                          owner=owner, members=initial, seq=1)
            try:
                confirmed = self._confirm_new_members(group, None, "create", owner, initial[1:])
            except DomainError as error:
                session.rollback()
                self._withdraw_confirmed(error)
                raise
            session.add(group)
            self._announce(session, group, "create", owner, initial[1:], [], confirmed)
            session.commit()
        self.deliver()
        return group

    def group_operation(self, user_id: str, group_address: str, op: str, targets: Iterable[str] = (),
                        info: dict | None = None) -> str:
        """A local user's A.12 operation: applied here when this node is home, else requested from home at
        once. Returns "applied" (here), "accepted" (by the home node) or "queued" (home unreachable, retried);
        a refusal by the home node is raised, as one here is."""
        me = self.node_id
        operator = address(user_id, me)
        group_id, home = local_part(group_address), node_of(group_address)
        targets, info = list(dict.fromkeys(targets)), dict(info or {})
        try:
            row_id = self._group_operation(me, operator, group_id, home, op, targets, info)
        except DomainError as error:
            self._withdraw_confirmed(error)
            raise
        if home == me:
            self.deliver()
            return "applied"
        refusals: dict[int, DomainError] = {}
        outcome = self.deliver([row_id], claimed=True, refusals=refusals)
        if row_id in refusals:
            raise refusals[row_id]
        return "accepted" if outcome["delivered"] else "queued"

    def _group_operation(self, me: str, operator: str, group_id: str, home: str, op: str, targets: list[str],
                         info: dict) -> int | None:
        """One transaction of `group_operation`: applied here, or the request queued (its outbox row id)."""
        row_id = None
        with self.db() as session:
            if op == "invite":  # the home node checks too; this says so at once, even while it is unreachable
                self._check_new_members(session, targets)
            if home == me:
                self._apply_at_home(session, op, group_id, operator, targets, info)
            else:
                request = {"op": op, "group_id": group_id, "home_node_id": home, "operator": operator}
                if targets:
                    request["target_user_ids"] = targets
                if info:
                    request["group_info"] = info
                protocol.validate("group_op", request)
                self.peer_entry(home)
                row_id = self._enqueue(session, home, "group_op", protocol.make_envelope(
                    from_node=me, to_node=home, type="group_op", payload=request), claim=True)
            session.commit()
        return row_id

    def groups(self, user_id: str | None = None) -> list[Group]:
        with self.db() as session:
            rows = session.scalars(select(Group).where(Group.dismissed.is_(False))).all()
        if user_id is None:
            return list(rows)
        mine = address(user_id, self.node_id)
        return [group for group in rows if mine in group.members]
