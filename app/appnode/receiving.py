"""Receiving (docs/protocol.md §5.4): a peer's envelope is checked (strict JSON: UTF-8 without a BOM, no
duplicate keys; the envelope, the caller's certificate against the routing table, this node's capabilities and
limits), recorded for deduplication (all but ephemeral batches) and handed on: a single-chat message takes a
short path of its own (A.11), a group message is stored and, at the home node, fanned out; group operations,
ephemeral batches and download requests go to their sections' mixins.
"""

from __future__ import annotations

import base64
import hashlib
import sqlite3
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy.orm import Session

from app import strict_json
from app.appnode import filetypes, protocol
from app.appnode.messages import FILE_KINDS, Reply, address, local_part
from app.appnode.protocol import (
    CertificateMismatch,
    Conflict,
    InvalidJSON,
    NotAParticipant,
    NotFound,
    PayloadTooLarge,
    UnknownPeer,
    UnsupportedCapability,
    UnsupportedMediaType,
    node_of,
)
from app.appnode.store import Group, Message, Received, insert_message, insert_received, raw_cursor, user_row, utcnow


class ReceivingMixin:
    """The receiving side of a `Node`. Relies on the node's `db`, `config`, `node_id`, `routes`, `wake`,
    `_raw`, `_writing`, `_known_users`, `_refresh_for_peer` and `expired_table`; hands envelopes to
    `_accept_group_op` and `_receive_group_request` (GroupsMixin), `_accept_ephemeral` (EphemeralMixin) and
    `_serve_download` (FilesMixin), and fans group messages out with `_fan_out` (SendingMixin)."""

    def receive(self, kind: str, body: bytes, content_type: str | None, peer_certificate: bytes | None) -> Reply:
        if (content_type or "").split(";")[0].strip().lower() != "application/json":
            raise UnsupportedMediaType("send application/json")
        if len(body) > protocol.MAX_BODY_BYTES:
            raise PayloadTooLarge(f"the body is over {protocol.MAX_BODY_BYTES} bytes")
        try:
            envelope = strict_json.parse(body)
        except strict_json.NotStrictJSON as error:
            # Nesting deeper than the parser goes is refused here too: a 5xx would have the sender retry it for
            # 48 hours.
            raise InvalidJSON(str(error)) from None
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
        if kind == "group_op" and "seq" not in envelope["payload"]:
            return self._receive_group_request(envelope, now)
        enqueued = self._receive_in_transaction(kind, envelope, now)
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
            self._check_id_not_taken(message, cursor.execute(
                "SELECT origin_node, conversation_id FROM messages WHERE message_id = ?",
                (message["message_id"],)).fetchone())
            insert_message(cursor, self._message_values(message, [message["sender"]["node_id"], self.node_id]))
            connection.commit()
        return Reply(document=protocol.make_ack(envelope["message_id"], now))

    def _duplicate(self, envelope: dict) -> Reply:
        with self.db() as session:
            seen = session.get(Received, (envelope["from_node"], envelope["message_id"]))
        return Reply(document=protocol.make_ack(envelope["message_id"], seen.received_at, duplicate=True))

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
            if expired := self.expired_table():  # no caller is listed: the caller's operator should know why
                raise UnknownPeer(f"node {from_node} cannot be checked: {expired}", field="from_node")
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
            try:  # 43,692 characters pass the schema and may decode to one byte over the limit
                filetypes.check_size(len(data), filetypes.LIMITS["thumbnail"])
                filetypes.check_declared(data, thumbnail["format"])
            except (PayloadTooLarge, UnsupportedMediaType) as error:
                raise type(error)(f"thumbnail: {error}", field="payload.content.thumbnail.data") from None

    def _accept_message(self, session: Session, envelope: dict) -> bool:
        """Store a group message; True when it queued relays to the other member nodes (the home node)."""
        message = envelope["payload"]
        self._require_capability(message["msg_type"])
        self._require_capability("group")  # single chats take _receive_single
        self._check_content(message)
        me = self.node_id
        home = node_of(message["to"])
        kept = session.get(Message, message["message_id"])
        if kept is not None:
            self._check_id_not_taken(message, (kept.origin_node, kept.conversation_id))
        if home != me:  # relayed by the home node (protocol.check_envelope made sure)
            group = session.get(Group, (local_part(message["to"]), home))
            self._store_message(session, message, self._member_nodes(group) if group else [home, me])
            return False
        group = session.get(Group, (local_part(message["to"]), me))
        if group is None or group.dismissed:
            raise NotFound(f"no group {message['to']}", field="payload.to")
        sender = address(message["sender"]["user_id"], message["sender"]["node_id"])
        if sender not in group.members:
            raise NotAParticipant(f"{sender} is not a member of {message['to']}", field="payload.sender")
        if kept is not None:
            return False  # this very message, kept and relayed already (its dedup record forgotten since)
        self._store_message(session, message, self._member_nodes(group))
        self._fan_out(session, message, [peer for peer in self._member_nodes(group)
                                         if peer not in (me, envelope["from_node"])])
        return True

    @staticmethod
    def _check_id_not_taken(message: dict, kept: tuple[str, str] | None) -> None:
        """A message is kept once by its id (§6): an id this node holds for a message of another origin or
        conversation is refused, not acknowledged and dropped (or, at a home node, relayed unkept)."""
        if kept is not None and tuple(kept) != (message["sender"]["node_id"], message["conversation_id"]):
            raise Conflict(f"message id {message['message_id']} is another message's here", field="payload.message_id")

    @staticmethod
    def _message_values(message: dict, participants: Iterable[str]) -> dict:
        sender = message["sender"]
        return dict(message_id=message["message_id"], conversation_id=message["conversation_id"],
                    chat_type=message["chat_type"], sender_address=address(sender["user_id"], sender["node_id"]),
                    origin_node=sender["node_id"], to=message["to"], msg_type=message["msg_type"],
                    document=message, send_time=protocol.sortable_time(message["send_time"]), received_at=utcnow(),
                    participant_nodes=sorted(set(participants)))

    def _store_message(self, session: Session, message: dict, participants: Iterable[str]) -> dict:
        """Keep an A.9 message once, however many paths bring it (e.g. a relay of our own)."""
        values = self._message_values(message, participants)
        insert_message(raw_cursor(session), values)
        return values

    @staticmethod
    def _member_nodes(group: Group | None) -> list[str]:
        return sorted({node_of(member) for member in group.members}) if group else []
