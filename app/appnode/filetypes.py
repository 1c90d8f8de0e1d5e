"""A.5-A.7 and A.14 files: what the bytes are, whatever the message calls them (docs/protocol.md §8.14).

A node checks every file it stores, serves or downloads, and every inline thumbnail, so that a "PNG" that is
really an executable never reaches a handset. Sniffing looks at magic bytes only; it needs the first
SNIFF_BYTES of a file, not all of it.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

from app.appnode.protocol import PayloadTooLarge, UnsupportedMediaType

SNIFF_BYTES = 4096
EXECUTABLES = frozenset({"ELF", "PE", "MACHO"})
# Largest file of each kind, in bytes; the schemas' `size` maxima are the same numbers.
LIMITS = {
    "image": 20 * 1024 * 1024,
    "voice": 10 * 1024 * 1024,
    "file": 1024 * 1024 * 1024,
    "sticker": 2 * 1024 * 1024,
    "thumbnail": 32 * 1024,
}
# A declared A.5/A.6/A.14 format or A.7 MIME type, and what the bytes must then sniff as.
DECLARED = {
    "png": "PNG", "image/png": "PNG",
    "jpg": "JPG", "jpeg": "JPG", "image/jpeg": "JPG",
    "gif": "GIF", "image/gif": "GIF",
    "aac": "AAC", "audio/aac": "AAC", "audio/aacp": "AAC", "audio/mp4": "AAC", "audio/m4a": "AAC",
    "audio/x-m4a": "AAC",
    "pdf": "PDF", "application/pdf": "PDF",
    "mp4": "MP4", "video/mp4": "MP4",
}
# The only declarations under which executable bytes may travel (whether a node accepts them is its policy).
EXECUTABLE_TYPES = frozenset({
    "application/x-executable", "application/x-elf", "application/x-sharedlib", "application/x-pie-executable",
    "application/vnd.microsoft.portable-executable", "application/x-msdownload", "application/x-dosexec",
    "application/x-mach-binary",
})

MACHO_MAGICS = (b"\xfe\xed\xfa\xce", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xcf\xfa\xed\xfe")
M4A_BRANDS = frozenset({b"M4A ", b"M4B "})
MP4_BRANDS = frozenset({b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"M4V ", b"dash",
                        b"mmp4", b"MSNV"})
# The ADTS sampling-frequency index (ISO/IEC 14496-3 1.6.3.4); 13 and 14 are reserved, 15 is explicit (not ADTS).
ADTS_RATES = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)
# A.6 `duration_ms` may differ from the recording's own length by this much, whichever is larger: a recorder's
# count and a container's rounding differ by a frame or two (at 8 kHz a frame is 128 ms, 512 ms with 4 blocks a
# frame, and the encoder's priming comes on top), and a length typed near the truth (this node before it read
# clips' lengths) by more; a 23 ms clip stated as 1,200 ms is still refused.
VOICE_TOLERANCE_MS = 1000
VOICE_TOLERANCE_PERCENT = 10
VOICE_MAX_MS = 300_000  # voice.schema.json's `duration_ms` maximum (5 minutes); its minimum is 1
READ_BYTES = 64 * 1024
# An `mvhd` box's body by its version: version and flags, creation and modification times, timescale, duration.
MVHD_LAYOUTS = {0: ">4xIIII", 1: ">4xQQIQ"}


def sniff(data: bytes) -> str | None:
    """PNG, JPG, GIF, AAC, PDF, MP4, or ELF, PE, MACHO for executables; None when not recognised."""
    head = bytes(data[:SNIFF_BYTES])
    if head.startswith(b"\x7fELF"):
        return "ELF"
    if head.startswith(b"MZ"):  # PE, and DOS executables before it
        return "PE"
    if head[:4] in MACHO_MAGICS:
        return "MACHO"
    if head.startswith(b"\xca\xfe\xba\xbe") and 0 < int.from_bytes(head[4:8], "big") < 20:
        return "MACHO"  # a universal binary; a Java class file has its version (45 and up) here instead
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"%PDF-"):
        return "PDF"
    if head[4:8] == b"ftyp":
        return _iso_media(head)
    if _is_adts(head):
        return "AAC"
    return None


def _iso_media(head: bytes) -> str | None:
    """ISO base media: the `ftyp` box's major brand decides, else its compatible brands."""
    box_size = int.from_bytes(head[:4], "big")
    if box_size < 16:
        return None
    major = head[8:12]
    compatible = [head[i:i + 4] for i in range(16, min(box_size, len(head)) - 3, 4)]
    for brand in (major, *compatible):
        if brand in M4A_BRANDS:
            return "AAC"
        if brand in MP4_BRANDS:
            return "MP4"
    return None


def _is_adts(head: bytes) -> bool:
    """An ADTS frame header: 12-bit sync word, layer 00 (MP3 frames have 01-11 there), a real sampling rate."""
    if len(head) < 7 or head[0] != 0xFF or head[1] & 0xF6 != 0xF0:
        return False
    sampling_index = (head[2] >> 2) & 0x0F
    frame_length = ((head[3] & 0x03) << 11) | (head[4] << 3) | (head[5] >> 5)
    return sampling_index < 13 and frame_length >= 7


def check_declared(data: bytes, declared: str) -> None:
    """Refuse (415) bytes that are not what the message declares, and executables declared as anything else."""
    name = declared.split(";")[0].strip().lower()
    kind = sniff(data)
    if kind in EXECUTABLES and name not in EXECUTABLE_TYPES:
        raise UnsupportedMediaType(f"declared {declared!r}, but the content is an executable ({kind})")
    wanted = DECLARED.get(name)
    if wanted is not None and kind != wanted:
        raise UnsupportedMediaType(f"declared {declared!r}, but the content is {kind or 'not recognised'}")


def check_size(n: int, limit: int) -> None:
    """Refuse (413) more than `limit` bytes."""
    if n < 0:
        raise ValueError("a size is never negative")
    if n > limit:
        raise PayloadTooLarge(f"{n} bytes is over the limit of {limit}")


def voice_duration_ms(data: bytes | Path) -> int:
    """An A.6 voice clip's length in milliseconds, from its bytes (ADTS frames, or an M4A's `moov`/`mvhd`), or
    415 when they hold none that can be read. A file is read a chunk at a time, or only its box headers."""
    with (data.open("rb") if isinstance(data, Path) else io.BytesIO(data)) as stream:
        head = stream.read(SNIFF_BYTES)
        stream.seek(0, io.SEEK_END)
        size = stream.tell()
        stream.seek(0)
        if sniff(head) == "AAC":
            length = _m4a_duration(stream, size) if head[4:8] == b"ftyp" else _adts_duration(stream)
            return round(length * 1000)
    raise UnsupportedMediaType("the voice clip is neither ADTS nor M4A (AAC): its length cannot be read")


def voice_tolerance_ms(real_ms: int) -> int:
    """How far a stated `duration_ms` may be from the recording's `real_ms`: VOICE_TOLERANCE_MS, or
    VOICE_TOLERANCE_PERCENT of the recording when that is more."""
    return max(VOICE_TOLERANCE_MS, real_ms * VOICE_TOLERANCE_PERCENT // 100)


def check_voice_duration(real_ms: int, stated_ms: int) -> None:
    """Refuse (415) a `duration_ms` further from the recording's own length than voice_tolerance_ms allows."""
    if abs(stated_ms - real_ms) > voice_tolerance_ms(real_ms):
        raise UnsupportedMediaType(f"the recording is {real_ms} ms long, not the {stated_ms} ms its message states "
                                   f"(at most {voice_tolerance_ms(real_ms)} ms apart); refused")


def _adts_duration(stream: BinaryIO) -> Fraction:
    """Seconds in a chain of ADTS frames that ends exactly at the end of the file: each header gives its frame's
    length, its sampling rate and 1024 samples per raw data block. Anything else between or after them, or a last
    frame cut short, and the length is not the clip's: 415."""
    seconds, offset, buffer, at = Fraction(0), 0, b"", 0
    while True:
        if len(buffer) - at < 8192 + 9:  # a whole frame (at most 8191 bytes) and the next header, unless at the end
            buffer = buffer[at:] + stream.read(READ_BYTES)
            at = 0
        if at == len(buffer):
            return seconds
        header = buffer[at:at + 7]
        if len(header) < 7:
            raise UnsupportedMediaType(f"the ADTS voice clip ends in part of a frame header at byte {offset}: its "
                                       "length cannot be read")
        if not _is_adts(header):
            raise UnsupportedMediaType(f"the ADTS voice clip has no frame header at byte {offset} (its frames are "
                                       "broken or followed by something else): its length cannot be read")
        frame_length = ((header[3] & 0x03) << 11) | (header[4] << 3) | (header[5] >> 5)
        if frame_length < (7 if header[1] & 0x01 else 9) or at + frame_length > len(buffer):
            raise UnsupportedMediaType(f"the ADTS voice clip's frame at byte {offset} is cut short: its length "
                                       "cannot be read")
        seconds += Fraction(1024 * ((header[6] & 0x03) + 1), ADTS_RATES[(header[2] >> 2) & 0x0F])
        at += frame_length
        offset += frame_length


def _boxes(stream: BinaryIO, start: int, end: int):
    """The ISO base media boxes in bytes [start, end): (type, where its body starts, where it ends). A box
    reaching past `end`, or too short for its own header: 415."""
    offset = start
    while offset < end:
        stream.seek(offset)
        header = stream.read(8)
        if len(header) < 8 or offset + 8 > end:
            raise UnsupportedMediaType(f"the M4A voice clip's box at byte {offset} is cut short: its length cannot "
                                       "be read")
        box_size, box_type = struct.unpack(">I4s", header)
        body = offset + 8
        if box_size == 1:  # a 64-bit largesize follows the type
            large = stream.read(8)
            if len(large) < 8:
                raise UnsupportedMediaType(f"the M4A voice clip's box at byte {offset} is cut short: its length "
                                           "cannot be read")
            box_size, body = struct.unpack(">Q", large)[0], offset + 16
        elif box_size == 0:  # the box runs to the end
            box_size = end - offset
        if box_size < body - offset or offset + box_size > end:
            raise UnsupportedMediaType(f"the M4A voice clip's {box_type.decode('latin-1')!r} box at byte {offset} "
                                       f"says it is {box_size} bytes, more than there are or fewer than its header: "
                                       "its length cannot be read")
        yield box_type, body, offset + box_size
        offset += box_size


def _m4a_duration(stream: BinaryIO, size: int) -> Fraction:
    """Seconds in an M4A: the movie header's (`moov`/`mvhd`) duration over its timescale, wherever `moov` is
    (before the media data, or after it as a recorder writes it last). Every top-level box is walked, so a file
    cut short after its movie header is refused too: its header states a length its bytes no longer hold."""
    seconds = None
    for box_type, body, end in _boxes(stream, 0, size):
        if box_type == b"moov" and seconds is None:
            seconds = _movie_duration(stream, body, end)
    if seconds is None:
        raise UnsupportedMediaType("the M4A voice clip has no movie header (moov box): its length cannot be read")
    return seconds


def _movie_duration(stream: BinaryIO, start: int, end: int) -> Fraction:
    """The duration over the timescale of the `mvhd` box (version 0 or 1) among the `moov` box's children. A
    fragmented M4A's `mvhd` says 0: then the movie extends header's (`mvex`/`mehd`) fragment duration, in the
    same timescale, when there is one."""
    children = list(_boxes(stream, start, end))
    for box_type, body, box_end in children:
        if box_type != b"mvhd":
            continue
        stream.seek(body)
        header = stream.read(min(box_end - body, 32))
        layout = MVHD_LAYOUTS.get(header[0]) if header else None  # by the full box's version
        if layout is None or len(header) < struct.calcsize(layout):
            break
        _, _, timescale, duration = struct.unpack_from(layout, header)
        if timescale == 0 or duration == (1 << (32 if header[0] == 0 else 64)) - 1:  # all ones: not known
            break
        if duration == 0:
            duration = _fragment_duration(stream, children) or 0
        return Fraction(duration, timescale)
    raise UnsupportedMediaType("the M4A voice clip's movie header (moov/mvhd) states no length that can be read")


def _fragment_duration(stream: BinaryIO, children: list) -> int | None:
    """The `mehd` box's fragment duration (version 0: 32 bits, 1: 64) in the `moov` box's `mvex`, if any."""
    for box_type, body, box_end in children:
        if box_type != b"mvex":
            continue
        for inner_type, inner_body, inner_end in _boxes(stream, body, box_end):
            if inner_type != b"mehd":
                continue
            stream.seek(inner_body)
            header = stream.read(min(inner_end - inner_body, 12))
            layout = {0: ">4xI", 1: ">4xQ"}.get(header[0]) if header else None
            if layout is None or len(header) < struct.calcsize(layout):
                return None
            return struct.unpack_from(layout, header)[0]
    return None
