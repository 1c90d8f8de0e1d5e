"""The 5-minute presence repeat (A.15, `rebroadcast_presence`) runs in the node loop that also delivers the
outbox. For each online user it read every group and every single-chat message of the last 30 days, then
queued one row at a time: with 1000 users and 50,000 messages the loop stood still for 25 s. Its statements
are counted here, never timed: they must not grow with the number of users."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import event, select

from app.appnode import protocol
from app.appnode.store import Group, Message, PendingEphemeral, Presence, User, utcnow
from tests.test_appnode import network, sync  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def add_users(a, b, c, start: int, count: int) -> dict[str, set[str]]:
    """`count` users of A in five kinds of company; the nodes each online user's presence goes to."""
    now = datetime.now(UTC)
    stamp = protocol.format_timestamp(now - timedelta(minutes=3))
    expected: dict[str, set[str]] = {}

    def message(sender: str, to: str, days_ago: float) -> Message:
        send_time = protocol.sortable_time(protocol.format_timestamp(now - timedelta(days=days_ago)))
        return Message(message_id=protocol.new_message_id(), chat_type="single", sender_address=sender, to=to,
                       conversation_id=protocol.single_chat_conversation_id(sender, to), origin_node=a.id,
                       msg_type="text", document={}, send_time=send_time, received_at=utcnow(),
                       participant_nodes=[a.id])

    def group(name: str, home: str, members: list[str], dismissed: bool = False) -> Group:
        return Group(group_id=name, home_node_id=home, name=name, owner=members[0], members=members, seq=1,
                     dismissed=dismissed)

    with a.node.db.begin() as session:
        for index in range(start, start + count):
            user, kind = a.user(f"u{index}"), index % 5
            session.add(User(user_id=f"u{index}", user_name=f"用户{index}", org_code="360000000000",
                             org_name="江西省公安厅"))
            session.add(Presence(user_id=user, status="offline" if kind == 4 else ("online", "busy")[index % 2],
                                 client_type="pc", last_active=stamp, updated_at=stamp, peer_node=a.id))
            if kind == 0:  # a recent single chat with B
                session.add(message(user, b.user("lisi"), 2))
                expected[user] = {b.id}
            elif kind == 1:  # a chat too old to count, and a dismissed group
                session.add(message(b.user("lisi"), user, 40))
                session.add(group(f"old{index}", a.id, [user, c.user("sunqi")], dismissed=True))
                expected[user] = set()
            elif kind == 2:  # a group of A's with a member on C
                session.add(group(f"g{index}", a.id, [user, c.user("sunqi")]))
                expected[user] = {c.id}
            elif kind == 3:  # a replica of a group homed on B, and a recent chat with C
                session.add(group(f"r{index}", b.id, [b.user("lisi"), user]))
                session.add(message(c.user("sunqi"), user, 29))
                expected[user] = {b.id, c.id}
            else:  # offline: not repeated
                session.add(message(user, b.user("lisi"), 1))
    return expected


def repeat_counting_statements(a) -> tuple[int, int]:
    statements = []

    def count(*_args):
        statements.append(1)

    event.listen(a.node.engine, "before_cursor_execute", count)
    try:
        repeated = a.node.rebroadcast_presence()
    finally:
        event.remove(a.node.engine, "before_cursor_execute", count)
    return repeated, len(statements)


def pending(a) -> dict[str, set[str]]:
    with a.node.db() as session:
        rows = session.scalars(select(PendingEphemeral).where(PendingEphemeral.kind == "presence")).all()
    queued: dict[str, set[str]] = {}
    for row in rows:
        assert row.item["user_id"] == row.key and row.attempts == 0
        queued.setdefault(row.key, set()).add(row.peer_node)
    return queued


def test_repeating_presence_takes_as_many_statements_for_many_users_as_for_few(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    expected = add_users(a, b, c, 0, 5)
    repeated, few = repeat_counting_statements(a)
    assert repeated == 4
    assert pending(a) == {user: peers for user, peers in expected.items() if peers}

    with a.node.db.begin() as session:
        session.query(PendingEphemeral).delete()
    expected.update(add_users(a, b, c, 5, 45))
    repeated, many = repeat_counting_statements(a)
    assert repeated == 40
    assert pending(a) == {user: peers for user, peers in expected.items() if peers}
    assert many == few
    with a.node.db() as session:  # the repeat is new, the user's last activity is not
        for row in session.scalars(select(Presence).where(Presence.status != "offline")):
            assert row.updated_at > row.last_active
