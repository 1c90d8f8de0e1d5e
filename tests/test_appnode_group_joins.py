"""What a group member sees (docs/protocol.md §8.9, "What a member sees"): the group's messages sent from when
they last joined, the same on every node, and only while they are a member; the unread counts and who has
read a message follow the same rule."""

from __future__ import annotations

from urllib.error import HTTPError

import pytest

from app.appnode.protocol import NotAParticipant
from tests.test_appnode import history, network, settle  # noqa: F401 (fixture)
from tests.test_appnode_cli import refusal
from tests.test_appnode_page import page
from tests.test_sessions import people  # noqa: F401 (fixture)


def texts(served, user: str, conversation: str) -> list[str]:
    return [document["content"].get("text", document["msg_type"]) for document in history(served, user, conversation)]


def test_a_member_who_left_cannot_open_the_group_even_when_they_said_the_last_word(network):  # noqa: F811
    """A user who quit, or was removed, could still open the group (its history, the page at a typed address,
    `history`, marking it read) as long as the newest message there was their own: a group opens for its
    members only. A single chat still opens for its two users."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu"), b.user("lisi"), b.user("zhaoliu")])
    conversation = f"g:{group.address}"
    single = b.node.send_text("lisi", a.user("wangwu"), "单聊").conversation_id
    settle(a, b)

    def refused_to(served, user: str, member: str, last: str) -> None:
        newest = served.node.history(member, conversation)[-1]["message"]
        assert (newest.sender_address, newest.document["content"]["text"]) == (served.user(user), last)
        with pytest.raises(NotAParticipant):
            served.node.history(user, conversation)
        with pytest.raises(NotAParticipant):
            served.node.mark_read(user, conversation)
        with pytest.raises(HTTPError) as refused:
            page(served, f"/conversation?user={user}&id={conversation}")
        assert refused.value.code == 403
        assert refusal(served.dir, "history", "--as", user, conversation)[1]["error"]["code"] == "not_a_participant"
        assert texts(served, user, single) == ["单聊"]  # their single chat opens as before

    b.node.send_text("lisi", group.address, "我先走了")
    settle(a, b)
    b.node.group_operation("lisi", group.address, "quit")
    settle(a, b)
    refused_to(b, "lisi", "zhaoliu", "我先走了")
    a.node.send_text("wangwu", group.address, "我也走了")
    settle(a, b)
    a.node.group_operation("zhangsan", group.address, "kick", [a.user("wangwu")])
    settle(a, b)
    refused_to(a, "wangwu", "zhangsan", "我也走了")
