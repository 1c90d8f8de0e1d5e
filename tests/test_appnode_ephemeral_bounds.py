"""What one peer node may make the reference node keep of ephemeral state (docs/protocol.md §6, §8.13): no
`updated_at` ahead of the receiver's clock. A peer holding a valid certificate sent a time years ahead that won
every later comparison."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.appnode import protocol
from app.appnode.store import ReadState
from tests.appnode_harness import raw_post
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def stamp(seconds: float = 0) -> str:
    return protocol.format_timestamp(datetime.now(UTC) + timedelta(seconds=seconds))


def presence_item(user: str, seconds: float = 0, status: str = "online") -> dict:
    return {"user_id": user, "status": status, "client_type": "pc", "last_active": stamp(min(seconds, 0)),
            "updated_at": stamp(seconds)}


def read_state(user: str, seconds: float = 0, conversation: str | None = None) -> dict:
    conversation = conversation or "s:" + hashlib.sha256(protocol.new_message_id().encode()).hexdigest()[:32]
    return {"conversation_id": conversation, "user_id": user, "read_up_to_message_id": protocol.new_message_id(),
            "unread_count": 0, "updated_at": stamp(seconds)}


def post_batch(sender, receiver, **batch):
    envelope = protocol.make_envelope(from_node=sender.id, to_node=receiver.id, type="ephemeral", payload=batch)
    return raw_post(sender.node, receiver, "ephemeral", envelope)


def read_states(served) -> dict[tuple[str, str], str]:
    with served.node.db() as session:
        return {(row.conversation_id, row.user_id): row.read_up_to_message_id
                for row in session.scalars(select(ReadState))}


@pytest.mark.parametrize("kind", ["presence", "read_states"])
def test_an_updated_at_ahead_of_the_receivers_clock_is_refused(network, kind):  # noqa: F811
    """An `updated_at` years ahead won every later comparison (newest wins): the user's later, true states were
    ignored until then. More than 5 minutes ahead is stale_timestamp, as the envelope's own timestamp is; a
    clock a minute fast is still taken."""
    a, b = network["a"], network["b"]
    user = a.user("zhangsan")
    if kind == "presence":
        def batch(seconds, status):
            return {"presence": {"items": [presence_item(user, seconds, status)]}}

        def seen():
            return b.node.presence_of(user)["status"]
        field = "payload.presence.items[0].updated_at"
    else:
        conversation = read_state(user)["conversation_id"]
        positions = {"busy": protocol.new_message_id(), "online": protocol.new_message_id(),
                     "away": protocol.new_message_id()}

        def batch(seconds, status):
            return {"read_states": [{**read_state(user, seconds, conversation),
                                     "read_up_to_message_id": positions[status]}]}

        def seen():
            return {v: k for k, v in positions.items()}[read_states(b)[(conversation, user)]]
        field = "payload.read_states[0].updated_at"
    status, body = post_batch(a, b, **batch(3650 * 86400, "busy"))
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "stale_timestamp", field), body
    protocol.validate("error", body)
    assert post_batch(a, b, **batch(-1, "online"))[0] == 200
    assert seen() == "online"  # the true, later state is not shadowed by the future one
    assert post_batch(a, b, **batch(60, "away"))[0] == 200  # a clock a minute fast: taken
    assert seen() == "away"
