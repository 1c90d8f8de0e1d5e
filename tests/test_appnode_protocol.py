"""Appendix A wire contract: docs/protocol.md, the JSON schemas and app.appnode agree, and refuse bad input."""

from __future__ import annotations

import base64
import copy
import json
import math
import re
import struct
import uuid
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from app.appnode import filetypes, protocol, validation
from app.appnode.filetypes import check_declared, check_size, sniff
from app.appnode.protocol import (
    PayloadTooLarge,
    SchemaViolation,
    SenderMismatch,
    StaleTimestamp,
    UnsupportedMediaType,
    WrongRecipient,
    check_envelope,
    check_timestamp,
    make_envelope,
    single_chat_conversation_id,
    validate,
)

DOC = (Path(__file__).resolve().parents[1] / "docs" / "protocol.md").read_text("utf-8")
EXAMPLES = {kind: json.loads(body)
            for kind, body in re.findall(r"<!-- example: (\w+) -->\s*```json\n(.*?)```", DOC, re.S)}
NOW = datetime(2025, 6, 12, 2, 15, 30, 250000, tzinfo=UTC)  # the doc's envelope timestamp
NANCHANG, GANZHOU, JIUJIANG = "36010000002025000001", "36070000002025000001", "36040000002025000001"


def example(kind: str) -> dict:
    return copy.deepcopy(EXAMPLES[kind])


def refused(kind: str, document, path: str) -> SchemaViolation:
    with pytest.raises(SchemaViolation) as caught:
        validate(kind, document)
    error = caught.value
    assert (error.code, error.status) == ("schema_violation", 422)
    assert str(error).startswith(f"{path}: "), str(error)
    assert error.field == (path[1:].lstrip(".") or None)
    return error


# ---- the schemas and the doc agree ------------------------------------------------------------------------------

def test_every_schema_file_is_a_valid_2020_12_schema_named_by_its_id():
    files = sorted(validation.SCHEMA_DIR.glob("*.schema.json"))
    assert {f.name.removesuffix(".schema.json") for f in files} == set(validation.KINDS) | {"common"}
    for path in files:
        schema = json.loads(path.read_text("utf-8"))
        Draft202012Validator.check_schema(schema)
        assert schema["$id"] == validation.SCHEMA_BASE + path.name


def test_the_doc_has_one_example_of_every_shape():
    assert sorted(EXAMPLES) == sorted(validation.KINDS)


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_doc_example_is_valid(kind):
    validate(kind, EXAMPLES[kind])


def test_error_table_in_the_doc_matches_the_error_classes():
    rows = dict(re.findall(r"^\| `([a-z_]+)` \| (\d{3}) \|", DOC, re.M))
    assert {code: int(status) for code, status in rows.items()} == {
        code: cls.status for code, cls in protocol.ERRORS.items()}


def test_endpoint_table_in_the_doc_matches_the_code():
    rows = dict(re.findall(r"^\| `POST (/api/v1/federation/\w+)` \| `(\w+)` \|", DOC, re.M))
    assert rows == protocol.ENDPOINTS
    assert "| `GET /api/v1/health` |" in DOC


@pytest.mark.parametrize(("kind", "limit"), [("image", "image"), ("voice", "voice"), ("file", "file"),
                                             ("sticker", "sticker")])
def test_schema_size_limits_are_the_filetype_limits(kind, limit):
    assert validation.schema(kind)["properties"]["size"]["maximum"] == filetypes.LIMITS[limit]


def test_thumbnail_limit_is_the_base64_of_the_filetype_limit():
    data = validation.schema("image")["properties"]["thumbnail"]["properties"]["data"]
    assert data["maxLength"] == 4 * math.ceil(filetypes.LIMITS["thumbnail"] / 3)


# ---- each schema refuses a bad document, naming where ----------------------------------------------------------

def mutated(kind, change):
    document = example(kind)
    change(document)
    return document


BAD = [
    ("envelope", lambda d: d.pop("timestamp"), "$.timestamp"),
    ("envelope", lambda d: d.update(signature="c2ln"), "$.signature"),
    ("envelope", lambda d: d.update(to_node="3607000000202500001"), "$.to_node"),
    ("envelope", lambda d: d.update(type="chat"), "$.type"),
    ("envelope", lambda d: d.update(timestamp="2025-06-12T10:15:30+08:00"), "$.timestamp"),
    ("envelope", lambda d: d["payload"]["content"].update(text="长" * 5001), "$.payload.content.text"),
    ("envelope", lambda d: d["payload"]["sender"].pop("org_code"), "$.payload.sender.org_code"),
    ("envelope", lambda d: d["payload"].update(priority="high"), "$.payload.priority"),
    ("sender", lambda d: d.update(client_type="pager"), "$.client_type"),
    ("sender", lambda d: d.update(node_id="3601000000202500000A"), "$.node_id"),
    ("sender", lambda d: d.update(user_id="zhang@san"), "$.user_id"),
    ("text", lambda d: d.update(text=""), "$.text"),
    ("text", lambda d: d.update(text="a" * 5001), "$.text"),
    ("text", lambda d: d.update(at_user_ids=["lisi"]), "$.at_user_ids[0]"),
    ("image", lambda d: d.update(format="BMP"), "$.format"),
    ("image", lambda d: d.update(sha256="B" * 64), "$.sha256"),
    ("image", lambda d: d["thumbnail"].update(data="A" * 43693), "$.thumbnail.data"),
    ("image", lambda d: d["thumbnail"].update(data="AAAAA"), "$.thumbnail.data"),
    ("voice", lambda d: d.update(format="AMR"), "$.format"),
    ("voice", lambda d: d.pop("duration_ms"), "$.duration_ms"),
    ("file", lambda d: d.update(file_name="../../etc/passwd"), "$.file_name"),
    ("file", lambda d: d.update(size=1073741825), "$.size"),
    ("message", lambda d: d.update(msg_type="video"), "$.msg_type"),
    ("message", lambda d: d.update(chat_type="single"), "$.conversation_id"),
    ("message", lambda d: d.update(msg_type="text"), "$.content.text"),
    ("message", lambda d: d.update(msg_type="sticker"), "$.content.package_id"),
    ("download", lambda d: d["range"].update(offset=-1), "$.range.offset"),
    ("download", lambda d: d.update(path="/etc/passwd"), "$.path"),
    ("group_op", lambda d: d.update(op="rename"), "$.op"),
    ("group_op", lambda d: d.update(home_node_id="3601"), "$.home_node_id"),
    ("group_op", lambda d: d["group_info"].pop("members"), "$.group_info.members"),
    ("group_op", lambda d: d.pop("seq"), "$.group_info.owner"),  # a request may not dictate the state
    ("group_op", lambda d: d.update(op="kick", target_user_ids=[]), "$.target_user_ids"),
    ("group_op", lambda d: d.update(op="create", seq=2), "$.seq"),
    ("read_state", lambda d: d.update(unread_count=-1), "$.unread_count"),
    ("read_state", lambda d: d.update(conversation_id="s:abc"), "$.conversation_id"),
    ("sticker", lambda d: d.update(format="JPG"), "$.format"),
    ("sticker", lambda d: d.update(alt_text="赞" * 33), "$.alt_text"),
    ("presence", lambda d: d["items"][0].update(status="invisible"), "$.items[0].status"),
    ("presence", lambda d: d.update(items=[]), "$.items"),
    ("ephemeral", lambda d: d["read_states"][0].pop("updated_at"), "$.read_states[0].updated_at"),
    ("ack", lambda d: d.update(status="ok"), "$.status"),
    ("error", lambda d: d["error"].update(code="Schema Violation"), "$.error.code"),
    ("health", lambda d: d.update(status="degraded"), "$.status"),
    # `$` in Python's re also matches before a final newline; a schema's pattern is matched whole (ECMA-262)
    ("envelope", lambda d: d.update(message_id=d["message_id"] + "\n"), "$.message_id"),
    ("envelope", lambda d: d.update(from_node=d["from_node"] + "\n"), "$.from_node"),
    ("sender", lambda d: d.update(user_id="zhangsan\n"), "$.user_id"),
    ("read_state", lambda d: d.update(updated_at=d["updated_at"] + "\n"), "$.updated_at"),
    # C1 controls and bidi controls in what people read: "江西省\u202e厅安公" shows as 江西省公安厅, and
    # "现场\u202egnp.exe" as 现场exe.png
    ("sender", lambda d: d.update(org_name="江西省\u202e厅安公"), "$.org_name"),
    ("sender", lambda d: d.update(user_name="张\u2067三"), "$.user_name"),
    ("sender", lambda d: d.update(user_name="张\x85三"), "$.user_name"),
    ("file", lambda d: d.update(file_name="现场\u202egnp.exe"), "$.file_name"),
    ("image", lambda d: d.update(file_name="\u200f现场.jpg"), "$.file_name"),
    ("sticker", lambda d: d.update(alt_text="[\u202d赞]"), "$.alt_text"),
    ("group_op", lambda d: d["group_info"].update(name="专班\u061c"), "$.group_info.name"),
    ("group_op", lambda d: d["group_info"].update(notice="通知\x9b"), "$.group_info.notice"),
    ("text", lambda d: d.update(text="收到\x9d"), "$.text"),
    # a label of blanks only shows as nothing: a group, a sender or a unit nobody can tell apart
    ("group_op", lambda d: d["group_info"].update(name=" "), "$.group_info.name"),
    ("group_op", lambda d: d["group_info"].update(name="\u3000\u3000"), "$.group_info.name"),
    ("sender", lambda d: d.update(user_name="  "), "$.user_name"),
    ("sender", lambda d: d.update(org_name=" \u00a0"), "$.org_name"),
    # so is a file name, or the part of it before its extension, and a sticker's alt text: "\u200b\u200b.png"
    # shows as ".png"
    ("file", lambda d: d.update(file_name="\u200b\u200b.png"), "$.file_name"),
    ("file", lambda d: d.update(file_name=" .pdf"), "$.file_name"),
    ("file", lambda d: d.update(file_name="\u3000"), "$.file_name"),
    ("image", lambda d: d.update(file_name="\ufeff.jpg"), "$.file_name"),
    ("sticker", lambda d: d.update(alt_text="\u200b"), "$.alt_text"),
    ("sticker", lambda d: d.update(alt_text=" \u3000"), "$.alt_text"),
    # other characters that show as nothing: a soft hyphen, invisible operators, Hangul fillers, variation
    # selectors; and dots, which a name of blanks and dots shows as no more than its extension
    ("file", lambda d: d.update(file_name="\u00ad.png"), "$.file_name"),
    ("file", lambda d: d.update(file_name="\u2061.exe"), "$.file_name"),
    ("image", lambda d: d.update(file_name="\u3164.png"), "$.file_name"),
    ("file", lambda d: d.update(file_name="\u200b.\u200b.png"), "$.file_name"),
    ("file", lambda d: d.update(file_name=" ..pdf"), "$.file_name"),
    ("file", lambda d: d.update(file_name="..."), "$.file_name"),
    ("sender", lambda d: d.update(user_name="\u115f\u1160"), "$.user_name"),
    ("group_op", lambda d: d["group_info"].update(name="\ufe0f\u034f"), "$.group_info.name"),
    ("sticker", lambda d: d.update(alt_text="\uffa0\u180e"), "$.alt_text"),
]


@pytest.mark.parametrize(("kind", "change", "path"), BAD, ids=[f"{k}-{p}" for k, _, p in BAD])
def test_schema_refuses_bad_document_naming_the_path(kind, change, path):
    refused(kind, mutated(kind, change), path)


@pytest.mark.parametrize("name", ["报告.pdf", ".bashrc", "a.", "x.tar.gz", "a\u200bb.pdf", "现场 照片.jpg",
                                  "\u200ba.png", "a.\u200b", "a..b", "v1.2.pdf", "张\u00a0三.docx",
                                  "\U0001f468\u200d\U0001f469\u200d\U0001f467.png"])
def test_a_file_name_with_something_to_read_before_its_extension_or_none_is_taken(name):
    document = mutated("file", lambda d: d.update(file_name=name))
    assert validation.fast_validator("file").is_valid(document) and validation.validator("file").is_valid(document)


def test_every_shape_has_a_refusal_case():
    assert {kind for kind, _, _ in BAD} == set(validation.KINDS)


def test_an_empty_ephemeral_batch_is_refused():
    refused("ephemeral", {}, "$")  # field omitted: the document itself is wrong


def test_a_refusal_names_an_odd_key_without_breaking_the_message():
    with pytest.raises(SchemaViolation) as caught:
        validate("text", {"text": "hi", "é x": 1})
    assert str(caught.value).startswith('$["\\u00e9 x"]: ')


def test_unknown_kind_is_a_programming_error():
    with pytest.raises(ValueError):
        validate("video", {})


# ---- A.11 conversation ids --------------------------------------------------------------------------------------

def test_single_chat_id_matches_the_worked_example():
    block = re.search(r"<!-- worked-example: single_chat -->\s*```text\n(.*?)```", DOC, re.S).group(1)
    values = dict(re.findall(r'^(\w+)\s*= "(.*)"$', block, re.M))
    assert single_chat_conversation_id(values["a"], values["b"]) == values["conversation_id"]
    assert values["conversation_id"] == EXAMPLES["envelope"]["payload"]["conversation_id"]


def test_single_chat_id_is_symmetric_and_distinct():
    a, b, c = f"zhangsan@{NANCHANG}", f"lisi@{GANZHOU}", f"lisi@{JIUJIANG}"
    assert single_chat_conversation_id(a, b) == single_chat_conversation_id(b, a)
    assert single_chat_conversation_id(a, b) != single_chat_conversation_id(a, c)
    assert re.fullmatch(r"s:[0-9a-f]{32}", single_chat_conversation_id(a, c))


def test_single_chat_id_refuses_a_bare_user_id():
    with pytest.raises(ValueError):
        single_chat_conversation_id("zhangsan", f"lisi@{GANZHOU}")
    with pytest.raises(ValueError):
        single_chat_conversation_id(f"zhangsan@{NANCHANG}\n", f"lisi@{GANZHOU}")
    with pytest.raises(SchemaViolation):
        protocol.require_address(f"lisi@{GANZHOU}\n", "to")


# ---- A.8 envelope checks ----------------------------------------------------------------------------------------

def test_the_doc_envelope_passes_the_receiver_checks():
    check_envelope(example("envelope"), node_id=GANZHOU, expected_type="message", now=NOW)


def test_an_envelope_for_another_node_is_refused():
    with pytest.raises(WrongRecipient) as caught:
        check_envelope(example("envelope"), node_id=JIUJIANG, now=NOW)
    assert (caught.value.code, caught.value.status) == ("wrong_recipient", 400)


def test_an_endpoint_refuses_an_envelope_of_another_type():
    with pytest.raises(SchemaViolation, match=r"^\$\.type"):
        check_envelope(example("envelope"), node_id=GANZHOU, expected_type="group_op", now=NOW)


def test_a_message_travels_under_its_own_id():
    envelope = example("envelope")
    envelope["message_id"] = str(uuid.uuid4())
    with pytest.raises(SchemaViolation, match=r"^\$\.payload\.message_id"):
        check_envelope(envelope, node_id=GANZHOU, now=NOW)


def test_a_wrongly_derived_conversation_id_is_refused():
    envelope = example("envelope")
    envelope["payload"]["conversation_id"] = "s:" + "0" * 32
    with pytest.raises(SchemaViolation, match="conversation_id"):
        check_envelope(envelope, node_id=GANZHOU, now=NOW)


def test_a_node_cannot_send_a_single_chat_message_for_another_nodes_user():
    envelope = example("envelope")
    envelope["from_node"] = JIUJIANG
    with pytest.raises(SenderMismatch) as caught:
        check_envelope(envelope, node_id=GANZHOU, now=NOW)
    assert (caught.value.code, caught.value.status) == ("sender_mismatch", 403)


@pytest.mark.parametrize(("from_node", "to_node", "allowed"), [
    (GANZHOU, NANCHANG, True),    # the sender's node to the home node
    (NANCHANG, JIUJIANG, True),   # the home node relays to a member node
    (JIUJIANG, NANCHANG, False),  # a third node speaks for a Ganzhou user
    (GANZHOU, JIUJIANG, False),   # the sender's node bypasses the home node
    (NANCHANG, GANZHOU, False),   # the home node "relays" it back to the sender's node
])
def test_group_messages_go_through_the_home_node(from_node, to_node, allowed):
    message = example("message")
    envelope = make_envelope(from_node=from_node, to_node=to_node, type="message", payload=message, now=NOW)
    if allowed:
        check_envelope(envelope, node_id=to_node, now=NOW)
    else:
        with pytest.raises(SenderMismatch):
            check_envelope(envelope, node_id=to_node, now=NOW)


def test_only_the_home_node_announces_group_state():
    envelope = make_envelope(from_node=GANZHOU, to_node=JIUJIANG, type="group_op", payload=example("group_op"),
                             now=NOW)
    with pytest.raises(SenderMismatch):
        check_envelope(envelope, node_id=JIUJIANG, now=NOW)
    envelope["from_node"] = NANCHANG
    check_envelope(envelope, node_id=JIUJIANG, now=NOW)


def test_a_group_request_goes_to_the_home_node_for_a_user_of_the_caller():
    request = {"op": "quit", "group_id": "zhian-2025", "home_node_id": NANCHANG, "operator": f"lisi@{GANZHOU}"}
    check_envelope(make_envelope(from_node=GANZHOU, to_node=NANCHANG, type="group_op", payload=request, now=NOW),
                   node_id=NANCHANG, now=NOW)
    with pytest.raises(WrongRecipient):
        check_envelope(make_envelope(from_node=GANZHOU, to_node=JIUJIANG, type="group_op", payload=request,
                                     now=NOW), node_id=JIUJIANG, now=NOW)
    with pytest.raises(SenderMismatch):
        check_envelope(make_envelope(from_node=JIUJIANG, to_node=NANCHANG, type="group_op", payload=request,
                                     now=NOW), node_id=NANCHANG, now=NOW)


def test_ephemeral_state_comes_from_the_users_node_or_the_groups_home():
    batch = example("ephemeral")  # Nanchang users, and a read state of a Nanchang-homed group
    check_envelope(make_envelope(from_node=NANCHANG, to_node=GANZHOU, type="ephemeral", payload=batch, now=NOW),
                   node_id=GANZHOU, now=NOW)
    with pytest.raises(SenderMismatch, match="cannot report"):
        check_envelope(make_envelope(from_node=JIUJIANG, to_node=GANZHOU, type="ephemeral", payload=batch,
                                     now=NOW), node_id=GANZHOU, now=NOW)


def _file_message(message: dict) -> None:
    message.update(msg_type="file", content=example("file"))


@pytest.mark.parametrize(("kind", "change", "field"), [
    ("message", lambda m: m.update(send_time="2025-02-30T00:00:00Z"), "payload.send_time"),
    ("message", lambda m: (_file_message(m), m["content"].update(expire_at="2025-04-31T00:00:00Z")),
     "payload.content.expire_at"),
    ("ephemeral", lambda b: b["read_states"][0].update(updated_at="2026-02-29T00:00:00Z"),
     "payload.read_states[0].updated_at"),
    ("ephemeral", lambda b: b["presence"]["items"][0].update(last_active="0000-06-12T02:19:58Z"),
     "payload.presence.items[0].last_active"),
    ("ephemeral", lambda b: b["presence"]["items"][0].update(updated_at="2025-06-31T02:20:00Z"),
     "payload.presence.items[0].updated_at"),
])
def test_a_payload_time_that_names_no_moment_is_refused(kind, change, field):
    """The pattern lets February 30 through: stored, it made the conversation page answer 422 to its operator."""
    payload = example(kind)
    change(payload)
    envelope = make_envelope(from_node=NANCHANG, to_node=GANZHOU, type=kind, payload=payload, now=NOW)
    with pytest.raises(SchemaViolation, match="not a calendar date") as caught:
        check_envelope(envelope, node_id=GANZHOU, now=NOW)
    assert caught.value.field == field


@pytest.mark.parametrize(("last_active", "updated_at", "refusal"), [
    ("2099-01-01T00:00:00Z", "2025-06-12T02:20:00Z", StaleTimestamp),  # years ahead of the clock
    # a vendor writing last_active with other precision than updated_at: harmless, and refusing it would lose the
    # whole batch
    ("2025-06-12T02:20:00.500Z", "2025-06-12T02:20:00Z", None),
    ("2025-06-12T02:20:00Z", "2025-06-12T02:20:00.000Z", None),
    ("2024-06-12T02:20:00Z", "2025-06-12T02:20:00Z", None),  # idle for a year
])
def test_a_presence_last_active_ahead_of_the_clock_is_refused(last_active, updated_at, refusal):
    """A peer's last_active years ahead was taken and shown ("last active 2099-01-01"): only updated_at was held
    to the clock."""
    batch = example("ephemeral")
    batch["presence"]["items"][0].update(last_active=last_active, updated_at=updated_at)
    envelope = make_envelope(from_node=NANCHANG, to_node=GANZHOU, type="ephemeral", payload=batch, now=NOW)
    if refusal is None:
        check_envelope(envelope, node_id=GANZHOU, now=NOW)
        return
    with pytest.raises(refusal) as caught:
        check_envelope(envelope, node_id=GANZHOU, now=NOW)
    field = "payload.presence.items[0].last_active"
    assert caught.value.field == field and caught.value.status == 400


def test_built_envelopes_acks_and_retries_are_valid():
    envelope = make_envelope(from_node=NANCHANG, to_node=GANZHOU, type="download", payload=example("download"),
                             now=NOW)
    validate("envelope", envelope)
    retry = protocol.restamp(envelope, NOW + timedelta(minutes=7))
    assert retry["message_id"] == envelope["message_id"] and retry["timestamp"] == "2025-06-12T02:22:30.250Z"
    check_envelope(retry, node_id=GANZHOU, now=NOW + timedelta(minutes=7))
    ack = protocol.make_ack(envelope["message_id"], NOW, duplicate=True)
    validate("ack", ack)
    assert ack["status"] == "duplicate"


def test_message_ids_are_unique_uuid7():
    ids = {protocol.new_message_id() for _ in range(1000)}
    assert len(ids) == 1000
    for value in list(ids)[:20]:
        validate("ack", {"status": "accepted", "message_id": value, "received_at": "2025-06-12T02:15:30Z"})
        assert uuid.UUID(value).version == 7 and uuid.UUID(value).variant == uuid.RFC_4122


# ---- timestamps ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("offset", [0, 300, -300])
def test_timestamp_within_five_minutes_is_fresh(offset):
    check_timestamp(protocol.format_timestamp(NOW + timedelta(seconds=offset)), NOW)


@pytest.mark.parametrize("offset", [301, -301, 86400])
def test_timestamp_outside_five_minutes_is_stale(offset):
    with pytest.raises(StaleTimestamp) as caught:
        check_timestamp(protocol.format_timestamp(NOW + timedelta(seconds=offset)), NOW)
    assert (caught.value.code, caught.value.status, caught.value.field) == ("stale_timestamp", 400, "timestamp")


def test_a_stale_envelope_is_refused():
    with pytest.raises(StaleTimestamp):
        check_envelope(example("envelope"), node_id=GANZHOU, now=NOW + timedelta(minutes=6))


@pytest.mark.parametrize("text", ["2025-06-12 02:15:30Z", "2025-06-12T10:15:30+08:00", "2025-02-30T00:00:00Z"])
def test_a_malformed_timestamp_is_a_schema_violation(text):
    with pytest.raises(SchemaViolation):
        check_timestamp(text, NOW)


def test_naive_times_are_refused():
    with pytest.raises(ValueError):
        protocol.format_timestamp(datetime(2025, 6, 12))


# ---- file content -------------------------------------------------------------------------------------------------

def png_bytes() -> bytes:
    """A complete 1x1 grey PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
            + chunk(b"IEND", b""))


def adts_frame(payload: bytes = b"\x21\x00\x49\x90\x02\x19\x00\x23\x80") -> bytes:
    """One AAC-LC ADTS frame, 44.1 kHz stereo, no CRC."""
    length = 7 + len(payload)
    profile, rate, channels = 1, 4, 2
    return bytes([0xFF, 0xF1, (profile << 6) | (rate << 2) | (channels >> 2),
                  ((channels & 3) << 6) | (length >> 11), (length >> 3) & 0xFF, ((length & 7) << 5) | 0x1F,
                  0xFC]) + payload


def ftyp(major: bytes, *compatible: bytes) -> bytes:
    brands = major + b"\x00\x00\x02\x00" + b"".join(compatible)
    return struct.pack(">I", 8 + len(brands)) + b"ftyp" + brands + b"\x00\x00\x00\x08free"


GIF = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00" \
      b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
JPEG = bytes.fromhex("ffd8ffe000104a46494600010100000100010000") + b"\xff\xd9"
ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 8 + struct.pack("<HH", 2, 0x3E) + b"\x00" * 40
PE = b"MZ\x90\x00" + b"\x00" * 56 + struct.pack("<I", 64) + b"PE\x00\x00" + b"\x00" * 20
MACHO = b"\xcf\xfa\xed\xfe\x07\x00\x00\x01" + b"\x00" * 24
FAT_MACHO = b"\xca\xfe\xba\xbe\x00\x00\x00\x02" + b"\x00" * 40
JAVA_CLASS = b"\xca\xfe\xba\xbe\x00\x00\x00\x41" + b"\x00" * 40


SAMPLES = {
    "png": (png_bytes(), "PNG"), "gif": (GIF, "GIF"), "jpeg": (JPEG, "JPG"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF"),
    "mp4-isom": (ftyp(b"isom", b"isom", b"iso2", b"avc1", b"mp41"), "MP4"),
    "mp4-mp42": (ftyp(b"mp42", b"mp42", b"isom"), "MP4"),
    "m4a": (ftyp(b"M4A ", b"M4A ", b"mp42", b"isom"), "AAC"), "adts": (adts_frame(), "AAC"),
    "elf": (ELF, "ELF"), "pe": (PE, "PE"), "mach-o": (MACHO, "MACHO"), "mach-o-universal": (FAT_MACHO, "MACHO"),
    "mp3-frame": (b"\xff\xfb\x90\x44" + b"\x55" * 60, None),  # the same sync bits, but layer III
    "heic": (ftyp(b"heic", b"mif1", b"heic"), None), "java-class": (JAVA_CLASS, None),
    "text": (b"hello, world\n", None), "empty": (b"", None),
}


@pytest.mark.parametrize(("data", "kind"), SAMPLES.values(), ids=SAMPLES.keys())
def test_sniff_recognises_magic_bytes(data, kind):
    assert sniff(data) == kind


def test_the_png_sample_is_a_real_png():
    data, chunks, at = png_bytes(), {}, 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at:at + 4])
        kind, body = data[at + 4:at + 8], data[at + 8:at + 8 + length]
        assert struct.unpack(">I", data[at + 8 + length:at + 12 + length])[0] == zlib.crc32(kind + body)
        chunks[kind], at = body, at + 12 + length
    assert list(chunks) == [b"IHDR", b"IDAT", b"IEND"]
    assert zlib.decompress(chunks[b"IDAT"]) == b"\x00\x80"


@pytest.mark.parametrize(("sample", "declared"), [
    ("png", "PNG"), ("png", "image/png"), ("jpeg", "JPG"), ("jpeg", "image/jpeg; q=1"), ("gif", "GIF"),
    ("adts", "AAC"), ("m4a", "audio/mp4"), ("pdf", "application/pdf"), ("mp4-isom", "video/mp4"),
    ("text", "text/plain"), ("empty", "application/vnd.ms-word"), ("elf", "application/x-executable"),
    ("pe", "application/vnd.microsoft.portable-executable"),
])
def test_content_matching_its_declaration_passes(sample, declared):
    check_declared(SAMPLES[sample][0], declared)


@pytest.mark.parametrize(("sample", "declared"), [
    ("elf", "PNG"), ("pe", "image/png"), ("mach-o", "GIF"), ("pe", "application/pdf"), ("elf", "text/plain"),
    ("mach-o-universal", "application/octet-stream"), ("jpeg", "PNG"), ("png", "video/mp4"), ("text", "AAC"),
    ("mp3-frame", "audio/aac"), ("mp4-isom", "AAC"), ("heic", "video/mp4"),
])
def test_content_not_matching_its_declaration_is_refused(sample, declared):
    with pytest.raises(UnsupportedMediaType) as caught:
        check_declared(SAMPLES[sample][0], declared)
    assert (caught.value.code, caught.value.status) == ("unsupported_media_type", 415)


def test_an_elf_renamed_as_png_is_refused_as_an_executable():
    with pytest.raises(UnsupportedMediaType, match="executable"):
        check_declared(ELF + png_bytes(), "PNG")


def test_the_doc_thumbnail_is_what_it_declares():
    thumbnail = EXAMPLES["image"]["thumbnail"]
    check_declared(base64.b64decode(thumbnail["data"], validate=True), thumbnail["format"])


def test_size_limit():
    check_size(filetypes.LIMITS["image"], filetypes.LIMITS["image"])
    with pytest.raises(PayloadTooLarge) as caught:
        check_size(filetypes.LIMITS["image"] + 1, filetypes.LIMITS["image"])
    assert (caught.value.code, caught.value.status) == ("payload_too_large", 413)
    with pytest.raises(ValueError):
        check_size(-1, 10)


@pytest.mark.parametrize(("kind", "field", "value", "reason"), [
    ("file", "file_name", "a\\b.pdf", '"a\\\\b.pdf" holds a backslash (U+005C), which a file name may not hold'),
    ("file", "file_name", "a/b.pdf", '"a/b.pdf" holds a slash (U+002F), which a file name may not hold'),
    ("file", "file_name", "a\nb.pdf", '"a\\nb.pdf" holds a control character (U+000A), which a file name may not hold'),
    ("file", "file_name", "a\u202egnp.pdf",
     '"a\\u202egnp.pdf" holds a bidi control (U+202E), which a file name may not hold'),
    ("file", "file_name", "..", '".." names a directory, not a file'),
    ("file", "file_name", "\u200b.png", '"\\u200b.png" has nothing to read before its extension'),
    ("sender", "user_name", "\u3000", '"\\u3000" has nothing to read: only spaces or invisible characters'),
    ("sticker", "alt_text", "[\u202d赞]", '"[\\u202d赞]" holds a bidi control (U+202D), which a name may not hold'),
])
def test_a_name_refused_by_its_pattern_is_said_in_words_naming_the_character(kind, field, value, reason):
    """A file name with a backslash was refused with its pattern: "'a\\\\b.pdf' does not match '^(?!\\\\.{1,2}$)..."."""
    error = refused(kind, mutated(kind, lambda d: d.update({field: value})), f"$.{field}")
    assert str(error) == f"$.{field}: {reason}"


@pytest.mark.parametrize(("name", "reason"), [("\u3000" * 64, "has nothing to read"),
                                               ("\u200b" * 30 + "\u202e", "holds a bidi control (U+202E)")])
def test_a_long_refused_name_keeps_its_reason_and_no_escape_is_cut(name, reason):
    """The name was shown cut to 60 characters, then widened (\\u3000 for each blank), and the whole refusal cut
    at 160: the cut fell inside an escape and took the reason with it."""
    sender = {"user_id": "zhangsan", "user_name": name, "node_id": "3" * 20, "org_code": "360100000000",
              "org_name": "南昌市公安局", "client_type": "android"}
    with pytest.raises(SchemaViolation) as refused:
        validate("sender", sender)
    message = str(refused.value)
    assert reason in message and "more)" in message
    shown = message.split('"')[1]
    assert re.fullmatch(r"(\\u[0-9a-f]{4})+", shown), shown


@pytest.mark.parametrize(("kind", "change", "path", "reason"), [
    ("text", lambda d: d.update(text="请" * 5001), "$.text", "… (4941 more) is 5001 characters long; at most 5000"),
    ("text", lambda d: d.update(text=""), "$.text", "empty: at least 1 character"),
    ("text", lambda d: d.update(text="a\x01b"), "$.text",
     '"a\\u0001b" holds a control character (U+0001), which a text may not hold'),
    ("group_op", lambda d: d["group_info"].update(notice="x" * 1001), "$.group_info.notice",
     "… (941 more) is 1001 characters long; at most 1000"),
    ("group_op", lambda d: d["group_info"].update(notice="值班\x07"), "$.group_info.notice",
     '"值班\\u0007" holds a control character (U+0007), which a notice may not hold'),
    ("file", lambda d: d.update(file_name="a" * 252 + ".pdf"), "$.file_name",
     "… (196 more) is 256 characters long; at most 255"),
    ("group_op", lambda d: d.update(target_user_ids=[f"u{n}@36010000002025000001" for n in range(3001)]),
     "$.target_user_ids", "3001 items; at most 3000"),
])
def test_a_text_over_its_length_or_holding_a_control_character_is_refused_with_its_reason(kind, change, path,
                                                                                          reason):
    """The validator's message put the whole value first (`'请请…' is too long`), and the refusal, cut at 160
    characters, kept the value and lost the reason and the limit; a control character was refused with the
    pattern, a line of character ranges."""
    error = refused(kind, mutated(kind, change), path)
    assert str(error).endswith(reason), str(error)
    assert len(str(error)) < 200
