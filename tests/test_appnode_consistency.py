"""The reference node's messaging logic between two real nodes over mutual TLS: what a user or a peer meets
when things happen in an ordinary but unlucky order (a read state sent after its reader left the group, a
presence repeat, timestamps of other precisions, an operation by a user who does not exist)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from app.appnode import protocol
from app.appnode.protocol import NotFound
from app.appnode.store import Presence, ReadState
from tests.appnode_harness import raw_post
from tests.test_appnode import history, network, settle, sync, text_envelope  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def read_states(served) -> dict[str, str]:
    with served.node.db() as session:
        return {row.user_id: row.read_up_to_message_id for row in session.scalars(select(ReadState))}


def test_a_read_state_of_a_member_who_left_does_not_lose_the_rest_of_the_batch(network):  # noqa: F811
    """Zhao Liu reads the group and quits before the next batch: the home node refused the whole batch
    (not_a_participant), so Li Si's read state and presence in it were retried and dropped."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), b.user("zhaoliu")])
    settle(a, b)
    sent = a.node.send_text("zhangsan", group.address, "17时报送进展")
    settle(a, b)
    conversation = f"g:{group.address}"
    b.node.mark_read("lisi", conversation)
    b.node.mark_read("zhaoliu", conversation)
    b.node.set_presence("lisi", "busy")
    assert b.node.group_operation("zhaoliu", group.address, "quit") == "accepted"

    assert b.node.flush_ephemeral() == 1  # taken, not refused
    assert read_states(a) == {b.user("lisi"): sent.message_id}  # the leaver's is not kept
    assert a.node.presence_of(b.user("lisi"))["status"] == "busy"
    [entry] = a.node.history("zhangsan", conversation)
    assert entry["read_by"] == [b.user("lisi")] and entry["unread_by"] == 0


def test_the_home_node_relays_no_older_read_state_over_a_newer_one_waiting_to_go_out(network):  # noqa: F811
    """Li Si's node sent "read up to m2", then an older "read up to m1" (a retried batch, another vendor's
    queue). The home node kept m2 but queued each for the other member nodes as it came, the older replacing
    the newer still waiting: C was told m1, and the member nodes disagreed on who had read m2."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), c.user("sunqi")])
    first = a.node.send_text("zhangsan", group.address, "一")
    second = a.node.send_text("zhangsan", group.address, "二")
    settle(a, b, c)
    a.node.flush_ephemeral()
    conversation = f"g:{group.address}"
    now = datetime.now(UTC)
    newer = {"conversation_id": conversation, "user_id": b.user("lisi"), "read_up_to_message_id": second.message_id,
             "unread_count": 0, "updated_at": protocol.format_timestamp(now - timedelta(seconds=1))}
    older = {**newer, "read_up_to_message_id": first.message_id, "unread_count": 1,
             "updated_at": protocol.format_timestamp(now - timedelta(seconds=5))}
    for state in (newer, older):
        envelope = protocol.make_envelope(from_node=b.id, to_node=a.id, type="ephemeral",
                                          payload={"read_states": [state]})
        assert raw_post(b.node, a, "ephemeral", envelope)[0] == 200
    assert a.node.flush_ephemeral() == 1
    for served, reader in ((a, "zhangsan"), (c, "sunqi")):
        assert read_states(served) == {b.user("lisi"): second.message_id}, served.id
        read_by = {entry["message"].message_id: entry["read_by"]
                   for entry in served.node.history(reader, conversation)}
        assert read_by[second.message_id] == [b.user("lisi")], served.id


def test_repeating_presence_keeps_the_users_last_activity(network):  # noqa: F811
    """The 5-minute repeat set `last_active` to the moment of the repeat, so a user idle for hours read as
    active a minute ago on every other node."""
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    a.node.set_presence("zhangsan", "away", "android")
    idle_since = "2025-06-12T02:17:41.000Z"  # as if the user had done nothing since
    with a.node.db.begin() as session:
        session.get(Presence, a.user("zhangsan")).last_active = idle_since
    assert a.node.rebroadcast_presence() == 1
    assert a.node.flush_ephemeral() == 1
    seen = b.node.presence_of(a.user("zhangsan"))
    assert seen["status"] == "away" and seen["client_type"] == "android" and seen["last_active"] == idle_since
    with b.node.db() as session:
        assert session.get(Presence, a.user("zhangsan")).updated_at > idle_since  # the repeat itself is new


def test_a_user_this_node_does_not_have_cannot_join_a_group(network):  # noqa: F811
    """A local `join` took the operator on trust: a mistyped user became a member on the home node (an unread
    count nobody clears, a member nobody can be), while the member node left it out of its replica, so the two
    nodes listed different members."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    for served in (a, b):
        with pytest.raises(NotFound, match="no local user ghost"):
            served.node.group_operation("ghost", group.address, "join")
    settle(a, b)
    members = [a.user("zhangsan"), b.user("lisi")]
    assert a.node.groups()[0].members == members and b.node.groups()[0].members == members
    assert a.node.groups()[0].seq == 1 and [row.kind for row in b.node.outbox()] == []


def test_the_newest_read_state_and_presence_win_whatever_their_fractional_digits(network):  # noqa: F811
    """A peer may write 0 to 6 fractional digits (§3). Newest-wins compared the strings, so "…:00Z" beat
    "…:00.500Z" (half a second later) and "…:00.1Z" beat "…:00.12Z": an older read state or status replaced
    a newer one."""
    a, b = network["a"], network["b"]
    message = a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    lisi = b.user("lisi")

    def batch(unread: int, status: str, updated_at: str) -> int:
        payload = {"read_states": [{"conversation_id": message.conversation_id, "user_id": lisi, "unread_count": unread,
                                    "read_up_to_message_id": message.message_id, "updated_at": updated_at}],
                   "presence": {"items": [{"user_id": lisi, "status": status, "client_type": "pc",
                                           "last_active": updated_at, "updated_at": updated_at}]}}
        return raw_post(b.node, a, "ephemeral", protocol.make_envelope(
            from_node=b.id, to_node=a.id, type="ephemeral", payload=payload))[0]

    def kept() -> tuple[int, str]:
        with a.node.db() as session:
            return (session.get(ReadState, (message.conversation_id, lisi)).unread_count,
                    session.get(Presence, lisi).status)

    now = datetime.now(UTC).replace(microsecond=0)
    second = [(now + timedelta(seconds=n)).strftime("%Y-%m-%dT%H:%M:%S") for n in range(3)]
    assert batch(0, "online", f"{second[0]}.5Z") == 200
    assert batch(7, "away", f"{second[0]}Z") == 200  # half a second older
    assert kept() == (0, "online")
    assert batch(1, "busy", f"{second[1]}.12Z") == 200
    assert batch(8, "away", f"{second[1]}.1Z") == 200  # older than .12, though it sorts after it as a string
    assert kept() == (1, "busy")
    assert batch(2, "online", f"{second[2]}Z") == 200
    assert kept() == (2, "online")


def test_a_conversation_is_in_time_order_whatever_the_fractional_digits_of_its_send_times(network):  # noqa: F811
    """Messages were ordered by their send_time strings: a peer writing trimmed fractions (Go's RFC3339Nano:
    "…:30.1Z", "…:30.12Z", "…:30Z") had 100 ms sort after 120 ms and a whole second after every fraction of
    it, so the history ran out of order and `read` marked read up to a message that was not the last."""
    a, b = network["a"], network["b"]
    second = datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S")
    envelopes = [text_envelope(b, a, text, message={"sender": {**text_envelope(b, a)["payload"]["sender"],
                                                                "user_id": "lisi"}, "to": a.user("zhangsan"),
                                                     "send_time": f"{second}{fraction}Z"})
                 for text, fraction in (("第三", ".12"), ("第二", ".1"), ("第一", ""))]
    for envelope in envelopes:
        assert raw_post(b.node, a, "message", envelope)[0] == 200
    conversation = envelopes[0]["payload"]["conversation_id"]
    assert [m["content"]["text"] for m in history(a, "zhangsan", conversation)] == ["第一", "第二", "第三"]
    assert a.node.mark_read("zhangsan", conversation).read_up_to_message_id == envelopes[0]["message_id"]


def test_an_older_announcement_arriving_after_a_kick_does_not_bring_the_group_back(network):  # noqa: F811
    """B was down while the home node renamed the group and then kicked B's only member; the outbox sends
    its backlog in parallel, so the kick may land first. B deleted its replica on the kick, forgot its seq, and
    took the older rename as a new group: Li Si was a member again on B, sent into a group that refused him,
    and the home node sent B nothing more."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    b.stop()
    a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "改名"})
    a.node.group_operation("zhangsan", group.address, "kick", [b.user("lisi")])
    rename, kick = [row for row in a.node.outbox() if row.kind == "group_op" and row.state == "pending"]
    b.start()
    a.node.retry_now()
    assert a.node.deliver([kick.id])["delivered"] == 1  # the kick (seq 3) lands first
    assert a.node.deliver([rename.id])["delivered"] == 1  # then the rename (seq 2)
    assert b.node.groups() == [] and b.node.groups("lisi") == []
    with pytest.raises(NotFound, match="no group"):
        b.node.send_text("lisi", group.address, "我还在吗")


def test_a_read_state_queued_while_the_last_batch_was_in_flight_is_sent_not_dropped(network):  # noqa: F811
    """The batch is read, posted, then settled: Zhang San read a newer message while the batch to a slow peer
    was on its way, and settling deleted the queued row by its key, his newer read state with it, unsent.
    The peer answers this batch only after the newer state is queued."""
    import threading

    from app.appnode.store import PendingEphemeral

    a, b = network["a"], network["b"]
    first = b.node.send_text("lisi", a.user("zhangsan"), "第一条")
    a.node.mark_read("zhangsan", first.conversation_id)
    served, arrived, answer = b.server.app, threading.Event(), threading.Event()

    def slow_ephemeral(environ, start_response):
        if environ["PATH_INFO"].endswith("/ephemeral"):
            arrived.set()
            assert answer.wait(30), "the test never let the batch be answered"
        return served(environ, start_response)

    b.server.app = slow_ephemeral
    flushed: list[int] = []
    flushing = threading.Thread(target=lambda: flushed.append(a.node.flush_ephemeral()))
    flushing.start()
    try:
        assert arrived.wait(30), "the batch never reached the peer"
        second = b.node.send_text("lisi", a.user("zhangsan"), "第二条")  # a's own server is not held up
        a.node.mark_read("zhangsan", first.conversation_id)  # queued under the same key, while in flight
    finally:
        answer.set()
        flushing.join(60)
    assert flushed == [1]
    with a.node.db() as session:
        [pending] = session.scalars(select(PendingEphemeral)).all()
        assert pending.item["read_up_to_message_id"] == second.message_id
    b.server.app = served
    assert a.node.flush_ephemeral() == 1
    assert read_states(b) == {a.user("zhangsan"): second.message_id}
