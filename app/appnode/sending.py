"""Sending (A.9, A.11): local users, and their messages to a user or a group. A message is stored here
and its envelopes queued in the outbox in one transaction; a group message goes to the group's home node, or,
from the home node, to every member's node, each as that node takes it (docs/protocol.md §6 capabilities).
File messages (A.5-A.7, A.14) are checked and kept here first, at their origin.
"""

from __future__ import annotations

import logging
import mimetypes
import secrets
import stat
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.appnode import filetypes, outbox, part_files, protocol, validation
from app.appnode.messages import FILE_KINDS, address, image_size, local_part
from app.appnode.protocol import (
    Conflict,
    NotAParticipant,
    NotFound,
    SchemaViolation,
    UnsupportedCapability,
    UnsupportedMediaType,
    node_of,
)
from app.appnode.store import (
    Group,
    Message,
    Outbox,
    User,
    had_group_conversation,
    insert_message,
    insert_outbox,
    is_group,
    user_row,
    utcnow,
)
from app.errors import DomainError, ValidationFailed

log = logging.getLogger("mpim.appnode")

FILE_RETENTION = timedelta(days=7)


def voice_duration(clip: Path, stated: int | None) -> int:
    """An A.6 clip's `duration_ms`: the recording's own length, read from its bytes. One `stated` (what the user
    typed) further from it than filetypes.voice_tolerance_ms allows is refused naming the real length, and so is a
    recording outside the schema's 1 to 300,000 ms: a 23 ms clip went out as whatever length was typed."""
    real = filetypes.voice_duration_ms(clip)
    if not 1 <= real <= filetypes.VOICE_MAX_MS:
        raise SchemaViolation(f"the recording is {real} ms long; a voice message is 1 to {filetypes.VOICE_MAX_MS:,} ms "
                              "(5 minutes)", field="content.duration_ms")
    if stated is not None:
        filetypes.check_voice_duration(real, stated)
    return real


class SendingMixin:
    """Sending for a `Node`. Relies on the node's `db`, `config`, `node_id`, `routes`, `peer_entry`,
    `_pull_for_recipient`, `_raw` and `_writing`; on `_message_values`, `_store_message` and `_member_nodes`
    (ReceivingMixin), `_enqueue` and `deliver` (OutboxMixin) and `_keep_file` (FilesMixin)."""

    def add_user(self, user_id: str, user_name: str, org_code: str | None = None,
                 org_name: str | None = None) -> User:
        validation.validate("sender", {"user_id": user_id, "user_name": user_name, "node_id": "0" * 20,
                                     "org_code": org_code or self.config.org_code,
                                     "org_name": org_name or self.config.org_name, "client_type": "pc"})
        with self.db.begin() as session:
            if session.get(User, user_id) is not None:
                raise Conflict(f"user {user_id} exists")
            if session.get(Group, (user_id, self.node_id)) is not None:  # docs/protocol.md §3: one namespace
                raise Conflict(f"{user_id} is the id of a group of this node: a user and a group of one node cannot "
                               "share an id (an address names one or the other)")
            user = User(user_id=user_id, user_name=user_name, org_code=org_code or self.config.org_code,
                        org_name=org_name or self.config.org_name)
            session.add(user)
        return user

    def users(self) -> list[User]:
        with self.db() as session:
            return list(session.scalars(select(User).order_by(User.user_id)))

    def send(self, user_id: str, to: str, msg_type: str, content: dict, *, client_type: str = "pc",
             deliver: bool = True) -> Message:
        """A.9 from a local user to a user (single chat) or a group address; delivered through the outbox.
        With `deliver`, the envelopes are attempted at once (the CLI); otherwise the node loop sends them."""
        me = self.node_id
        target = node_of(to)
        unknown = self._pull_for_recipient(target) if target != me else None  # not inside the transaction
        with self._raw() as connection:
            cursor = connection.cursor()
            user = user_row(cursor, user_id)
            if user is None:
                raise NotFound(f"no local user {user_id}")
            grouped = is_group(cursor, local_part(to), target)
            if not grouped and had_group_conversation(cursor, f"g:{to}"):
                raise NotFound(f"no group {to} here any more: it was dismissed or this node's users left it",
                               field="to")
            message = self._new_message(user, client_type, "group" if grouped else "single", to, msg_type, content)
            if not grouped:
                if target == me:
                    if user_row(cursor, local_part(to)) is None:
                        raise NotFound(f"no local user {to}")
                    recipients = []
                else:
                    self.peer_entry(target, unknown)
                    message = self._payload_for(target, message)
                    recipients = [target]
                values = self._message_values(message, [me, target])
                insert_message(cursor, values)
                claim_until = utcnow() + timedelta(seconds=outbox.CLAIM_SECONDS) if deliver else utcnow()
                ids = [insert_outbox(cursor, peer=peer, kind="message", next_attempt_at=claim_until,
                                     envelope=protocol.make_envelope(from_node=me, to_node=peer, type="message",
                                                                     payload=message)) for peer in recipients]
                connection.commit()
        if grouped:
            values, ids = self._send_to_group(message, deliver, unknown)
        if deliver and ids:
            refusals: dict[int, DomainError] = {}
            self.deliver(ids, claimed=True, refusals=refusals)
            refusal = refusals.get(ids[0]) if target != me else None
            if refusal is not None:  # its one next hop refused it for good: keep no message nobody will get
                self._forget(values["message_id"])
                raise type(refusal)(f"{refusal.message} (node {target}); the message was not kept",
                                    code=refusal.code, status=refusal.status, field=refusal.field)
        return Message(**values)

    def _forget(self, message_id: str) -> None:
        with self._writing, self.db.begin() as session:
            session.execute(delete(Outbox).where(Outbox.message_id == message_id))
            session.execute(delete(Message).where(Message.message_id == message_id))

    def _new_message(self, user: tuple, client_type: str, chat_type: str, to: str, msg_type: str,
                     content: dict) -> dict:
        user_id, user_name, org_code, org_name = user
        sender = {"user_id": user_id, "user_name": user_name, "node_id": self.node_id, "org_code": org_code,
                  "org_name": org_name, "client_type": client_type}
        message = {"message_id": protocol.new_message_id(), "chat_type": chat_type, "conversation_id": "",
                   "sender": sender, "to": to, "msg_type": msg_type, "content": content,
                   "send_time": protocol.format_timestamp(utcnow())}
        try:
            message["conversation_id"] = protocol.conversation_id_for(message)
        except ValueError as error:
            raise SchemaViolation(str(error), field="to") from None
        validation.validate("message", message)
        return message

    def _send_to_group(self, message: dict, deliver: bool, unknown: str | None = None) -> tuple[dict, list[int]]:
        """A group message goes to the home node, or, from the home node, to every member's node."""
        me, to = self.node_id, message["to"]
        target = node_of(to)
        sender = address(message["sender"]["user_id"], me)
        with self.db() as session:
            group = session.get(Group, (local_part(to), target))
            if group is None or group.dismissed:
                raise NotFound(f"no group {to} here any more: it was dismissed or this node's users left it",
                               field="to")
            if sender not in group.members:
                raise NotAParticipant(f"{sender} is not a member of {to}")
            participants = self._member_nodes(group)
            if target == me:
                values = self._store_message(session, message, participants)
                ids = self._fan_out(session, message, [peer for peer in participants if peer != me], claim=deliver)
            else:
                self.peer_entry(target, unknown)
                message = self._payload_for(target, message)  # the home node relays what it takes
                values = self._store_message(session, message, participants)
                ids = [self._enqueue(session, target, "message", protocol.make_envelope(
                    from_node=me, to_node=target, type="message", payload=message), claim=deliver)]
                for peer in participants:  # what the home node will skip, recorded here so the sender hears
                    reason = self._unreachable(peer, message) if peer not in (me, target) else None
                    if reason:
                        self._record_skip(session, peer, message, reason)
            session.commit()
        return values, ids

    def _unreachable(self, peer: str, message: dict) -> str | None:
        """Why `peer` cannot take this message (docs/protocol.md §6 capabilities), or None. A sticker reaches a
        node that takes text (as its alt text); a node missing from the table is left to the outbox, which
        retries it while the next table may bring it back."""
        entry = self.routes.peek(peer)
        if entry is None:
            return None
        capabilities = entry["capabilities"]
        chat = "group" if message["chat_type"] == "group" else "single_chat"
        if chat not in capabilities:
            return f"node {peer} does not take {chat.replace('_', ' ')} messages"
        msg_type = message["msg_type"]
        if msg_type in capabilities or (msg_type == "sticker" and "text" in capabilities):
            return None
        return f"node {peer} does not take {msg_type} messages"

    def _payload_for(self, peer: str, message: dict) -> dict:
        """The message as `peer` takes it: a sticker becomes a text of its alt text where the table does not
        list `sticker` for the node (§6); refused when the node takes nothing of it."""
        reason = self._unreachable(peer, message)
        if reason:
            raise UnsupportedCapability(reason)
        return self._as_taken_by(peer, message)

    def _as_taken_by(self, peer: str, message: dict) -> dict:
        """A message `_unreachable` let through, as `peer` takes it (a sticker as its alt text, if need be)."""
        entry = self.routes.peek(peer)
        if message["msg_type"] == "sticker" and entry is not None and "sticker" not in entry["capabilities"]:
            return {**message, "msg_type": "text", "content": {"text": message["content"]["alt_text"]}}
        return message

    def _fan_out(self, session: Session, message: dict, peers: Iterable[str], *, claim: bool = False) -> list[int]:
        """The home node's copies of a group message to member nodes: each as the node takes it, and none to a
        node that takes nothing of it (recorded as skipped, never attempted: it could only be refused)."""
        ids = []
        for peer in peers:
            reason = self._unreachable(peer, message)
            if reason:
                self._record_skip(session, peer, message, reason)
                continue
            ids.append(self._enqueue(session, peer, "message", protocol.make_envelope(
                from_node=self.node_id, to_node=peer, type="message", payload=self._as_taken_by(peer, message)),
                claim=claim))
        return ids

    def _record_skip(self, session: Session, peer: str, message: dict, reason: str) -> None:
        log.info("message %s is not sent to %s: %s", message["message_id"], peer, reason)
        now = utcnow()
        session.add(Outbox(peer_node=peer, kind="message", message_id=message["message_id"], state="skipped",
                           envelope=protocol.make_envelope(from_node=self.node_id, to_node=peer, type="message",
                                                           payload=message),
                           attempts=0, next_attempt_at=now, last_error=reason[:300], finished_at=now))

    def undelivered(self, message_id: str) -> dict[str, str]:
        """The nodes a message sent from here did not reach for good (skipped or refused), with why."""
        with self.db() as session:
            rows = session.scalars(select(Outbox).where(Outbox.message_id == message_id,
                                                        Outbox.state.in_(("failed", "skipped"))))
            return {row.peer_node: row.last_error or row.state for row in rows}

    def waiting(self, message_id: str) -> list[str]:
        """The nodes a message sent from here has not reached yet, its envelope still queued for them."""
        with self.db() as session:
            return list(session.scalars(select(Outbox.peer_node).where(Outbox.message_id == message_id,
                                                                       Outbox.state == "pending")))

    def send_text(self, user_id: str, to: str, text: str, **kwargs) -> Message:
        return self.send(user_id, to, "text", {"text": text}, **kwargs)

    def file_to_send(self, path: Path, kind: str) -> Path:
        """A file a local user sends (`send-file PATH`), once it is known to be a regular file within this node's
        limit for `kind`: a FIFO would block until some writer came, and a file of any size would be copied only
        to be refused for its size (`send_file` checks the bytes it copies again)."""
        if kind not in FILE_KINDS:
            raise SchemaViolation(f"unknown file kind {kind!r}")
        if not stat.S_ISREG(path.stat().st_mode):
            raise ValidationFailed(f"{path} is no regular file: send-file sends a file's bytes",
                                   code="not_a_regular_file")
        filetypes.check_size(path.stat().st_size, self.config.limit(kind))
        return path

    def send_file(self, user_id: str, to: str, data: bytes | Path, kind: str, **kwargs) -> Message:
        """A.5 image, A.6 voice, A.7 file or A.14 sticker: the bytes (`data`, or a file's) are checked (size,
        magic bytes) and kept here, at the origin; the message carries their description and peers download them
        (A.10). A file is copied into a part file beside where it will be kept a chunk at a time, hashed on the
        way, never held in memory whole (files run to 1 GiB); only an image's size is read from the whole of it
        (images are at most 20 MiB)."""
        if kind not in FILE_KINDS:
            raise SchemaViolation(f"unknown file kind {kind!r}")
        limit = self.config.limit(kind)
        filetypes.check_size(data.stat().st_size if isinstance(data, Path) else len(data), limit)
        file_id = f"{kind[0]}-{secrets.token_hex(12)}"
        with part_files.part_file(self.files_dir / self.node_id, file_id) as (part, handle):
            size, digest, head = part_files.copy_into(data, handle, limit)
            return self._send_file_kept_in(part, size, digest, head, user_id, to, kind, file_id, **kwargs)

    def _send_file_kept_in(self, data: Path, size: int, digest: str, head: bytes, user_id: str, to: str,
                           kind: str, file_id: str, *, file_name: str | None = None, declared: str | None = None,
                           duration_ms: int | None = None, sticker: dict | None = None, **kwargs) -> Message:
        """`send_file` once the bytes are in the part file `data` (locked by the caller)."""
        if not size:
            raise SchemaViolation("the file is empty")
        extension = (file_name or "").rpartition(".")[2].lower() if file_name and "." in file_name else ""
        if kind == "file":
            # MIME types are case-insensitive (RFC 2045) and A.7 takes them in lower case; Debian's
            # /etc/mime.types guesses audio/AMR for .amr, and an operator may type Application/PDF.
            declared = (declared or mimetypes.guess_type(file_name or "")[0] or "application/octet-stream").lower()
            if declared in filetypes.EXECUTABLE_TYPES:
                raise UnsupportedMediaType("this node does not send executables")
        elif kind == "voice":  # A.6 voice is AAC: another type given was ignored, and the clip sent as AAC
            if declared and filetypes.DECLARED.get(declared.split(";")[0].strip().lower()) != "AAC":
                raise UnsupportedMediaType(f"a voice message is AAC, not {declared}")
            declared = "AAC"
        else:
            # A format name or a MIME type, read as check_declared reads it: jpeg and image/jpeg are JPG.
            named = (declared or extension).split(";")[0].strip().lower()
            declared = filetypes.DECLARED.get(named) or (declared or filetypes.sniff(head) or "").upper()
        filetypes.check_declared(head, declared)
        now = utcnow()
        if kind == "image":
            if declared not in ("JPG", "PNG", "GIF"):
                raise UnsupportedMediaType(f"an image is JPG, PNG or GIF, not {declared or 'an unrecognised format'}")
            width, height = image_size(data, declared)
            content = {"file_id": file_id, "format": declared, "size": size, "width": width, "height": height,
                       "sha256": digest}
            if file_name:
                content["file_name"] = file_name
        elif kind == "voice":
            content = {"file_id": file_id, "format": "AAC", "duration_ms": voice_duration(data, duration_ms),
                       "size": size, "sha256": digest}
        elif kind == "file":
            content = {"file_id": file_id, "file_name": file_name or file_id, "mime_type": declared,
                       "size": size, "sha256": digest,
                       "expire_at": protocol.format_timestamp(now + FILE_RETENTION).replace(".000Z", "Z")}
        else:
            if declared not in ("GIF", "PNG"):
                raise UnsupportedMediaType(f"a sticker is GIF or PNG, not {declared or 'an unrecognised format'}")
            content = {**(sticker or {}), "file_id": file_id, "format": declared, "size": size,
                       "sha256": digest}
        # Kept first, so a peer that takes the message can download at once. A DomainError from send means no
        # message was kept (refused before it was stored, or for good by its one next hop): neither is the file.
        self._keep_file(self.node_id, file_id, kind, declared, data, digest, file_name,
                        now + FILE_RETENTION if kind == "file" else None)
        try:
            return self.send(user_id, to, kind, content, **kwargs)
        except DomainError:
            self._discard_file(self.node_id, file_id)
            raise
        except BaseException:
            # Ended part way (Ctrl-C; SIGTERM or SIGHUP through the CLI's ended_cleanly), as likely as not while the
            # recipient's node was looked up at the management node, before any message was stored: the file goes
            # then. A message stored already stays in the outbox, which the node loop delivers: so does its file.
            if not self._file_sent(file_id):
                self._discard_file(self.node_id, file_id)
            raise
