"""Message ids between nodes (docs/protocol.md §6): a message id is unique within its conversation at each node.
A member node sees every id its group's home node relays; it must not be able to take such an id at another
member node ahead of the relay, and only the nodes that may write into a conversation can collide in it."""

from __future__ import annotations

import hashlib

import pytest

from app.appnode.protocol import Conflict
from tests.appnode_harness import raw_post
from tests.test_appnode import (  # noqa: F401 (fixture)
    PDF,
    network,
    png,
    settle,
    stored_messages,
    sync,
    text_envelope,
)
from tests.test_appnode_hostile_peers import group_message
from tests.test_sessions import people  # noqa: F401 (fixture)

SUNQI = {"user_id": "sunqi", "user_name": "孙七"}


def three_nodes_and_a_group(network):  # noqa: F811
    """Home node A, member nodes B and C, and A's group of zhangsan, lisi at B and sunqi at C."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    return a, b, c, group


def relayed_to_c_only(a, b, c, send):
    """What `send` sends at A to the group, relayed to C at once while B is down: C learns its id first."""
    b.stop()
    sent = send()
    assert sent.message_id in {m.message_id for m in stored_messages(c)}
    b.start()
    return sent


def by_conversation(node) -> dict[str, dict]:
    return {m.conversation_id: m.document for m in stored_messages(node)}


def test_a_member_node_cannot_take_a_relayed_id_at_another_member_node_ahead_of_the_relay(network):  # noqa: F811
    """C learns the id of zhangsan's group message from the home node's relay and sends a single chat of its own
    under it to lisi at B, before the relay reaches B. B kept C's message under the id, and the home node's relay
    of the real one was refused there with 409 conflict, for good: lisi never got it."""
    a, b, c, group = three_nodes_and_a_group(network)
    real = relayed_to_c_only(a, b, c, lambda: a.node.send_text("zhangsan", group.address, "原话"))
    squat = text_envelope(c, b, "抢先", message={"message_id": real.message_id, "to": b.user("lisi"),
                                                 "sender": {**text_envelope(c, b)["payload"]["sender"], **SUNQI}})
    assert raw_post(c.node, b, "message", squat)[1]["status"] == "accepted"
    assert a.node.retry_now() == 1
    settle(a, b, c)
    assert {(row.peer_node, row.state) for row in a.node.outbox() if row.message_id == real.message_id} == {
        (b.id, "delivered"), (c.id, "delivered")}
    kept = by_conversation(b)
    assert kept[real.conversation_id]["content"]["text"] == "原话"
    assert kept[squat["payload"]["conversation_id"]]["content"]["text"] == "抢先"
    assert {m.message_id for m in stored_messages(b)} == {real.message_id}
    assert [m["content"]["text"] for m in (e["message"].document for e in b.node.history(
        "lisi", real.conversation_id))] == ["原话"]


def test_a_file_under_an_id_two_conversations_share_is_downloaded_from_the_conversation_named(network):  # noqa: F811
    """A download names a message by its id, now held once per conversation: the user names the conversation
    when two carry the id, and each message's file comes from its own origin, checked against its own message."""
    a, b, c, group = three_nodes_and_a_group(network)
    real = relayed_to_c_only(a, b, c, lambda: a.node.send_file("zhangsan", group.address, PDF, "file",
                                                               file_name="通报.pdf"))
    image = c.node.send_file("sunqi", b.user("lisi"), png(), "image")  # C's own file, under an id of its own
    squat = text_envelope(c, b, message={"message_id": real.message_id, "to": b.user("lisi"), "msg_type": "image",
                                         "sender": {**text_envelope(c, b)["payload"]["sender"], **SUNQI},
                                         "content": image.document["content"]})
    assert raw_post(c.node, b, "message", squat)[1]["status"] == "accepted"
    assert a.node.retry_now() == 1
    settle(a, b, c)
    with pytest.raises(Conflict, match="conversation"):
        b.node.download("lisi", real.message_id)
    kept = b.node.download("lisi", real.message_id, conversation_id=real.conversation_id)
    assert (b.node.file_bytes(kept), kept.origin_node) == (PDF, a.id)
    assert kept.sha256 == hashlib.sha256(PDF).hexdigest()


def test_a_single_chat_under_a_conversation_id_not_its_users_is_refused(network):  # noqa: F811
    """A single chat's conversation is bound to its two users (A.11): a node can write only into conversations
    of its own users with the receiver's, so it cannot place a message (or take an id) in anybody else's."""
    a, b, c, group = three_nodes_and_a_group(network)
    theirs = a.node.send_text("zhangsan", b.user("lisi"), "你好")  # zhangsan@A with lisi@B
    for conversation in (theirs.conversation_id, f"g:{group.address}"):
        forged = text_envelope(c, b, message={"to": b.user("lisi")})
        forged["payload"]["conversation_id"] = conversation
        status, body = raw_post(c.node, b, "message", forged)
        assert (status, body["error"]["code"], body["error"]["field"]) == (
            422, "schema_violation", "payload.conversation_id"), body
    assert [m.message_id for m in stored_messages(b)] == [theirs.message_id]


def test_a_home_node_relays_no_second_message_under_an_id_it_holds(network):  # noqa: F811
    """Member nodes tell the home node's relays apart by (home node, id): a second message relayed under one id
    would be taken as a duplicate of the first by whichever copy came second, so the home node refuses a member
    node's group message under an id it already holds, even in another of its groups."""
    a, b, c, group = three_nodes_and_a_group(network)
    other = a.node.create_group("zhangsan", "第二专班", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    first = a.node.send_text("zhangsan", group.address, "原话")
    settle(a, b, c)
    relays = len(a.node.outbox())
    reused = group_message(c, c, a, other.address, "sunqi", "冒用编号")
    reused["payload"]["message_id"] = reused["message_id"] = first.message_id
    status, body = raw_post(c.node, a, "message", reused)
    assert (status, body["error"]["code"]) == (409, "conflict"), body
    assert len(a.node.outbox()) == relays
    assert [m.document["content"]["text"] for m in stored_messages(a)] == ["原话"]
