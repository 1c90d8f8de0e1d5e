"""Files (A.10): a file message carries only a description; the bytes stay at the origin node, which
serves them to the nodes taking part in the conversation (whole or a range), and a receiving node downloads
them on demand, checking size, checksum and magic bytes before it keeps them. Both ends store files the same
way (`_keep_file`), so storing lives here with serving and downloading.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

from app.appnode import filetypes, protocol
from app.appnode.messages import FILE_KINDS, PATHS, Reply, address, declared_type, media_type
from app.appnode.protocol import (
    NotAParticipant,
    NotFound,
    RangeNotSatisfiable,
    UnsupportedCapability,
    UnsupportedMediaType,
    node_of,
)
from app.appnode.registry import write_atomic
from app.appnode.store import Message, StoredFile, utcnow
from app.appnode.transport import PeerUnreachable

MEDIA_RETENTION = timedelta(days=30)


class FilesMixin:
    """Serving, downloading and storing a `Node`'s files. Relies on the node's `db`, `data_dir`,
    `files_dir`, `config`, `node_id`, `peers` and `peer_entry`, on `_require_participant` (EphemeralMixin)
    and `_peer_error` (OutboxMixin)."""

    def _serve_download(self, envelope: dict) -> Reply:
        request, from_node, me = envelope["payload"], envelope["from_node"], self.node_id
        with self.db() as session:
            message = session.get(Message, request["message_id"])
            if (message is None or message.origin_node != me
                    or message.document["content"].get("file_id") != request["file_id"]):
                raise NotFound("no such file in a message of this node", field="payload.file_id")
            if message.chat_type == "single":
                allowed = {node_of(message.to)}
            else:
                allowed = {node_of(message.to), *message.participant_nodes}
            if from_node not in allowed:
                raise NotAParticipant(f"node {from_node} takes no part in {message.conversation_id}")
            stored = session.get(StoredFile, (me, request["file_id"]))
            if stored is None:
                raise NotFound("the file is gone", field="payload.file_id")
            kept_until = stored.expire_at or (protocol.parse_timestamp(message.send_time) + MEDIA_RETENTION)
            if utcnow() > kept_until:
                raise protocol.FileExpired("the file is no longer kept")
        data = (self.data_dir / stored.path).read_bytes()
        headers = {"Content-Type": media_type(message.msg_type, message.document["content"], data)}
        status = 200
        wanted = request.get("range")
        if wanted is not None:
            offset = wanted["offset"]
            if offset >= len(data):
                raise RangeNotSatisfiable(f"offset {offset} is past the end ({len(data)} bytes)",
                                          field="payload.range.offset")
            end = min(len(data), offset + wanted.get("length", len(data)))
            headers["Content-Range"] = f"bytes {offset}-{end - 1}/{len(data)}"
            data, status = data[offset:end], 206
        headers["X-Content-SHA256"] = hashlib.sha256(data).hexdigest()
        return Reply(status=status, body=data, headers=headers)

    def download(self, user_id: str, message_id: str) -> StoredFile:
        """Fetch a message's file from its origin node, check every byte, keep it here."""
        me = self.node_id
        with self.db() as session:
            message = session.get(Message, message_id)
            if message is None or message.msg_type not in FILE_KINDS:
                raise NotFound(f"no file message {message_id}")
            self._require_participant(session, address(user_id, me), message)
            content = message.document["content"]
            stored = session.get(StoredFile, (message.origin_node, content["file_id"]))
            if stored is not None:
                return stored
        origin = message.origin_node
        entry = self.peer_entry(origin)
        if "download" not in entry["capabilities"]:
            raise UnsupportedCapability(f"node {origin} does not serve downloads")
        envelope = protocol.make_envelope(from_node=me, to_node=origin, type="download",
                                          payload={"file_id": content["file_id"], "message_id": message_id})
        try:
            response = self.peers.post(entry["endpoint"], PATHS["download"], json.dumps(envelope).encode(),
                                       pin=entry["cert_sha256"])
        except PeerUnreachable as error:
            raise protocol.Unavailable(str(error)) from None
        if response.status != 200:
            raise self._peer_error(response)
        data = response.body
        kind = message.msg_type
        filetypes.check_size(len(data), self.config.limit(kind))
        digest = hashlib.sha256(data).hexdigest()
        if response.header("X-Content-SHA256") != digest or digest != content["sha256"]:
            raise UnsupportedMediaType("the downloaded bytes do not match their checksum; discarded")
        declared = declared_type(kind, content)
        filetypes.check_declared(data, declared)
        return self._keep_file(origin, content["file_id"], kind, declared, data, digest, content.get("file_name"),
                               protocol.parse_timestamp(content["expire_at"]) if kind == "file" else None)

    def file_bytes(self, stored: StoredFile) -> bytes:
        return (self.data_dir / stored.path).read_bytes()

    def _keep_file(self, origin: str, file_id: str, kind: str, declared: str, data: bytes, digest: str,
                   file_name: str | None, expire_at: datetime | None) -> StoredFile:
        path = self.files_dir / origin / file_id
        write_atomic(path, data, 0o600)
        with self.db.begin() as session:
            row = session.get(StoredFile, (origin, file_id))
            if row is None:
                row = StoredFile(origin_node=origin, file_id=file_id, kind=kind, declared=declared, size=len(data),
                                 sha256=digest, path=str(path.relative_to(self.data_dir)), file_name=file_name,
                                 expire_at=expire_at, created_at=utcnow())
                session.add(row)
        return row
