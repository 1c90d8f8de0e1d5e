"""A conversation's history on the reference node, a page at a time (newest first, `before` a message for older
ones), read the same way on the node, its page and its CLI, with the same few queries whatever the size of the
conversation or of its group (docs/protocol.md §10, "a person")."""

from __future__ import annotations

import json
import re
import sqlite3
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html import unescape
from urllib.error import HTTPError

import pytest
from click.testing import CliRunner
from sqlalchemy import event

from app.appnode import protocol
from app.appnode.cli import cli
from app.appnode.protocol import NotFound
from app.appnode.store import Group, Message, Outbox, ReadState, User, utcnow
from app.appnode.store_schema import SCHEMA_VERSION, open_database
from tests.test_appnode import _as_schema_5, network  # noqa: F401 (fixture)
from tests.test_appnode_page import page
from tests.test_sessions import people  # noqa: F401 (fixture)


def add_group_messages(served, group, count: int, *, extra_members: int = 0) -> list[str]:
    """`count` texts (`m0`, `m1`, …) from the group's members, a second apart and oldest first, straight into
    the node's database (what as many sends would leave, without sending them), after `extra_members` more
    local users join it; their ids, oldest first."""
    now = datetime.now(UTC)
    with served.node.db() as session:
        row = session.get(Group, (group.group_id, served.id))
        for i in range(extra_members):
            session.add(User(user_id=f"u{i}", user_name=f"用户{i}", org_code="360000000000", org_name="江西省公安厅"))
        row.members = [*row.members, *(f"u{i}@{served.id}" for i in range(extra_members))]
        ids = []
        for i in range(count):
            message_id, sent = protocol.new_message_id(), protocol.format_timestamp(now - timedelta(seconds=count - i))
            sender = row.members[i % len(row.members)]
            session.add(Message(message_id=message_id, conversation_id=f"g:{group.address}", chat_type="group",
                                sender_address=sender, origin_node=served.id, to=group.address, msg_type="text",
                                document={"message_id": message_id, "send_time": sent, "content": {"text": f"m{i}"},
                                          "sender": {"user_name": sender.split("@")[0]}},
                                send_time=protocol.sortable_time(sent), received_at=utcnow(),
                                participant_nodes=[served.id]))
            ids.append(message_id)
        session.commit()
    return ids


@contextmanager
def counted_queries(served):
    """The SQL statements the node runs inside the block."""
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    event.listen(served.node.engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(served.node.engine, "before_cursor_execute", count)


def shown_ids(entries: list[dict]) -> list[str]:
    return [entry["message"].message_id for entry in entries]


def test_history_pages_back_from_the_newest_with_the_same_few_queries_however_large_the_group(network):  # noqa: F811
    """Each message's audience was a list searched once per reader and its delivery one query of its own: 5000
    messages of a 3000-member group took seconds to read, and all of them were read every time."""
    a, b = network["a"], network["b"]
    small = a.node.create_group("zhangsan", "小组", [a.user("wangwu")])
    large = a.node.create_group("zhangsan", "大群", [a.user("wangwu"), b.user("lisi")])
    second_of_small = add_group_messages(a, small, 3)[1]  # not the newest, which the node reads anyway
    ids = add_group_messages(a, large, 250, extra_members=300)
    conversation = f"g:{large.address}"
    members = [a.user("zhangsan"), a.user("wangwu"), b.user("lisi"), *(f"u{i}@{a.id}" for i in range(300))]
    # Read positions: u0 read nothing; uN up to the (N*7 % 250)th message; lisi names a message of another
    # conversation and wangwu one this node never had: neither counts as read.
    positions = {f"u{i}@{a.id}": (i * 7) % 250 for i in range(1, 300)}
    states = {user: ids[index] for user, index in positions.items()}
    states |= {b.user("lisi"): a.node.history("zhangsan", f"g:{small.address}")[0]["message"].message_id,
               a.user("wangwu"): protocol.new_message_id()}
    # Delivery: pending, failed, partial (a skipped node), delivered, delivered long ago (rows forgotten).
    outbox = {ids[-1]: ["delivered", "pending"], ids[-2]: ["failed", "delivered"],
              ids[-3]: ["skipped", "delivered"], ids[-4]: ["delivered"]}
    with a.node.db() as session:
        for user, message_id in states.items():
            session.add(ReadState(conversation_id=conversation, user_id=user, read_up_to_message_id=message_id,
                                  unread_count=0, updated_at=protocol.format_timestamp(utcnow()), peer_node=a.id))
        for message_id, kept in outbox.items():
            for state in kept:
                session.add(Outbox(peer_node=b.id, kind="message", message_id=message_id, envelope={}, state=state,
                                   next_attempt_at=utcnow()))
        session.get(Message, ids[-5]).delivered_forgotten = True
        session.commit()

    with counted_queries(a) as statements:
        a.node.history("zhangsan", f"g:{small.address}")
        few = len(statements)
        statements.clear()
        entries = a.node.history("zhangsan", conversation)
        assert len(statements) == few  # not one more for a reader, a member or a message
        statements.clear()
        a.node.history("zhangsan", f"g:{small.address}", before=second_of_small)
        few = len(statements)
        statements.clear()
        a.node.history("zhangsan", conversation, before=ids[100], limit=7)
        assert len(statements) == few

    assert shown_ids(entries) == ids[150:]  # the newest 100, oldest first
    order = {message_id: index for index, message_id in enumerate(ids)}
    for entry in entries:
        message = entry["message"]
        audience = [user for user in members if user != message.sender_address]
        assert entry["read_by"] == [user for user in audience if positions.get(user, -1) >= order[message.message_id]]
        assert entry["unread_by"] == len(audience) - len(entry["read_by"])
    delivery = {entry["message"].message_id: entry["delivery"] for entry in entries}
    assert [delivery[message_id] for message_id in ids[-5:]] == ["delivered", "delivered", "partial", "failed",
                                                                "pending"]
    assert delivery[ids[-6]] is None  # never had an outbox row

    pages, before = [], None
    while True:
        entries, before = a.node.history_page("zhangsan", conversation, before=before)
        pages.append(shown_ids(entries))
        if before is None:
            break
    assert pages == [ids[150:], ids[50:150], ids[:50]]
    assert shown_ids(a.node.history("zhangsan", conversation, before=ids[10], limit=7)) == ids[3:10]
    entries, before = a.node.history_page("zhangsan", conversation, before=ids[100])
    assert shown_ids(entries) == ids[:100] and before is None  # a full page, and none older
    assert a.node.history("zhangsan", conversation, before=ids[0]) == []
    other = a.node.history("zhangsan", f"g:{small.address}")[0]["message"].message_id
    for unknown in (other, protocol.new_message_id(), "not an id"):
        with pytest.raises(NotFound):
            a.node.history("zhangsan", conversation, before=unknown)


def test_the_conversation_page_shows_the_newest_messages_and_links_to_older_ones(network):  # noqa: F811
    a = network["a"]
    group = a.node.create_group("zhangsan", "大群", [a.user("wangwu")])
    ids = add_group_messages(a, group, 130)

    def texts(html: str) -> list[str]:
        return re.findall(r"<td[^>]*>(m\d+)</td>", html)

    def link(html: str, words: str) -> str | None:
        found = re.search(rf'<a href="([^"]+)"[^>]*>[^<]*{words}', html)
        return unescape(found.group(1)) if found else None

    newest = page(a, f"/conversation?user=zhangsan&id=g:{group.address}&lang=en")
    assert texts(newest) == [f"m{i}" for i in range(30, 130)] and link(newest, "Newest messages") is None
    older = page(a, link(newest, "Older messages"))
    assert texts(older) == [f"m{i}" for i in range(30)] and link(older, "Older messages") is None
    assert texts(page(a, link(older, "Newest messages"))) == texts(newest)
    assert "更早的消息" in page(a, f"/conversation?user=zhangsan&id=g:{group.address}")
    # Before its first message: an empty page, not a fault; before a message it does not have: refused.
    assert texts(page(a, f"/conversation?user=zhangsan&id=g:{group.address}&before={ids[0]}&lang=en")) == []
    with pytest.raises(HTTPError) as refused:
        page(a, f"/conversation?user=zhangsan&id=g:{group.address}&before={protocol.new_message_id()}")
    assert refused.value.code == 404


def test_history_on_the_cli_prints_the_newest_and_says_how_to_read_older_ones(network):  # noqa: F811
    a = network["a"]
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu")])
    ids = add_group_messages(a, group, 5)
    conversation = f"g:{group.address}"

    def run(*args: str):
        result = CliRunner().invoke(cli, ["--data", str(a.dir), *args])
        assert result.exit_code == 0, result.output
        return [line.split("\t")[0] for line in result.stdout.splitlines()], result.stderr

    shown, told = run("history", "--as", "zhangsan", "--limit", "2", conversation)
    assert shown == ids[3:] and told == f"older messages: history --before {ids[3]}\n"
    shown, told = run("history", "--as", "zhangsan", "--limit", "2", "--before", ids[3], conversation)
    assert shown == ids[1:3] and told == f"older messages: history --before {ids[1]}\n"
    shown, told = run("history", "--as", "zhangsan", "--before", ids[1], conversation)
    assert shown == ids[:1] and told == ""
    assert run("history", "--as", "zhangsan", conversation) == (ids, "")  # up to 100 by default
    as_json = CliRunner().invoke(cli, ["--data", str(a.dir), "--json", "history", "--as", "zhangsan", "--limit", "2",
                                       conversation])
    assert [d["message_id"] for d in json.loads(as_json.stdout)] == ids[3:] and as_json.stderr == ""
    for limit in ("0", "1001"):
        refused = CliRunner().invoke(cli, ["--data", str(a.dir), "history", "--as", "zhangsan", "--limit", limit,
                                           conversation])
        assert refused.exit_code == 2 and "--limit" in refused.output


def delivery_plan(served, user: str, conversation_id: str) -> list[str]:
    """SQLite's plan (EXPLAIN QUERY PLAN details) for the statement that reads a history page's delivery states
    from the outbox, as `history_page` runs it."""
    seen = []

    def keep(_connection, _cursor, statement, parameters, _context, _many):
        if "FROM outbox" in statement and "outbox.message_id IN" in statement:
            seen.append((statement, parameters))

    event.listen(served.node.engine, "before_cursor_execute", keep)
    try:
        served.node.history_page(user, conversation_id)
    finally:
        event.remove(served.node.engine, "before_cursor_execute", keep)
    [(statement, parameters)] = seen
    with sqlite3.connect(served.dir / "node.db") as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    connection.close()
    return plan


def test_a_history_page_finds_its_messages_delivery_by_index_also_after_an_upgrade_from_schema_5(network):  # noqa: F811
    """Every history page read the whole outbox (a scan: no index on its message_id) to find the delivery states
    of its messages. Schema 6 adds the index; a database of schema 5 takes it in place on its next start."""
    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "你好")
    for n in range(3):
        a.node.send_text("zhangsan", b.user("lisi"), f"第{n}条", deliver=False)
    states = [entry["delivery"] for entry in a.node.history("zhangsan", sent.conversation_id)]
    plan = delivery_plan(a, "zhangsan", sent.conversation_id)
    assert [detail for detail in plan if detail.startswith("SCAN outbox")] == [], plan
    assert any("USING INDEX ix_outbox_message_id" in detail for detail in plan), plan

    _as_schema_5(a.dir / "node.db")  # the node's database as schema 5 left it, under the idle node
    open_database(a.dir / "node.db").kw["bind"].dispose()  # what the next start of the node does
    with sqlite3.connect(a.dir / "node.db") as connection:
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
    connection.close()
    assert version == SCHEMA_VERSION == "8"
    assert any("USING INDEX ix_outbox_message_id" in detail
               for detail in delivery_plan(a, "zhangsan", sent.conversation_id))
    assert [entry["delivery"] for entry in a.node.history("zhangsan", sent.conversation_id)] == states


def test_a_message_the_home_node_relays_has_no_delivery_state_there(network):  # noqa: F811
    """A member's group message the home node relays has outbox rows there (one per member node), and `history`
    at the home node said "not delivered yet" on it to a user who merely received it while a member node was
    down. Only this node's own messages carry a delivery state."""
    from tests.test_appnode import settle, sync
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    c.stop()
    relayed = b.node.send_text("lisi", f"{group.group_id}@{a.id}", "大家好")
    own = a.node.send_text("zhangsan", group.address, "收到")
    settle(a, b)
    entries = {e["message"].message_id: e["delivery"] for e in a.node.history("zhangsan", own.conversation_id)}
    assert entries[relayed.message_id] is None and entries[own.message_id] == "pending"
    out = CliRunner().invoke(cli, ["--data", str(a.dir), "history", "--as", "zhangsan", own.conversation_id])
    [line] = [line for line in out.output.splitlines() if line.startswith(relayed.message_id)]
    assert "not delivered" not in line
