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


def image_size(data: bytes | Path, fmt: str) -> tuple[int, int]:
    """Width and height from the header of a PNG, GIF or JPEG (the A.5 fields), or 415. A file is read whole:
    a JPEG's size may come after its metadata, and images are at most 20 MiB."""
    if isinstance(data, Path):
        data = data.read_bytes()
    try:
        if fmt == "PNG" and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        if fmt == "GIF":
            return struct.unpack("<HH", data[6:10])
        if fmt == "JPG":
            index = 2
            while index + 9 < len(data):
                if data[index] != 0xFF:
                    index += 1
                    continue
                marker = data[index + 1]
                length = struct.unpack(">H", data[index + 2:index + 4])[0]
                if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
                    height, width = struct.unpack(">HH", data[index + 5:index + 9])
                    return width, height
                index += 2 + length
    except struct.error:
        pass
    raise UnsupportedMediaType(f"the {fmt} image has no readable size")
