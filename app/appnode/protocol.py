"""A.8 node-to-node requests: the Appendix A schemas, the envelope and the protocol's error codes.

docs/protocol.md is the prose of this contract. Plain Python: no Flask, no database.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from functools import cache

from app.appnode.validation import SchemaViolation, schema, schema_pattern, validate
from app.errors import Conflict, DomainError, NotFound, PermissionDenied, ValidationFailed

# Each federation endpoint takes envelopes of exactly one type.
ENDPOINTS = {
    "/api/v1/federation/messages": "message",
    "/api/v1/federation/groups": "group_op",
    "/api/v1/federation/ephemeral": "ephemeral",
    "/api/v1/federation/download": "download",
}
MAX_BODY_BYTES = 1024 * 1024
MAX_SKEW_SECONDS = 300


# The error codes of docs/protocol.md §5.3, beside the ones app.errors already defines.
class InvalidJSON(ValidationFailed):
    code, status = "invalid_json", 400


class StaleTimestamp(ValidationFailed):
    code, status = "stale_timestamp", 400


class WrongRecipient(ValidationFailed):
    code, status = "wrong_recipient", 400


class UnknownPeer(PermissionDenied):
    code, status = "unknown_peer", 403


class CertificateMismatch(PermissionDenied):
    code, status = "certificate_mismatch", 403


class SenderMismatch(PermissionDenied):
    code, status = "sender_mismatch", 403


class NotAParticipant(PermissionDenied):
    code, status = "not_a_participant", 403


class QuotaExceeded(PermissionDenied):
    """The peer holds as much of this kind here as the receiver keeps for one node: a refusal of this peer, not
    a rate (429) or a fault of the receiver's (5xx), so it is not retried."""
    code, status = "quota_exceeded", 403


class FileExpired(DomainError):
    code, status = "file_expired", 410


class FileGone(DomainError):
    """§7.2: the origin keeps the file's message, but its bytes are no longer in its data directory (removed by
    hand, a restore without its files): final, as `file_expired` is, where it was the origin's 500 to retry."""
    code, status = "file_gone", 410


class PayloadTooLarge(DomainError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(DomainError):
    code, status = "unsupported_media_type", 415


class MethodNotAllowed(DomainError):
    code, status = "method_not_allowed", 405


class InternalError(DomainError):
    code, status = "internal_error", 500


class RangeNotSatisfiable(DomainError):
    code, status = "range_not_satisfiable", 416


class UnsupportedCapability(DomainError):
    code, status = "unsupported_capability", 422


class RateLimited(DomainError):
    code, status = "rate_limited", 429


class Unavailable(DomainError):
    code, status = "unavailable", 503


class TooManyConnections(DomainError):
    """The caller already has as many connections being served as the receiver allows one caller (§10)."""
    code, status = "too_many_connections", 503


ERRORS: dict[str, type[DomainError]] = {cls.code: cls for cls in (
    InvalidJSON, StaleTimestamp, WrongRecipient, UnknownPeer, CertificateMismatch, SenderMismatch, NotAParticipant,
    QuotaExceeded, PermissionDenied, NotFound, MethodNotAllowed, Conflict, FileExpired, FileGone, PayloadTooLarge,
    UnsupportedMediaType, RangeNotSatisfiable, SchemaViolation, UnsupportedCapability, RateLimited, InternalError,
    Unavailable, TooManyConnections)}


# ---- identifiers and times -------------------------------------------------------------------------------------

def new_message_id() -> str:
    """A UUIDv7 (RFC 9562): unique, and sorting roughly by creation time, which keeps indexes compact."""
    millis = time.time_ns() // 1_000_000 & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 62) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    return str(uuid.UUID(int=value))


@cache
def _pattern(name: str) -> re.Pattern:
    return schema_pattern(schema("common")["$defs"][name]["pattern"])


def is_a(name: str, value) -> bool:
    """`value` is what common.schema.json's `name` (message_id, node_id, address, ...) allows, read as the
    schemas read it."""
    return isinstance(value, str) and _pattern(name).search(value) is not None


def format_timestamp(moment: datetime) -> str:
    """RFC 3339 UTC with milliseconds and a `Z`, the only spelling the schemas accept."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: protocol times are aware UTC")
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sortable_time(text: str) -> str:
    """A valid protocol time as the node stores it to order by: always 6 fractional digits, so that comparing
    the text compares the times. Peers write 0 to 6 digits, and as strings "…:00Z" sorted after "…:00.500Z" and
    "…:00.1Z" after "…:00.12Z"."""
    return datetime.fromisoformat(text).astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_timestamp(text: str, field: str = "timestamp") -> datetime:
    if not is_a("timestamp", text):
        raise SchemaViolation(f"$.{field}: not an RFC 3339 UTC timestamp", field=field)
    try:
        return datetime.fromisoformat(text)
    except ValueError:  # the pattern lets 2025-02-30 through
        raise SchemaViolation(f"$.{field}: not a calendar date", field=field) from None


def check_timestamp(ts: str, now: datetime | None = None, skew: float = MAX_SKEW_SECONDS) -> datetime:
    """A.8: the envelope's timestamp must be within `skew` seconds of the receiver's clock, either way."""
    moment = parse_timestamp(ts)
    now = now or datetime.now(UTC)
    if now.tzinfo is None:
        raise ValueError("naive datetime: protocol times are aware UTC")
    drift = (moment - now).total_seconds()
    if abs(drift) > skew:
        raise StaleTimestamp(f"timestamp {ts} is {drift:+.0f} s from this node's clock (allowed: +/-{skew:.0f} s)",
                             field="timestamp")
    return moment


def node_of(address: str) -> str:
    """The node id of a `user_id@node_id` (or group) address."""
    return address.rpartition("@")[2]


def require_address(value: str, field: str, what: str = "user") -> str:
    """A `local_id@node_id` address (A.3, a user's or a group's), or a SchemaViolation in the words a single
    chat's `to` gets: a bare name would otherwise be taken for a node id and refused as an unknown node."""
    if not is_a("address", value):
        raise SchemaViolation(f"not a {what} address: {value!r}", field=field)
    return value


def single_chat_conversation_id(addr_a: str, addr_b: str) -> str:
    """A.11: "s:" + the first 32 hex digits of SHA-256 over the two addresses, sorted, joined by a newline."""
    for address in (addr_a, addr_b):
        if not is_a("address", address):
            raise ValueError(f"not a user address: {address!r}")
    joined = "\n".join(sorted((addr_a, addr_b)))
    return "s:" + hashlib.sha256(joined.encode("ascii")).hexdigest()[:32]


def conversation_id_for(message: dict) -> str:
    """The conversation id an A.9 message must carry: derived for single chats, "g:" + group address for groups."""
    sender = message["sender"]
    if message["chat_type"] == "single":
        return single_chat_conversation_id(f"{sender['user_id']}@{sender['node_id']}", message["to"])
    return "g:" + message["to"]


# ---- envelopes ---------------------------------------------------------------------------------------------------

def make_envelope(*, from_node: str, to_node: str, type: str, payload: dict, message_id: str | None = None,
                  now: datetime | None = None) -> dict:
    """A.8 envelope; an A.9 message travels under its own message_id, anything else under a fresh one."""
    if message_id is None:
        message_id = payload["message_id"] if type == "message" else new_message_id()
    return {"from_node": from_node, "to_node": to_node, "message_id": message_id,
            "timestamp": format_timestamp(now or datetime.now(UTC)), "type": type, "payload": payload}


def restamp(envelope: dict, now: datetime | None = None) -> dict:
    """The same delivery, retried: same message_id and payload, a fresh timestamp."""
    return {**envelope, "timestamp": format_timestamp(now or datetime.now(UTC))}


def make_ack(message_id: str, received_at: datetime, *, duplicate: bool = False) -> dict:
    """The 200 answer; for a duplicate, `received_at` is when the first copy arrived."""
    return {"status": "duplicate" if duplicate else "accepted", "message_id": message_id,
            "received_at": format_timestamp(received_at)}


def check_envelope(envelope, *, node_id: str, expected_type: str | None = None,
                   now: datetime | None = None) -> None:
    """Receiver steps 3-6 of docs/protocol.md §5.4: schema, recipient, clock, who may speak for whom.

    The peer checks against the routing table (unknown_peer, certificate_mismatch) come next, then the duplicate
    check: those need the node's own state.
    """
    validate("envelope", envelope)
    if expected_type is not None and envelope["type"] != expected_type:
        raise SchemaViolation(f"$.type: this endpoint takes {expected_type!r} envelopes", field="type")
    if envelope["to_node"] != node_id:
        raise WrongRecipient(f"this is node {node_id}, not {envelope['to_node']}", field="to_node")
    check_timestamp(envelope["timestamp"], now)
    not_ahead = _NOT_AHEAD_TIMES.get(envelope["type"])
    ordered = []
    for field, text in _payload_times(envelope["type"], envelope["payload"]):
        moment = parse_timestamp(text, field)  # every time must name a moment
        if not_ahead and field.endswith(not_ahead):
            ordered.append((field, text, moment))
    check = {"message": _check_message, "group_op": _check_group_op, "ephemeral": _check_ephemeral}
    if envelope["type"] in check:
        check[envelope["type"]](envelope["from_node"], envelope["to_node"], envelope["message_id"],
                                envelope["payload"])
    _check_not_ahead(ordered, now)


# The times that may not be ahead of the receiver's clock: those that order what they belong to, so that one far
# ahead wins every comparison until that time comes, and a presence's `last_active`, which is shown.
_NOT_AHEAD_TIMES = {"ephemeral": (".updated_at", ".last_active"), "message": (".send_time",)}


def _check_not_ahead(ordered: list[tuple[str, str, datetime]], now: datetime | None = None,
                     skew: float = MAX_SKEW_SECONDS) -> None:
    """An ephemeral item's `updated_at` (newest wins, §6) or a message's `send_time` at most `skew` seconds ahead
    of the receiver's clock: an item far ahead beat every later, true state of its user until that time came; a
    message far ahead stayed last in its conversation, and reading it counted every message sent before that
    time as read. A presence's `last_active` too: one in 2099 was kept and shown as the user's last activity.
    After the checks of who speaks for whom, so that a forged item is named as such. Times in the past are fine
    (a message retried for hours keeps its send_time). `ordered`: (field, text, moment), parsed once."""
    if not ordered:
        return
    limit = (now or datetime.now(UTC)) + timedelta(seconds=skew)
    for field, text, moment in ordered:
        if moment > limit:
            raise StaleTimestamp(f"{field[len('payload.'):]} {text} is ahead of this node's clock by more than "
                                 f"{skew:.0f} s", field=field)


def _payload_times(kind: str, payload: dict):
    """The payload's times, by field: each must name a moment, which the schema's pattern (day 01-31, any
    month, year 0000) does not make sure of, and the node reads them back to store, serve and show."""
    if kind == "message":
        yield "payload.send_time", payload["send_time"]
        if "expire_at" in payload["content"]:
            yield "payload.content.expire_at", payload["content"]["expire_at"]
    elif kind == "ephemeral":
        for index, state in enumerate(payload.get("read_states", ())):
            yield f"payload.read_states[{index}].updated_at", state["updated_at"]
        for index, item in enumerate(payload.get("presence", {}).get("items", ())):
            yield f"payload.presence.items[{index}].last_active", item["last_active"]
            yield f"payload.presence.items[{index}].updated_at", item["updated_at"]


def _check_message(from_node: str, to_node: str, message_id: str, message: dict) -> None:
    if message["message_id"] != message_id:
        raise SchemaViolation("$.payload.message_id: an A.9 message travels under its own message_id",
                              field="payload.message_id")
    if message["conversation_id"] != conversation_id_for(message):
        raise SchemaViolation(f"$.payload.conversation_id: expected {conversation_id_for(message)}",
                              field="payload.conversation_id")
    origin, target = message["sender"]["node_id"], node_of(message["to"])
    if message["chat_type"] == "single":
        if from_node != origin:
            raise SenderMismatch(f"node {from_node} cannot send for a user of node {origin}",
                                 field="payload.sender.node_id")
        if to_node != target:
            raise WrongRecipient(f"the recipient lives on node {target}", field="payload.to")
    elif from_node != target and not (from_node == origin and to_node == target):
        # A group message goes from the sender's node to the home node, then from the home node to members.
        raise SenderMismatch("a group message comes from the sender's node to the home node, or from the home node",
                             field="payload.to")
    elif to_node == origin and from_node != origin:
        # The home node relays to every member node but the sender's: one "relayed" back there is a message its
        # user never sent, which that node would store and show as theirs (and serve its file id as its own).
        raise SenderMismatch(f"a group message of a user of node {origin} is never relayed to that node",
                             field="payload.sender.node_id")


def _check_group_op(from_node: str, to_node: str, message_id: str, op: dict) -> None:
    home = op["home_node_id"]
    if "seq" in op:
        if from_node != home:
            raise SenderMismatch(f"only the home node {home} announces group state", field="payload.home_node_id")
    else:
        if to_node != home:
            raise WrongRecipient(f"group operations are requested from the home node {home}",
                                 field="payload.home_node_id")
        if node_of(op["operator"]) != from_node:
            raise SenderMismatch(f"node {from_node} cannot act for {op['operator']}", field="payload.operator")


def _check_ephemeral(from_node: str, to_node: str, message_id: str, batch: dict) -> None:
    for index, state in enumerate(batch.get("read_states", ())):
        relayed = state["conversation_id"].startswith("g:") and node_of(state["conversation_id"]) == from_node
        # The home node relays a read state to the member nodes but the reader's: only that node knows what its
        # user read, and one relayed back there overwrote it (for good, with an updated_at far ahead).
        if node_of(state["user_id"]) != from_node and (not relayed or node_of(state["user_id"]) == to_node):
            raise SenderMismatch(f"node {from_node} cannot report for {state['user_id']}",
                                 field=f"payload.read_states[{index}].user_id")
    for index, item in enumerate(batch.get("presence", {}).get("items", ())):
        if node_of(item["user_id"]) != from_node:
            raise SenderMismatch(f"node {from_node} cannot report for {item['user_id']}",
                                 field=f"payload.presence.items[{index}].user_id")
