"""A.5-A.7 and A.14 files: what the bytes are, whatever the message calls them (docs/protocol.md §8.14).

A node checks every file it stores, serves or downloads, and every inline thumbnail, so that a "PNG" that is
really an executable never reaches a handset. Sniffing looks at magic bytes only; it needs the first
SNIFF_BYTES of a file, not all of it.
"""

from __future__ import annotations

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
