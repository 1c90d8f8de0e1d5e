"""A hostile or buggy peer node against the reference node's federation endpoints: what a peer that passes
the TLS and routing-table checks may still not do (docs/protocol.md §5.4 step 6, §8). Each refusal is the
protocol's error shape, and nothing it carried is kept."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta

import pytest

from app.appnode import protocol, validation
from app.appnode.messages import image_size, image_sizes
from app.appnode.protocol import UnsupportedMediaType
from tests.appnode_harness import raw_post
from tests.test_appnode import (  # noqa: F401 (fixture)
    PDF,
    adts,
    network,
    png,
    settle,
    stored_messages,
    text_envelope,
)
from tests.test_sessions import people  # noqa: F401 (fixture)


def group_message(sender, home, member, group_address: str, user_id: str, text: str) -> dict:
    """An A.9 group message from `sender`'s user, as the home node `home` relays it to `member`."""
    message = {"chat_type": "group", "to": group_address,
               "sender": {**text_envelope(home, member)["payload"]["sender"], "user_id": user_id,
                          "node_id": sender.id}}
    envelope = text_envelope(home, member, text=text, message=message)
    return envelope


def test_a_home_node_cannot_relay_a_message_as_sent_by_a_user_of_the_receiving_node(network):  # noqa: F811
    """The home node relays a group message to every member node except the sender's (§8.6): one "relayed"
    to the sender's own node was a message that node's user never sent, and it was stored and shown as theirs
    (and, carrying a file id, served as a file of this node's)."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    forged = group_message(b, a, b, group.address, "lisi", "我没说过这句")
    status, body = raw_post(a.node, b, "message", forged)
    assert status == 403 and body["error"]["code"] == "sender_mismatch", body
    assert body["error"]["field"] == "payload.sender.node_id"
    validation.validate("error", body)
    assert stored_messages(b) == []
    honest = group_message(a, a, b, group.address, "zhangsan", "大家好")  # the home node's own user: taken
    assert raw_post(a.node, b, "message", honest)[0] == 200
    assert [m.document["content"]["text"] for m in stored_messages(b)] == ["大家好"]


def test_a_home_node_cannot_report_what_a_user_of_the_receiving_node_has_read(network):  # noqa: F811
    """A home node relays a member's read state to the other member nodes, never back to the member's own node
    (§8.10): only that node knows what its user read. One naming a user of the receiving node overwrote that
    user's own read state there, and with a far-future `updated_at` for good (newest wins)."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    a.node.send_text("zhangsan", group.address, "第一条")
    settle(a, b)
    conversation = f"g:{group.address}"
    latest = stored_messages(b)[0].message_id
    assert [c["unread"] for c in b.node.conversations("lisi")] == [1]
    state = {"conversation_id": conversation, "user_id": b.user("lisi"), "read_up_to_message_id": latest,
             "unread_count": 0, "updated_at": protocol.format_timestamp(datetime.now(UTC) + timedelta(days=3650))}
    envelope = protocol.make_envelope(from_node=a.id, to_node=b.id, type="ephemeral",
                                      payload={"read_states": [state]})
    status, body = raw_post(a.node, b, "ephemeral", envelope)
    assert status == 403 and body["error"]["code"] == "sender_mismatch", body
    assert body["error"]["field"] == "payload.read_states[0].user_id"
    validation.validate("error", body)
    assert [c["unread"] for c in b.node.conversations("lisi")] == [1]
    b.node.mark_read("lisi", conversation)  # the user's own reading still counts
    assert [c["unread"] for c in b.node.conversations("lisi")] == [0]


def test_a_thumbnail_that_is_not_whole_base64_is_a_schema_violation_not_a_server_error(network):  # noqa: F811
    """The schema let through base64 of any length ("AAAAA", "AAAAAA="), which the decoder refused with an
    exception: the node answered 500, which the sender retries for 48 hours."""
    a, b = network["a"], network["b"]
    for data in ("AAAAA", "AAAAAA", "AAAAAA=", "AAAAAAA=="):
        envelope = text_envelope(a, b, message={"msg_type": "image", "content": {
            "file_id": "f-1", "format": "PNG", "size": 100, "width": 1, "height": 1, "sha256": "0" * 64,
            "thumbnail": {"format": "PNG", "width": 1, "height": 1, "data": data}}})
        status, body = raw_post(a.node, b, "message", envelope)
        assert (status, body["error"]["code"]) == (422, "schema_violation"), (data, body)
        assert body["error"]["field"] == "payload.content.thumbnail.data"
        validation.validate("error", body)
    assert stored_messages(b) == []


def test_a_thumbnail_one_byte_over_its_limit_is_refused_naming_the_thumbnail(network):  # noqa: F811
    """43,692 base64 characters with no padding pass the schema and decode to 32,769 bytes: the 413 said "32769
    bytes is over the limit of 32768", naming neither the thumbnail nor the field, so the sender looked at the
    image's own size."""
    a, b = network["a"], network["b"]
    envelope = text_envelope(a, b, message={"msg_type": "image", "content": {
        "file_id": "f-1", "format": "PNG", "size": 100, "width": 1, "height": 1, "sha256": "0" * 64,
        "thumbnail": {"format": "PNG", "width": 1, "height": 1, "data": "A" * 43692}}})
    status, body = raw_post(a.node, b, "message", envelope)
    assert (status, body["error"]["code"]) == (413, "payload_too_large"), body
    assert body["error"]["field"] == "payload.content.thumbnail.data"
    assert body["error"]["message"] == "thumbnail: 32769 bytes is over the limit of 32768"
    validation.validate("error", body)
    assert stored_messages(b) == []


def test_a_file_id_reused_for_other_bytes_does_not_hand_out_the_file_kept_under_it(network):  # noqa: F811
    """A file already downloaded was handed to whoever downloaded any later message naming its file id, whatever
    that message declared: a peer's "PNG image" to zhaoliu came out as the PDF lisi had been sent, unchecked
    against the checksum and type the message states."""
    a, b = network["a"], network["b"]
    sent = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    kept = b.node.download("lisi", sent.message_id)
    image = png()
    envelope = text_envelope(a, b, message={"to": b.user("zhaoliu"), "msg_type": "image", "content": {
        "file_id": sent.document["content"]["file_id"], "format": "PNG", "size": len(image), "width": 3,
        "height": 2, "sha256": hashlib.sha256(image).hexdigest()}})
    assert raw_post(a.node, b, "message", envelope)[0] == 200
    with pytest.raises(UnsupportedMediaType, match="other bytes"):
        b.node.download("zhaoliu", envelope["message_id"])
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == PDF  # what was kept stays
    assert kept.sha256 == hashlib.sha256(PDF).hexdigest()


def test_a_read_state_pointing_into_another_conversation_counts_for_nothing(network):  # noqa: F811
    """A read position is a message of its conversation. One naming a later message of another conversation
    was taken as a time: the reader showed as having read messages of this one its node never received."""
    a, b = network["a"], network["b"]
    b.stop()  # zhangsan's message waits in A's outbox: B has not received it
    unseen = a.node.send_text("zhangsan", b.user("lisi"), "还没送到")
    b.start()
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    later = a.node.send_text("zhangsan", group.address, "群里一条")  # later than `unseen`, in another conversation
    state = {"conversation_id": unseen.conversation_id, "user_id": b.user("lisi"),
             "read_up_to_message_id": later.message_id, "unread_count": 0,
             "updated_at": protocol.format_timestamp(datetime.now(UTC))}
    envelope = protocol.make_envelope(from_node=b.id, to_node=a.id, type="ephemeral",
                                      payload={"read_states": [state]})
    assert raw_post(b.node, a, "ephemeral", envelope)[0] == 200
    [entry] = a.node.history("zhangsan", unseen.conversation_id)
    assert (entry["read_by"], entry["unread_by"]) == ([], 1)


def test_a_caller_without_a_client_certificate_is_refused_before_its_body_is_read(network):  # noqa: F811
    """The server asks for a client certificate but, for health's sake, does not require one at the TLS layer
    (§2.4). The federation paths read and parsed the body before they looked for one: anybody, with no
    certificate, held one of the node's few threads for as long as it took to send an announced megabyte."""
    import http.client
    import json
    import ssl
    a, b = network["a"], network["b"]
    context = ssl.create_default_context(cafile=str(a.node.identity.bundle_file))
    connection = http.client.HTTPSConnection("127.0.0.1", b.port, context=context, timeout=30)
    connection.putrequest("POST", "/api/v1/federation/messages")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(protocol.MAX_BODY_BYTES))
    connection.endheaders(b"{")  # and nothing more
    answered = connection.getresponse()
    body = json.loads(answered.read())
    assert answered.status == 403 and body["error"]["code"] == "certificate_mismatch", body
    validation.validate("error", body)
    connection.close()


def test_a_message_id_already_taken_by_another_message_is_refused_and_nothing_is_relayed(network):  # noqa: F811
    """Message ids are deduplicated per calling node (§6), and a message is kept once by its id: a member node
    reusing the id of another node's group message (it sees every id the home node relays) got `accepted`, and
    the home node, which kept the first message, relayed the second to the other member nodes, to be shown
    wherever the id was new. Same for a single chat: acknowledged, silently dropped."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    for node in (a, b, c):
        node.node.sync_routes()
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), c.user("sunqi")])
    first = a.node.send_text("zhangsan", group.address, "原话")
    settle(a, b, c)
    relays = len(a.node.outbox())
    reused = group_message(b, b, a, group.address, "lisi", "冒用编号")
    reused["payload"]["message_id"] = reused["message_id"] = first.message_id
    status, body = raw_post(b.node, a, "message", reused)
    assert (status, body["error"]["code"]) == (409, "conflict"), body
    validation.validate("error", body)
    assert len(a.node.outbox()) == relays  # nothing relayed
    assert [m.document["content"]["text"] for m in stored_messages(a)] == ["原话"]
    single = text_envelope(b, a, message={"message_id": first.message_id, "to": a.user("wangwu")})
    status, body = raw_post(b.node, a, "message", single)
    assert (status, body["error"]["code"]) == (409, "conflict"), body
    assert [m.document["content"]["text"] for m in stored_messages(a)] == ["原话"]
    retried = text_envelope(b, a, message={"to": a.user("wangwu")})  # an honest message and its retry: as before
    assert raw_post(b.node, a, "message", retried)[1]["status"] == "accepted"
    assert raw_post(b.node, a, "message", retried)[1]["status"] == "duplicate"


def test_a_message_dated_ahead_of_the_receivers_clock_is_refused_and_not_kept(network):  # noqa: F811
    """A message with a send_time years ahead was stored: it stayed last in its conversation, and once its reader
    had read it every message sent before that time counted as read, the user's unread count stuck at 0. Refused
    as stale_timestamp, as the envelope's own time is; a sender's clock a minute fast still gets through."""
    a, b = network["a"], network["b"]
    ahead = protocol.format_timestamp(datetime.now(UTC) + timedelta(days=3650))
    status, body = raw_post(a.node, b, "message", text_envelope(a, b, text="来自未来", message={"send_time": ahead}))
    assert status == 400 and body["error"]["code"] == "stale_timestamp", body
    assert body["error"]["field"] == "payload.send_time"
    validation.validate("error", body)
    assert stored_messages(b) == []
    a_minute = protocol.format_timestamp(datetime.now(UTC) + timedelta(seconds=60))
    status, body = raw_post(a.node, b, "message", text_envelope(a, b, text="快一分钟", message={"send_time": a_minute}))
    assert status == 200, body
    assert [m.document["content"]["text"] for m in stored_messages(b)] == ["快一分钟"]


@pytest.mark.parametrize("declared", [(30, 20), (2, 3)])
def test_an_image_whose_bytes_are_another_size_than_its_message_says_is_refused(network, declared):  # noqa: F811
    """A.5's `width` and `height` are what a client lays the picture out by before it is fetched. A peer's
    message declaring a 3x2 PNG as 30x20 (or its sides swapped) was downloaded and kept as declared: its
    checksum and type matched, its size was never read."""
    a, b = network["a"], network["b"]
    image = png(3, 2)
    sent = a.node.send_file("zhangsan", b.user("lisi"), image, "image")
    width, height = declared
    lying = a.node.send("zhangsan", b.user("zhaoliu"), "image",  # its origin serves the file for it, too
                        {**sent.document["content"], "width": width, "height": height})
    with pytest.raises(UnsupportedMediaType, match=f"3x2, not the {width}x{height}"):
        b.node.download("zhaoliu", lying.message_id)
    assert not (b.dir / "files" / a.id / sent.document["content"]["file_id"]).exists()
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == image  # as declared: kept
    again = a.node.send("zhangsan", b.user("zhaoliu"), "image", lying.document["content"])
    with pytest.raises(UnsupportedMediaType, match=f"3x2, not the {width}x{height}"):  # the kept file is no answer
        b.node.download("zhaoliu", again.message_id)


@pytest.mark.parametrize("stated", [5000, 2300, 1])
def test_a_voice_clip_whose_bytes_are_another_length_than_its_message_says_is_refused(network, stated):  # noqa: F811
    """A.6's `duration_ms` is what a client shows before the clip is fetched. A peer's message stating a 1.2 s clip
    as 5 s was downloaded and kept as stated: its checksum and type matched, its length was never read. Within
    1,000 ms (or 10 %) of the recording's own it is taken: a recorder's count and a container's differ by a frame
    or two, 512 ms at 8 kHz. The length is read on bytes fresh from the peer only: a clip already kept is given as
    it is (a copy kept before nodes read clips' lengths may carry a typed one)."""
    a, b = network["a"], network["b"]
    clip = adts(1200)  # 1207 ms
    sent = a.node.send_file("zhangsan", b.user("lisi"), clip, "voice")
    lying = a.node.send("zhangsan", b.user("zhaoliu"), "voice",  # its origin serves the file for it, too
                        {**sent.document["content"], "duration_ms": stated})
    with pytest.raises(UnsupportedMediaType, match=f"the recording is 1207 ms long, not the {stated} ms"):
        b.node.download("zhaoliu", lying.message_id)
    assert not (b.dir / "files" / a.id / sent.document["content"]["file_id"]).exists()
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == clip  # as stated: kept
    again = a.node.send("zhangsan", b.user("zhaoliu"), "voice", lying.document["content"])
    assert b.node.file_bytes(b.node.download("zhaoliu", again.message_id)) == clip  # kept: its length not read again
    near = a.node.send("zhangsan", b.user("zhaoliu"), "voice", {**sent.document["content"], "duration_ms": 1300})
    assert b.node.file_bytes(b.node.download("zhaoliu", near.message_id)) == clip


@pytest.mark.parametrize("factor", [1000, 2])
def test_a_file_whose_bytes_are_fewer_than_its_message_says_is_refused(network, factor):  # noqa: F811
    """A.10's `size` is what a client shows before the file is fetched, and what the download's limit and time
    allowance are measured by. A peer's message stating a 3,016-byte PDF as 3,016,000 bytes was downloaded and
    kept as stated: reading stopped at the stated size, so more bytes were refused, but fewer were never
    counted. A file already kept is no answer to a message stating another size for it either."""
    a, b = network["a"], network["b"]
    sent = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    stated = len(PDF) * factor
    lying = a.node.send("zhangsan", b.user("zhaoliu"), "file",  # its origin serves the file for it, too
                        {**sent.document["content"], "size": stated})
    with pytest.raises(UnsupportedMediaType, match=f"the file is {len(PDF)} bytes, not the {stated}"):
        b.node.download("zhaoliu", lying.message_id)
    assert not (b.dir / "files" / a.id / sent.document["content"]["file_id"]).exists()
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == PDF  # as stated: kept
    for other in (stated, len(PDF) - 1):
        again = a.node.send("zhangsan", b.user("zhaoliu"), "file", {**sent.document["content"], "size": other})
        with pytest.raises(UnsupportedMediaType, match=f"the file is {len(PDF)} bytes, not the {other}"):
            b.node.download("zhaoliu", again.message_id)  # the kept file is no answer
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == PDF


def test_a_sticker_stating_one_side_is_checked_on_that_side(network):  # noqa: F811
    """A.14's `width` and `height` are each optional: a sticker stating its width alone crashed the download
    (KeyError: 'height'). Only the sides a message states are compared with the picture's own."""
    a, b = network["a"], network["b"]
    image = png(240, 180)
    sent = a.node.send_file("zhangsan", b.user("lisi"), image, "sticker",
                            sticker={"package_id": "jingwu", "sticker_id": "s1", "alt_text": "[x]", "width": 240})
    assert "height" not in sent.document["content"]
    assert b.node.file_bytes(b.node.download("lisi", sent.message_id)) == image
    content = {key: value for key, value in sent.document["content"].items() if key != "width"}
    tall = a.node.send("zhangsan", b.user("zhaoliu"), "sticker", {**content, "height": 180})
    assert b.node.file_bytes(b.node.download("zhaoliu", tall.message_id)) == image
    for stated in ({"width": 120}, {"height": 240}):
        lying = a.node.send("zhangsan", b.user("zhaoliu"), "sticker", {**content, **stated})
        with pytest.raises(UnsupportedMediaType, match="the image is 240x180, not the"):
            b.node.download("zhaoliu", lying.message_id)


def jpeg(width: int, height: int, *, orientation: int | None = None, fill: int = 0) -> bytes:
    """A baseline JPEG's markers: an EXIF APP1 stating `orientation` (big-endian TIFF, one IFD0 entry) if given,
    `fill` 0xFF fill bytes before the frame header (allowed before any marker), the frame header, the end."""
    segments = b""
    if orientation is not None:
        tiff = (b"MM\x00\x2a" + struct.pack(">IH", 8, 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
                + struct.pack(">I", 0))
        body = b"Exif\x00\x00" + tiff
        segments += b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body
    frame = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + segments + b"\xff" * fill + frame + b"\x00" * 200 + b"\xff\xd9"


def test_a_jpegs_size_is_read_past_fill_bytes_and_may_be_stated_as_displayed_after_exif_rotation():
    """A valid JPEG with fill bytes before its frame header had "no readable size". A phone's photo stored
    4032x3024 with EXIF orientation 5-8 (turned a quarter) is shown 3024x4032, and a sender states either."""
    assert image_size(jpeg(640, 480, fill=1), "JPG") == (640, 480)
    assert image_size(jpeg(640, 480, fill=3, orientation=1), "JPG") == (640, 480)
    for orientation in (5, 6, 7, 8):
        assert image_sizes(jpeg(4032, 3024, orientation=orientation), "JPG") == {(4032, 3024), (3024, 4032)}
    for orientation in (None, 1, 3):
        assert image_sizes(jpeg(4032, 3024, orientation=orientation), "JPG") == {(4032, 3024)}


def test_an_exif_rotated_jpeg_stated_at_its_displayed_size_is_downloaded(network):  # noqa: F811
    a, b = network["a"], network["b"]
    turned, upright = jpeg(4032, 3024, orientation=6), jpeg(4032, 3024)
    sent = a.node.send_file("zhangsan", b.user("lisi"), turned, "image")
    shown = a.node.send("zhangsan", b.user("lisi"), "image", {**sent.document["content"], "width": 3024,
                                                              "height": 4032})
    assert b.node.file_bytes(b.node.download("lisi", shown.message_id)) == turned
    plain = a.node.send_file("zhangsan", b.user("lisi"), upright, "image")
    swapped = a.node.send("zhangsan", b.user("zhaoliu"), "image", {**plain.document["content"], "width": 3024,
                                                                  "height": 4032})
    with pytest.raises(UnsupportedMediaType, match="the image is 4032x3024, not the 3024x4032"):
        b.node.download("zhaoliu", swapped.message_id)
