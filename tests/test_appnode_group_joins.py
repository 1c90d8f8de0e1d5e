"""What a group member sees (docs/protocol.md §8.9, "What a member sees"): the group's messages sent from when
they last joined, the same on every node, and only while they are a member; the unread counts and who has
read a message follow the same rule."""

from __future__ import annotations

from urllib.error import HTTPError

import pytest
from sqlalchemy import select

from app.appnode.protocol import NotAParticipant, NotFound
from app.appnode.store import Group
from tests.test_appnode import history, network, png, settle, sync  # noqa: F401 (fixture)
from tests.test_appnode_cli import refusal
from tests.test_appnode_groups import announce
from tests.test_appnode_page import page
from tests.test_sessions import people  # noqa: F401 (fixture)


def texts(served, user: str, conversation: str) -> list[str]:
    return [document["content"].get("text", document["msg_type"]) for document in history(served, user, conversation)]


def inbox(served, user: str) -> list[tuple[str, int, int]]:
    return [(row["conversation_id"], row["unread"], row["count"]) for row in served.node.conversations(user)]


def counts(served, user: str, conversation: str) -> dict[str, tuple[list[str], int]]:
    """Who has read each message the user sees, and how many have not, by message id."""
    return {entry["message"].message_id: (entry["read_by"], entry["unread_by"])
            for entry in served.node.history(user, conversation)}


def exchange_read_states(*served) -> None:
    """Members' nodes send their users' read states to the home node (the last), which relays them."""
    for node in served:
        node.node.flush_ephemeral()


def test_a_new_member_sees_the_messages_from_when_they_joined_whichever_node_they_are_on(network):  # noqa: F811
    """Invited after three messages, a new member on the home node, and one on a node that already had a member,
    saw and were counted unread for all three, while one on a node new to the group saw nothing: a member
    sees what was said from when they joined, on every node, and counts as neither having read nor not having
    read a message sent before."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    conversation = f"g:{group.address}"
    early = [a.node.send_text("zhangsan", group.address, text).message_id for text in ("早1", "早2", "早3")]
    settle(a, b, c)
    a.node.group_operation("zhangsan", group.address, "invite",
                           [a.user("wangwu"), b.user("zhaoliu"), c.user("sunqi")])
    settle(a, b, c)
    newcomers = ((a, "wangwu"), (b, "zhaoliu"), (c, "sunqi"))
    for served, user in newcomers:
        assert inbox(served, user) == [], user
        with pytest.raises(NotFound, match="no messages"):
            served.node.history(user, conversation)
        with pytest.raises(NotFound, match="no messages"):
            served.node.mark_read(user, conversation)
    assert inbox(b, "lisi") == [(conversation, 3, 3)]  # there from the beginning: everything

    late = a.node.send_text("zhangsan", group.address, "晚").message_id
    settle(a, b, c)
    hello = c.node.send_text("sunqi", group.address, "我来了").message_id
    settle(a, b, c)
    for served, user in newcomers:
        assert texts(served, user, conversation) == ["晚", "我来了"], user
    assert inbox(a, "wangwu") == inbox(b, "zhaoliu") == [(conversation, 2, 2)]
    assert inbox(c, "sunqi") == [(conversation, 1, 2)]  # their own message is not unread
    assert texts(b, "lisi", conversation) == ["早1", "早2", "早3", "晚", "我来了"]
    assert inbox(b, "lisi") == [(conversation, 5, 5)]

    # Nobody has read anything: the early messages wait for lisi alone, the later ones for every member but
    # their sender, on every node that has them.
    members = [a.user("zhangsan"), b.user("lisi"), a.user("wangwu"), b.user("zhaoliu"), c.user("sunqi")]
    unread = {**{message_id: ([], 1) for message_id in early}, late: ([], 4), hello: ([], 4)}
    assert counts(a, "zhangsan", conversation) == counts(b, "lisi", conversation) == unread
    later = {late: ([], 4), hello: ([], 4)}
    for served, user in newcomers:
        assert counts(served, user, conversation) == later, user

    # sunqi reads everything (up to the newest message), lisi too: each early message is read by lisi alone,
    # sunqi having joined after it; every node that has a message says the same of it.
    c.node.mark_read("sunqi", conversation)
    b.node.mark_read("lisi", conversation)
    exchange_read_states(c, b, a)
    read = {**{message_id: ([b.user("lisi")], 0) for message_id in early},
            late: ([b.user("lisi"), c.user("sunqi")], 2), hello: ([b.user("lisi")], 3)}
    assert read[late][0] == [member for member in members if member in read[late][0]]  # the members' order
    assert counts(a, "zhangsan", conversation) == counts(b, "lisi", conversation) == read
    for served, user in newcomers:
        assert counts(served, user, conversation) == {late: read[late], hello: read[hello]}, user
    assert inbox(c, "sunqi") == [(conversation, 0, 2)] and inbox(b, "lisi") == [(conversation, 0, 5)]


def test_a_member_removed_and_invited_again_does_not_see_what_was_said_meanwhile(network):  # noqa: F811
    """A user kicked, then invited again, saw what was said while they were out if their node kept another
    member: they see what was said from when they were last invited, on whichever node, and cannot download
    a file sent before either."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    returning = ((a, "wangwu"), (b, "zhaoliu"), (c, "sunqi"))  # A and B keep a member meanwhile, C keeps none
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu"), b.user("lisi"), b.user("zhaoliu"),
                                                    c.user("sunqi")])
    conversation = f"g:{group.address}"
    before = a.node.send_text("zhangsan", group.address, "之前").message_id
    settle(a, b, c)
    for served, user in returning:
        assert texts(served, user, conversation) == ["之前"], user
    a.node.group_operation("zhangsan", group.address, "kick", [a.user("wangwu"), b.user("zhaoliu"),
                                                              c.user("sunqi")])
    settle(a, b, c)
    gap = a.node.send_text("zhangsan", group.address, "期间").message_id
    picture = b.node.send_file("lisi", group.address, png(), "image", file_name="现场.png").message_id
    settle(a, b, c)
    a.node.group_operation("zhangsan", group.address, "invite", [a.user("wangwu"), b.user("zhaoliu"),
                                                                c.user("sunqi")])
    settle(a, b, c)
    for served, user in returning:
        assert inbox(served, user) == [], user
        with pytest.raises(NotFound, match="no messages"):
            served.node.history(user, conversation)
    back = a.node.send_text("zhangsan", group.address, "回来了").message_id
    settle(a, b, c)
    for served, user in returning:
        assert texts(served, user, conversation) == ["回来了"], user
        assert inbox(served, user) == [(conversation, 1, 1)], user
    assert texts(b, "lisi", conversation) == ["之前", "期间", "image", "回来了"]
    assert inbox(b, "lisi") == [(conversation, 3, 4)]
    for served, user in ((a, "wangwu"), (b, "zhaoliu")):  # their nodes hold it, for the members who stayed
        with pytest.raises(NotAParticipant, match="before"):
            served.node.download(user, picture)
    assert b.node.download("lisi", picture).size > 0
    # Whoever was out is counted for nothing sent before their return: neither read nor unread.
    expected = {before: ([], 1), gap: ([], 1), picture: ([], 1), back: ([], 4)}
    assert counts(a, "zhangsan", conversation) == counts(b, "lisi", conversation) == expected


@pytest.mark.parametrize("leave, back", [("kick", "invite"), ("quit", "join")])
def test_a_member_back_before_their_node_heard_they_had_left_does_not_see_what_was_said_meanwhile(
        network, leave, back):  # noqa: F811
    """Kicked while their node was unreachable (the kick's announcement waiting in the home node's outbox), then
    invited again once it was back, a user saw what was said while they were out: the re-invite's confirmation
    reached their node first, the kick then came as an older state and was ignored, and their node, which had
    listed them all along, kept the time they had first joined. The same for a user who quit and joined again.
    The operation that adds someone is their return, on every node, whatever their node missed before it."""
    a, b = network["a"], network["b"]
    sync(a, b)
    a.node.config.open_groups = True  # so that one who quit may join again (config.json)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), b.user("zhaoliu")])
    conversation = f"g:{group.address}"
    before = a.node.send_text("zhangsan", group.address, "之前").message_id
    settle(a, b)
    b.stop()  # B unreachable: the home node cannot tell it that zhaoliu left
    if leave == "kick":
        assert a.node.group_operation("zhangsan", group.address, "kick", [b.user("zhaoliu")]) == "applied"
    else:  # B reaches A, not A B
        assert b.node.group_operation("zhaoliu", group.address, "quit") == "accepted"
    gap = a.node.send_text("zhangsan", group.address, "期间").message_id
    a.node.deliver()
    assert {row.kind for row in a.node.outbox("pending")} == {"group_op", "message"}
    b.start()
    if back == "invite":  # confirmed by B at once, before the queued announcement
        assert a.node.group_operation("zhangsan", group.address, "invite", [b.user("zhaoliu")]) == "applied"
    else:
        assert b.node.group_operation("zhaoliu", group.address, "join") == "accepted"
    a.node.retry_now()
    settle(a, b)  # the kick (or quit) now reaches B, older than the state it holds: ignored
    assert a.node.outbox("pending") == []
    back_id = a.node.send_text("zhangsan", group.address, "回来了").message_id
    settle(a, b)
    assert texts(b, "zhaoliu", conversation) == ["回来了"]
    assert inbox(b, "zhaoliu") == [(conversation, 1, 1)]
    assert texts(b, "lisi", conversation) == ["之前", "期间", "回来了"]
    assert inbox(b, "lisi") == [(conversation, 3, 3)]
    # The home node and B count the same audience: "期间" was said to lisi alone.
    expected = {before: ([], 1), gap: ([], 1), back_id: ([], 2)}
    assert counts(a, "zhangsan", conversation) == counts(b, "lisi", conversation) == expected


def test_a_member_named_again_by_an_invite_keeps_what_they_saw_though_their_node_missed_a_state(network):  # noqa: F811
    """An invite naming a member with a newcomer adds the newcomer alone: the home node's announcement names
    only who it adds, so the member's node, which missed the state before it (a rename, while it was
    unreachable) and so cannot tell from its replica whether someone named was out meanwhile, keeps the member's
    time and they still see everything."""
    a, b = network["a"], network["b"]
    sync(a, b)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    conversation = f"g:{group.address}"
    a.node.send_text("zhangsan", group.address, "之前")
    settle(a, b)
    b.stop()
    a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "专班二"})
    b.start()
    assert a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi"), b.user("zhaoliu")]) == "applied"
    invite = [row.envelope["payload"] for row in a.node.outbox() if row.kind == "group_op"][-1]
    assert (invite["op"], invite["target_user_ids"]) == ("invite", [b.user("zhaoliu")])
    a.node.retry_now()
    settle(a, b)
    a.node.send_text("zhangsan", group.address, "之后")
    settle(a, b)
    assert texts(b, "lisi", conversation) == ["之前", "之后"]
    assert texts(b, "zhaoliu", conversation) == ["之后"]
    assert b.node.groups("lisi")[0].name == "专班二"


def test_a_replica_takes_whom_an_operation_names_as_added_only_when_it_missed_a_state(network):  # noqa: F811
    """Announcements as another implementation's home node may send them, naming members in an invite: a node
    whose replica has the state before the operation knows who was a member already, and keeps their time; one
    that missed states cannot tell whether whom an invite names, or who joined, was out meanwhile, and takes
    them as added now."""
    a, b = network["a"], network["b"]
    owner, lisi, zhaoliu, wangwu = a.user("zhangsan"), b.user("lisi"), b.user("zhaoliu"), a.user("wangwu")

    def joined() -> dict[str, str]:
        with b.node.db() as session:
            return dict(session.scalar(select(Group)).joined_at)

    assert announce(a, b, 1, "create", [owner, lisi, zhaoliu])[0] == 200
    assert joined() == {}  # the first members: there from the beginning
    assert announce(a, b, 2, "invite", [owner, lisi, zhaoliu, wangwu], target_user_ids=[lisi, wangwu])[0] == 200
    assert set(joined()) == {wangwu}  # lisi, named again with no state missed, was a member already
    first = joined()[wangwu]
    assert announce(a, b, 4, "invite", [owner, lisi, zhaoliu, wangwu], target_user_ids=[lisi])[0] == 200
    assert set(joined()) == {wangwu, lisi} and joined()[wangwu] == first  # seq 3 missed: lisi may have been out
    assert announce(a, b, 6, "join", [owner, lisi, zhaoliu, wangwu], operator=zhaoliu)[0] == 200
    assert set(joined()) == {wangwu, lisi, zhaoliu} and joined()[wangwu] == first


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
