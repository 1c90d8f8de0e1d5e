"""Files (A.10): a file message carries only a description; the bytes stay at the origin node, which
serves them to the nodes taking part in the conversation (whole or a range), and a receiving node downloads
them on demand, checking size, checksum and magic bytes before it keeps them. Both ends store files the same
way (`_keep_file`), so storing lives here with serving and downloading.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.appnode import filetypes, part_files, protocol
from app.appnode.messages import (
    FILE_KINDS,
    PATHS,
    Reply,
    address,
    declared_type,
    image_size,
    image_sizes,
    media_type,
)
from app.appnode.protocol import (
    Conflict,
    NotAParticipant,
    NotFound,
    PayloadTooLarge,
    RangeNotSatisfiable,
    UnsupportedCapability,
    UnsupportedMediaType,
    node_of,
)
from app.appnode.registry import CannotRead
from app.appnode.store import Message, StoredFile, utcnow
from app.appnode.transport import CHUNK_BYTES, PeerAnswerTooLarge, PeerUnreachable

MEDIA_RETENTION = timedelta(days=30)


def _chunks(path: Path, offset: int, end: int) -> Iterator[bytes]:
    """Bytes [offset, end) of a file, a chunk at a time: a 1 GiB file is never held in memory whole."""
    with path.open("rb") as stream:
        stream.seek(offset)
        left = end - offset
        while left > 0 and (chunk := stream.read(min(CHUNK_BYTES, left))):
            left -= len(chunk)
            yield chunk


def _sha256_of(path: Path, offset: int = 0, end: int | None = None) -> str:
    digest = hashlib.sha256()
    for chunk in _chunks(path, offset, path.stat().st_size if end is None else end):
        digest.update(chunk)
    return digest.hexdigest()


def _head(path: Path) -> bytes:
    """What sniffing needs (filetypes.SNIFF_BYTES), without reading the rest."""
    with path.open("rb") as stream:
        return stream.read(filetypes.SNIFF_BYTES)


def _check_size(size: int, content: dict) -> None:
    """A file's `size` against its length in bytes: a client shows it before the file is fetched, and the
    download's limit and time allowance are measured by it. A download reads no byte past it (more is refused as
    too large), and fewer bytes, or a kept file another message states another size for, are refused, as other
    bytes or another type are."""
    if size != content["size"]:
        raise UnsupportedMediaType(f"the file is {size} bytes, not the {content['size']} its message states; "
                                   "refused")


def _check_dimensions(path: Path, kind: str, content: dict) -> None:
    """An image's (or a sticker's, those of them it states) `width` and `height` against its bytes: a client lays the
    picture out by them before it is fetched, so a message that states another size is refused, as other bytes
    or another type are."""
    if kind not in ("image", "sticker") or ("width" not in content and "height" not in content):
        return
    data = path.read_bytes()  # images are at most 20 MiB
    sizes = image_sizes(data, content["format"])  # as stored, or an EXIF-turned JPEG's as displayed
    width, height = image_size(data, content["format"])
    # A sticker may state either side alone (the schema makes each optional): only the sides stated are compared.
    stated = {side: content[side] for side in ("width", "height") if side in content}
    if not any(all(stated.get(side, real) == real for side, real in zip(("width", "height"), size, strict=True))
               for size in sizes):
        said = (f"{stated['width']}x{stated['height']}" if len(stated) == 2
                else " ".join(f"{side} {value}" for side, value in stated.items()))
        raise UnsupportedMediaType(f"the image is {width}x{height}, not the {said} its message states; refused")


def _check_duration(path: Path, kind: str, content: dict) -> None:
    """A voice clip's `duration_ms` against the recording's own length (filetypes.voice_tolerance_ms apart at
    most), when it is downloaded from a peer: a client shows it before the clip is fetched, so a message that
    states another length is refused, as other bytes or another type are. Bytes whose length cannot be read are
    refused too."""
    if kind == "voice":
        filetypes.check_voice_duration(filetypes.voice_duration_ms(path), content["duration_ms"])


class FilesMixin:
    """Serving, downloading and storing a `Node`'s files. Relies on the node's `db`, `_writing`, `data_dir`,
    `files_dir`, `config`, `node_id`, `peers`, `peer_entry` and `_pull_for_recipient`, on `_require_reader`
    (EphemeralMixin) and `_peer_error` (OutboxMixin)."""

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
        path = self.data_dir / stored.path
        try:
            size = path.stat().st_size
            head = _head(path)
        except FileNotFoundError:
            # Its row is kept but its bytes are not (removed by hand, a restore without its files): no retry brings
            # them back, so the refusal is final, where a traceback answered 500 and the caller retried.
            raise protocol.FileGone("the file's bytes are no longer kept here", field="payload.file_id") from None
        headers = {"Content-Type": media_type(message.msg_type, message.document["content"], head)}
        status, offset, end = 200, 0, size
        wanted = request.get("range")
        if wanted is not None:
            offset = int(wanted["offset"])  # JSON Schema takes 5.0 as an integer: seek() does not
            if offset >= size:
                # §7.2: the refusal names the size (`bytes */<size>`), so the caller can ask for a range within it.
                refusal = RangeNotSatisfiable(f"offset {offset} is past the end ({size} bytes)",
                                              field="payload.range.offset")
                return Reply(status=refusal.status, document=refusal.to_dict(),
                             headers={"Content-Range": f"bytes */{size}"})
            end = min(size, offset + int(wanted.get("length", size)))
            headers["Content-Range"] = f"bytes {offset}-{end - 1}/{size}"
            status = 206
        # The checksum header goes before the body, so the slice is read twice, a chunk at a time each.
        headers["X-Content-SHA256"] = _sha256_of(path, offset, end)
        headers["Content-Length"] = str(end - offset)
        return Reply(status=status, body=_chunks(path, offset, end), headers=headers)

    def download(self, user_id: str, message_id: str) -> StoredFile:
        """Fetch a message's file from its origin node, check every byte, keep it here."""
        me = self.node_id
        with self.db() as session:
            message = session.get(Message, message_id)
            if message is None or message.msg_type not in FILE_KINDS:
                raise NotFound(f"no file message {message_id}{self._file_id_hint(session, user_id, message_id)}")
            self._require_reader(session, address(user_id, me), message)
            content = message.document["content"]
            stored = session.get(StoredFile, (message.origin_node, content["file_id"]))
            if stored is not None:
                if stored.sha256 != content["sha256"] or stored.declared != declared_type(message.msg_type, content):
                    # An origin names each file once: another message naming the id for other bytes (or another
                    # type) is refused rather than given the kept file, which it does not describe.
                    raise UnsupportedMediaType(f"node {message.origin_node} named file {content['file_id']} for "
                                               "other bytes already; this message's file is refused")
                # Kept, unless gone from the data directory (removed by hand, or a restore without its files):
                # then fetched again from its origin and checked again. Something else in its place is not ours
                # to replace: the copy names it (`cannot_read`). This node's own file has no other source: gone,
                # it is refused naming the path, where `download` printed that path as the file's.
                if os.path.lexists(self.file_path(stored)):
                    # The kept file's length is compared with this message's `size`, which may be another, and
                    # an image is read again for this message, which may state another width. Not a voice clip's
                    # length: it is checked on bytes fresh from a peer only, since the origin's own copy (its only
                    # one) and a copy kept before nodes read clips' lengths may carry a length typed by hand.
                    # Other kept files are not read here: `download --out` refuses an existing --out first.
                    _check_size(stored.size, content)  # as kept, after it was checked
                    try:
                        _check_dimensions(self.file_path(stored), message.msg_type, content)
                    except OSError as error:
                        raise CannotRead(f"cannot read {self.file_path(stored)}, this node's copy of file "
                                         f"{stored.file_id}: {error.strerror or error}") from None
                    return stored
                if message.origin_node == me:
                    raise CannotRead(f"cannot read {self.file_path(stored)}, this node's copy of file "
                                     f"{stored.file_id}: it is gone from the data directory, and this node, the "
                                     "file's origin, has no other copy")
        origin = message.origin_node
        entry = self.peer_entry(origin, self._pull_for_recipient(origin))
        if "download" not in entry["capabilities"]:
            raise UnsupportedCapability(f"node {origin} does not serve downloads")
        envelope = protocol.make_envelope(from_node=me, to_node=origin, type="download",
                                          payload={"file_id": content["file_id"], "message_id": message_id})
        kind = message.msg_type
        limit = min(self.config.limit(kind), content["size"])  # the message said how big; not a byte more
        # Into a part file beside where it will be kept, never into memory: files run to 1 GiB. Those that
        # downloads ended by SIGKILL or a crash left in the directory go first.
        directory = self.files_dir / origin
        part_files.sweep(directory)
        with part_files.part_file(directory, content["file_id"]) as (part, handle):
            with open(handle, "w+b", closefd=False) as stream:
                try:
                    response = self.peers.post(entry["endpoint"], PATHS["download"], json.dumps(envelope).encode(),
                                               pin=entry["cert_sha256"], into=stream, limit=limit)
                except PeerAnswerTooLarge:
                    raise PayloadTooLarge(f"node {origin} sent more than the {limit} bytes the message declares; "
                                          "discarded") from None
                except PeerUnreachable as error:
                    raise protocol.Unavailable(str(error)) from None
                if response.status != 200:
                    raise self._peer_error(response)
                stream.flush()
                os.fsync(stream.fileno())
            _check_size(part.stat().st_size, content)
            digest = _sha256_of(part)
            if response.header("X-Content-SHA256") != digest or digest != content["sha256"]:
                raise UnsupportedMediaType("the downloaded bytes do not match their checksum; discarded")
            declared = declared_type(kind, content)
            filetypes.check_declared(_head(part), declared)
            _check_dimensions(part, kind, content)
            _check_duration(part, kind, content)
            return self._keep_file(origin, content["file_id"], kind, declared, part, digest,
                                   content.get("file_name"),
                                   protocol.parse_timestamp(content["expire_at"]) if kind == "file" else None)

    def sweep_part_files(self) -> list[str]:
        """When the node starts serving: the part files that downloads and sends ended by SIGKILL or a crash left
        in any origin's directory, up to 1 GiB each, are removed (those a live process still writes stay: see
        part_files); their names. A download sweeps its own directory too, before it starts."""
        directories = [p for p in self.files_dir.iterdir() if p.is_dir()] if self.files_dir.is_dir() else []
        return [name for directory in directories for name in part_files.sweep(directory)]

    def _file_id_hint(self, session: Session, user_id: str, given: str) -> str:
        """A file id where a message id belongs (a file message shows both): name the message that carried the
        file, if the user may see it, so the next try works."""
        if protocol.is_a("message_id", given):
            return ""
        carrier = session.scalars(select(Message).where(
            Message.document[("content", "file_id")].as_string() == given).limit(1)).first()
        try:
            if carrier is not None:
                self._require_reader(session, address(user_id, self.node_id), carrier)
                return (f": {given} is the file id of message {carrier.message_id}; download takes the message's id "
                        f"(the first column of `history`)")
        except NotAParticipant:
            pass
        return f": {given} is no message id (a UUID); download takes the id of the message that carried the file"

    def file_path(self, stored: StoredFile) -> Path:
        return self.data_dir / stored.path

    def copy_file_to(self, stored: StoredFile, out: Path, *, overwrite: bool = False) -> None:
        """A kept file, copied where its user asked (`download --out`): never over a file already there unless
        `overwrite`, and never into a directory that is not there (a mistyped path), which is named. A copy that
        fails part way leaves nothing under `out`, or with `overwrite` the file that was there as it was; a read
        error is this node's copy's (`cannot_read`), a write error `out`'s (`cannot_write`)."""
        if not out.parent.is_dir():
            raise NotFound(f"{out.parent} is no directory to write {out.name} into", code="no_directory")
        kept = self.file_path(stored)
        try:  # opened before --out is made, and refused apart from it: this node's file, not the path given
            source = kept.open("rb")
        except OSError as error:
            raise CannotRead(f"cannot read {kept}, this node's copy of file {stored.file_id}: "
                             f"{error.strerror or error}") from None
        # Without `overwrite`, "x" creates the file or fails, so nothing made there since the check is written
        # over either. With it, the copy is made beside `out` and renamed over it: `out` opened for writing was
        # emptied before a byte was read when it was the kept file itself or a link to it (the path `download`
        # prints), and the node's only copy was lost while the command reported the whole size.
        # The temporary name is short, so that any name --out may have works with --overwrite too.
        written = out.with_name(f".mpim-{secrets.token_hex(4)}.part") if overwrite else out
        opened = False
        try:
            with source, written.open("xb") as target:
                opened = True
                while True:  # a chunk at a time: files run to 1 GiB
                    try:
                        chunk = source.read(CHUNK_BYTES)
                    except OSError as error:  # this node's copy failed part way (a disk error): not --out's fault
                        raise CannotRead(f"cannot read {kept}, this node's copy of file {stored.file_id}: "
                                         f"{error.strerror or error}") from None
                    if not chunk:
                        break
                    target.write(chunk)
            if overwrite:
                try:  # the file replaced keeps its permissions, as when it was written over in place
                    os.chmod(written, stat.S_IMODE(out.stat().st_mode))
                except FileNotFoundError:
                    pass
                os.replace(written, out)
        except FileExistsError:
            if overwrite:
                raise
            raise Conflict(f"{out} exists: download writes over no file unless given --overwrite",
                           code="file_exists") from None
        except BaseException:
            if opened:  # a part of the file under the name asked for would pass for the whole of it
                written.unlink(missing_ok=True)
            raise

    def file_bytes(self, stored: StoredFile) -> bytes:
        return self.file_path(stored).read_bytes()

    def _keep_file(self, origin: str, file_id: str, kind: str, declared: str, part: Path, digest: str,
                   file_name: str | None, expire_at: datetime | None) -> StoredFile:
        """Record a checked part file (part_files.part_file, in the same directory), then move it into place.
        Two downloads of one file at once (two users of this node) both get here: the row is inserted unless there
        is one, and the second finds the first's. Its bytes passed the same checksum, so its move puts the same
        bytes in place; a row for other bytes or another type (a peer naming one file id twice) keeps its file."""
        path = self.files_dir / origin / file_id
        with self.db.begin() as session:
            session.execute(sqlite_insert(StoredFile).values(
                origin_node=origin, file_id=file_id, kind=kind, declared=declared, size=part.stat().st_size,
                sha256=digest, path=str(path.relative_to(self.data_dir)), file_name=file_name, expire_at=expire_at,
                created_at=utcnow()).on_conflict_do_nothing(index_elements=["origin_node", "file_id"]))
            row = session.get(StoredFile, (origin, file_id), populate_existing=True)
        if row.sha256 != digest or row.declared != declared:
            raise UnsupportedMediaType(f"node {origin} named file {file_id} for other bytes already; this "
                                       "message's file is refused")
        # After the row: a crash in between leaves a row whose file is gone, which `download` fetches again.
        os.chmod(part, 0o600)
        os.replace(part, path)
        return row

    def _file_sent(self, file_id: str) -> bool:
        """Whether a message of this node's names its own file `file_id` (each send makes a new id)."""
        with self.db() as session:
            return session.scalar(select(Message.message_id).where(
                Message.origin_node == self.node_id,
                Message.document[("content", "file_id")].as_string() == file_id).limit(1)) is not None

    def _discard_file(self, origin: str, file_id: str) -> None:
        """Undo `_keep_file` for a file whose message was refused and not kept: no bytes or row stay behind."""
        with self._writing, self.db.begin() as session:
            session.execute(delete(StoredFile).where(StoredFile.origin_node == origin, StoredFile.file_id == file_id))
        (self.files_dir / origin / file_id).unlink(missing_ok=True)
