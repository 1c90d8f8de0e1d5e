"""What the node's sections share about a message: user addresses (`user@node`), the path each envelope type
is posted to, the kinds that carry a file and what those files' bytes are (A.5-A.7, A.14), and the answer a
receiver gives. Pure values and functions, apart from `Node` so that every section module can import them
without importing the others.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from app.appnode import protocol
from app.appnode.protocol import UnsupportedMediaType

PATHS = {kind: path for path, kind in protocol.ENDPOINTS.items()}
FILE_KINDS = ("image", "voice", "file", "sticker")


@dataclass
class Reply:
    """A receiver's answer: JSON (`document`) or file bytes (`body`), with its status and headers."""

    status: int = 200
    document: dict | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)


def address(user_id: str, node_id: str) -> str:
    return f"{user_id}@{node_id}"


def local_part(addr: str) -> str:
    return addr.rpartition("@")[0]


def declared_type(msg_type: str, content: dict) -> str:
    """What an A.5/A.6/A.7/A.14 content says its bytes are."""
    return {"image": content.get("format"), "voice": "AAC", "file": content.get("mime_type"),
            "sticker": content.get("format")}[msg_type]


def media_type(msg_type: str, content: dict, data: bytes) -> str:
    if msg_type == "file":
        return content["mime_type"]
    if msg_type == "voice":
        return "audio/mp4" if data[4:8] == b"ftyp" else "audio/aac"
    return {"JPG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}[content["format"]]


JPEG_FRAMES = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
EXIF_ORIENTATION = 0x0112
EXIF_TURNED = frozenset({5, 6, 7, 8})  # a quarter turn (and a mirroring, for 5 and 7): shown with its sides swapped


def _jpeg_segments(data: bytes):
    """A JPEG's marker segments before its frame header: (marker, where its body starts, where it ends). Any
    number of 0xFF fill bytes may come before a marker (ITU T.81 B.1.1.2)."""
    index = 2
    while index + 3 < len(data):
        if data[index] != 0xFF:
            index += 1
            continue
        if data[index + 1] == 0xFF:  # a fill byte
            index += 1
            continue
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2:index + 4])[0]
        yield marker, index + 4, index + 2 + length
        index += 2 + length


def image_size(data: bytes | Path, fmt: str) -> tuple[int, int]:
    """Width and height from the header of a PNG, GIF or JPEG (the A.5 fields) as its pixels are stored, or
    415. A file is read whole: a JPEG's size may come after its metadata, and images are at most 20 MiB."""
    if isinstance(data, Path):
        data = data.read_bytes()
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "JPG":
            for marker, body, _ in _jpeg_segments(data):
                if marker in JPEG_FRAMES:
                    height, width = struct.unpack(">HH", data[body + 1:body + 5])
                    return width, height
    except struct.error:
        pass
    raise UnsupportedMediaType(f"the {fmt} image has no readable size")


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation (IFD0 tag 0x0112) of a JPEG's APP1 `Exif` segment, if it states one."""
    for marker, body, end in _jpeg_segments(data):
        if marker in JPEG_FRAMES:
            return None
        if marker != 0xE1 or data[body:body + 6] != b"Exif\x00\x00":
            continue
        tiff = data[body + 6:end]
        order = {b"MM": ">", b"II": "<"}.get(tiff[:2])
        if order is None:
            return None
        try:
            first = struct.unpack(order + "I", tiff[4:8])[0]
            count = struct.unpack(order + "H", tiff[first:first + 2])[0]
            for at in range(first + 2, first + 2 + 12 * count, 12):
                tag, kind, _ = struct.unpack(order + "HHI", tiff[at:at + 8])
                if tag == EXIF_ORIENTATION and kind == 3:  # SHORT
                    return struct.unpack(order + "H", tiff[at + 8:at + 10])[0]
        except struct.error:
            return None
        return None
    return None


def image_sizes(data: bytes | Path, fmt: str) -> set[tuple[int, int]]:
    """The sizes an A.5 message may state for the picture: its pixels as stored, and for a JPEG whose EXIF
    orientation turns it a quarter (5-8) as displayed too, its sides swapped (docs/protocol.md §8.5)."""
    if isinstance(data, Path):
        data = data.read_bytes()
    width, height = image_size(data, fmt)
    if fmt == "JPG" and _jpeg_orientation(data) in EXIF_TURNED:
        return {(width, height), (height, width)}
    return {(width, height)}

