"""A.6 voice: `duration_ms` is the recording's own length, read from its bytes (ADTS frames or an M4A's movie
header), at the origin when it is sent and by a node that downloads it (docs/protocol.md §7.2, §8.4).

A sender's `duration_ms` was whatever the user typed, never checked on either side: a 23 ms clip went out as
1,200 ms, and the receiving handset showed that.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from pathlib import Path

import pytest

from app.appnode import filetypes, part_files
from app.appnode.protocol import SchemaViolation, UnsupportedMediaType
from tests.test_appnode import adts, history, network, png  # noqa: F401 (fixture)
from tests.test_appnode_cli import node_cli, refusal
from tests.test_sessions import people  # noqa: F401 (fixture)


def box(kind: bytes, body: bytes, *, large: bool = False) -> bytes:
    """An ISO base media box; `large`: its size as a 64-bit largesize after the type."""
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body
    return struct.pack(">I4s", 8 + len(body), kind) + body


def mvhd(duration: int, timescale: int, version: int = 0) -> bytes:
    """A movie header box as a recorder writes it: times, timescale, duration, then rate, volume, matrix, next id."""
    times = struct.pack(">IIII", 0xD5E1_0000, 0xD5E1_0000, timescale, duration) if version == 0 else \
        struct.pack(">QQIQ", 0xD5E1_0000, 0xD5E1_0000, timescale, duration)
    matrix = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    rest = struct.pack(">IH10x", 0x10000, 0x100) + matrix + b"\x00" * 24 + struct.pack(">I", 2)
    return box(b"mvhd", bytes([version, 0, 0, 0]) + times + rest)


def m4a(duration: int, timescale: int, *, version: int = 0, moov_last: bool = False, large: bool = False) -> bytes:
    """A minimal M4A: `ftyp` (brand M4A), the movie (`moov` with its `mvhd` and an empty track) and the media
    data (`mdat`, some AAC), the movie first or last; `large`: the media data's size as a 64-bit largesize."""
    ftyp = box(b"ftyp", b"M4A \x00\x00\x00\x00M4A mp42isom")
    moov = box(b"moov", mvhd(duration, timescale, version) + box(b"trak", b""))
    mdat = box(b"mdat", adts(500), large=large)
    return ftyp + (box(b"free", b"") + mdat + moov if moov_last else moov + mdat)


def test_a_clips_length_is_read_from_its_adts_frames(tmp_path):
    """Each frame is 1024 samples per raw data block at the rate its header names; a file is read from disk."""
    assert filetypes.voice_duration_ms(adts(1200)) == 1207  # 52 frames x 1024 / 44,100 Hz = 1207.3 ms
    assert filetypes.voice_duration_ms(adts(2000, rate_index=11)) == 2048  # 16 frames x 128 ms at 8 kHz
    assert filetypes.voice_duration_ms(adts(1000, blocks=4)) == 1022  # 11 frames x 4096 / 44,100 Hz
    (tmp_path / "clip.aac").write_bytes(adts(300_000))
    assert filetypes.voice_duration_ms(tmp_path / "clip.aac") == 300_002  # 12,920 frames, read a chunk at a time


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("moov_last", [False, True], ids=["moov-first", "moov-last"])
@pytest.mark.parametrize("large", [False, True], ids=["32-bit", "largesize"])
def test_a_clips_length_is_read_from_an_m4as_movie_header(tmp_path, version, moov_last, large):
    clip = m4a(529_200, 44_100, version=version, moov_last=moov_last, large=large)  # 12 s at 44.1 kHz
    assert filetypes.sniff(clip) == "AAC"
    (tmp_path / "clip.m4a").write_bytes(clip)
    assert filetypes.voice_duration_ms(tmp_path / "clip.m4a") == 12_000
    assert filetypes.voice_duration_ms(m4a(12_480, 1000, version=version, moov_last=moov_last)) == 12_480


CLIP = adts(1200)  # 52 frames of 16 bytes


@pytest.mark.parametrize(("clip", "said"), [
    (CLIP[:-3], "frame at byte 816 is cut short"),
    (CLIP[:-12], "ends in part of a frame header at byte 816"),
    (CLIP[:160] + b"\x00" + CLIP[161:], "no frame header at byte 160"),  # a frame's sync word broken
    (CLIP[:164] + b"\x00" + CLIP[165:], "no frame header at byte 160"),  # a frame's length broken: 7 bytes or less
    (CLIP + b"TAG" + b"\x00" * 125, "no frame header at byte 832"),  # something after the frames
    (CLIP[:4] + b"\x03" + CLIP[5:], "no frame header at byte 24"),  # its first frame is said to be 24 bytes
], ids=["frame-cut", "header-cut", "sync", "short-frame", "trailing", "length"])
def test_a_broken_or_truncated_adts_chain_has_no_length(clip, said):
    with pytest.raises(UnsupportedMediaType, match=said):
        filetypes.voice_duration_ms(clip)


@pytest.mark.parametrize(("clip", "said"), [
    (m4a(12_480, 1000)[:-40], "'mdat' box at byte 152 says it is"),  # the media data cut short
    (m4a(12_480, 1000, moov_last=True)[:-40], "'moov' box at byte"),  # the movie, last, cut short
    (m4a(12_480, 1000)[:28] + m4a(12_480, 1000)[152:], "no movie header"),  # no moov
    (m4a(0xFFFF_FFFF, 1000), "states no length"),  # all ones: a duration not known
    (m4a(12_480, 0), "states no length"),
    (b"\x00\x00\x00\x14ftypmp42\x00\x00\x00\x00mp42", "neither ADTS nor M4A"),  # an MP4 video
], ids=["mdat-cut", "moov-cut", "no-moov", "unknown", "timescale-0", "mp4"])
def test_an_m4a_without_a_readable_movie_header_has_no_length(clip, said):
    with pytest.raises(UnsupportedMediaType, match=said):
        filetypes.voice_duration_ms(clip)


def fragmented_m4a(fragment_duration: int | None, timescale: int, version: int = 0) -> bytes:
    """A fragmented M4A as a streaming recorder writes it: `mvhd` says 0, the length is in `moov`/`mvex`/`mehd`
    (in `mvhd`'s timescale), unless `fragment_duration` is None (no `mehd`)."""
    ftyp = box(b"ftyp", b"M4A \x00\x00\x00\x00M4A isomiso6")
    mehd = b"" if fragment_duration is None else box(b"mehd", bytes([version, 0, 0, 0]) + struct.pack(
        ">I" if version == 0 else ">Q", fragment_duration))
    moov = box(b"moov", mvhd(0, timescale) + box(b"trak", b"") + box(b"mvex", mehd + box(b"trex", b"\x00" * 24)))
    return ftyp + moov + box(b"moof", b"") + box(b"mdat", adts(500))


@pytest.mark.parametrize("version", [0, 1])
def test_a_fragmented_m4as_length_is_its_movie_extends_header(version):
    """A fragmented M4A's `mvhd` says 0: its length is `mvex`/`mehd`'s fragment duration; with neither, 0 ms,
    which a voice message is refused for (test_a_voice_clip_over_five_minutes_or_without_a_length_is_refused)."""
    assert filetypes.voice_duration_ms(fragmented_m4a(529_200, 44_100, version)) == 12_000
    assert filetypes.voice_duration_ms(fragmented_m4a(None, 44_100)) == 0


def test_a_stated_length_may_be_a_second_or_a_tenth_of_the_recording_off():
    """Honest 8 kHz AAC (128 ms frames, 512 ms with 4 blocks a frame, encoder priming) and a length typed near
    the truth pass; a 23 ms clip stated as 1,200 ms does not."""
    assert filetypes.voice_tolerance_ms(2048) == 1000 and filetypes.voice_tolerance_ms(240_000) == 24_000
    filetypes.check_voice_duration(filetypes.voice_duration_ms(adts(2000, rate_index=11, blocks=4)), 1500)
    filetypes.check_voice_duration(filetypes.voice_duration_ms(adts(4600)), 5000)
    with pytest.raises(UnsupportedMediaType, match="the recording is 23 ms long, not the 1200 ms"):
        filetypes.check_voice_duration(filetypes.voice_duration_ms(adts(23)), 1200)


def sent_before_the_upgrade(a, to: str, clip: bytes, duration_ms: int):
    """What the reference node did before it read a clip's length: kept the bytes and sent the typed length."""
    file_id = f"v-{secrets.token_hex(12)}"
    with part_files.part_file(a.node.files_dir / a.id, file_id) as (part, handle):
        with open(handle, "wb", closefd=False) as stream:
            stream.write(clip)
        digest = hashlib.sha256(clip).hexdigest()
        a.node._keep_file(a.id, file_id, "voice", "AAC", part, digest, None, None)
    return a.node.send("zhangsan", to, "voice", {"file_id": file_id, "format": "AAC", "duration_ms": duration_ms,
                                                 "size": len(clip), "sha256": digest})


def test_a_voice_clip_sent_with_a_typed_length_before_the_upgrade_stays_downloadable_where_it_is_kept(
        network):  # noqa: F811
    """The length is checked on bytes fresh from a peer only: the origin's own copy (the only one) and a copy
    kept before the upgrade are given as they are; a recipient that fetches it now refuses a length far off."""
    a, b = network["a"], network["b"]
    message = sent_before_the_upgrade(a, b.user("lisi"), adts(23), 1200)
    assert a.node.download("zhangsan", message.message_id).file_id == message.document["content"]["file_id"]
    with pytest.raises(UnsupportedMediaType, match="the recording is 23 ms long, not the 1200 ms"):
        b.node.download("lisi", message.message_id)
    assert not (b.dir / "files" / a.id / message.document["content"]["file_id"]).exists()
    # Kept at the recipient before the upgrade: given as it is.
    content = message.document["content"]
    with part_files.part_file(b.node.files_dir / a.id, content["file_id"]) as (part, handle):
        with open(handle, "wb", closefd=False) as stream:
            stream.write(adts(23))
        b.node._keep_file(a.id, content["file_id"], "voice", "AAC", part, content["sha256"], None, None)
    assert b.node.download("lisi", message.message_id).file_id == content["file_id"]
    # Typed near the truth before the upgrade: fetched and kept now.
    near = sent_before_the_upgrade(a, b.user("lisi"), adts(4600), 5000)
    assert b.node.download("lisi", near.message_id).sha256 == near.document["content"]["sha256"]


def test_a_voice_message_states_its_recordings_own_length(network):  # noqa: F811
    """Left out, `duration_ms` is the bytes'; given within 1,000 ms or 10 % of it, the bytes' is sent; further off,
    the message is refused naming the recording's real length, and nothing is kept."""
    a, b = network["a"], network["b"]
    lisi = b.user("lisi")
    assert a.node.send_file("zhangsan", lisi, adts(1200), "voice").document["content"]["duration_ms"] == 1207
    assert a.node.send_file("zhangsan", lisi, adts(1200), "voice",
                            duration_ms=1300).document["content"]["duration_ms"] == 1207
    long = a.node.send_file("zhangsan", lisi, m4a(240_000, 1000, moov_last=True), "voice", duration_ms=217_000)
    assert long.document["content"]["duration_ms"] == 240_000  # 10 % of 4 minutes is 24 s
    kept = sorted((a.dir / "files" / a.id).iterdir())
    for stated in (2300, 5000, 1):
        with pytest.raises(UnsupportedMediaType, match=f"the recording is 1207 ms long, not the {stated} ms its "
                                                       "message states"):
            a.node.send_file("zhangsan", lisi, adts(1200), "voice", duration_ms=stated)
    with pytest.raises(UnsupportedMediaType, match="the recording is 240000 ms long, not the 215000 ms"):
        a.node.send_file("zhangsan", lisi, m4a(240_000, 1000), "voice", duration_ms=215_000)
    assert sorted((a.dir / "files" / a.id).iterdir()) == kept
    assert len(a.node.history("zhangsan", a.node.conversations("zhangsan")[0]["conversation_id"])) == 3


def test_a_voice_clip_over_five_minutes_or_without_a_length_is_refused(network):  # noqa: F811
    a, b = network["a"], network["b"]
    lisi = b.user("lisi")
    assert a.node.send_file("zhangsan", lisi, m4a(300_000, 1000), "voice").document["content"]["duration_ms"] == 300_000
    with pytest.raises(SchemaViolation, match="the recording is 300489 ms long; a voice message is 1 to 300,000 ms"):
        a.node.send_file("zhangsan", lisi, adts(300_500), "voice")
    with pytest.raises(SchemaViolation, match="the recording is 0 ms long; a voice message is 1 to 300,000 ms"):
        a.node.send_file("zhangsan", lisi, m4a(0, 1000), "voice", duration_ms=1)
    with pytest.raises(UnsupportedMediaType, match="frame at byte 816 is cut short"):
        a.node.send_file("zhangsan", lisi, adts(1200)[:-3], "voice", duration_ms=1200)
    assert [path.name for path in (a.dir / "files" / a.id).iterdir()] == [
        a.node.history("zhangsan", a.node.conversations("zhangsan")[0]["conversation_id"])[0][
            "message"].document["content"]["file_id"]]


def test_send_file_reads_a_voice_clips_length_and_refuses_a_duration_ms_that_is_not_it(network,  # noqa: F811
                                                                                        tmp_path: Path):
    """--duration-ms was required and believed; now it may be left out, and a wrong one is refused."""
    a, b = network["a"], network["b"]
    (tmp_path / "clip.aac").write_bytes(adts(1200))
    voice = ("send-file", "--as", "zhangsan", "--kind", "voice", b.user("lisi"), str(tmp_path / "clip.aac"))
    sent = json.loads(node_cli(a, "--json", *voice))
    [message] = history(a, "zhangsan", a.node.conversations("zhangsan")[0]["conversation_id"])
    assert message["message_id"] == sent["message_id"] and message["content"]["duration_ms"] == 1207
    assert refusal(a.dir, "send-file", "--duration-ms", "12000", *voice[1:])[1]["error"] == {
        "code": "unsupported_media_type",
        "message": "the recording is 1207 ms long, not the 12000 ms its message states (at most 1000 ms apart); "
                   "refused"}


def test_a_kept_image_that_cannot_be_read_is_refused_naming_it(network):  # noqa: F811
    """A kept image is read again for each message that names it (its stated size): a directory in its place (as
    root, permissions stop nothing) is this node's copy that cannot be read, named, not a traceback. A voice clip
    is not read again (its length is checked on bytes fresh from a peer only)."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), png(), "image")
    b.node.download("lisi", message.message_id)
    kept = b.dir / "files" / a.id / message.document["content"]["file_id"]
    kept.unlink()
    kept.mkdir()
    code, document = refusal(b.dir, "download", "--as", "lisi", message.message_id)
    assert code == 2 and document["error"]["code"] == "cannot_read" and str(kept) in document["error"]["message"]
