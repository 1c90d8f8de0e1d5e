"""The reference node's inbox: the CLI pages a user's conversations as the operator page does, and the query
behind both finds the user's messages by index, not by reading every message the node holds."""

from __future__ import annotations

import sqlite3

from sqlalchemy import event

from app.appnode.store_schema import SCHEMA_VERSION, open_database
from tests.test_appnode import _as_schema_4, network  # noqa: F401 (fixture)
from tests.test_appnode_page import with_conversations
from tests.test_sessions import people  # noqa: F401 (fixture)


def summary_plan(served, user: str) -> list[str]:
    """SQLite's plan (EXPLAIN QUERY PLAN details) for the statement that sums up the user's conversations, as
    `conversations_page` runs it."""
    seen = []

    def keep(_connection, _cursor, statement, parameters, _context, _many):
        if "OVER (PARTITION BY" in statement:
            seen.append((statement, parameters))

    event.listen(served.node.engine, "before_cursor_execute", keep)
    try:
        served.node.conversations_page(user)
    finally:
        event.remove(served.node.engine, "before_cursor_execute", keep)
    [(statement, parameters)] = seen
    with sqlite3.connect(served.dir / "node.db") as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    connection.close()
    return plan


def summaries(served) -> list[tuple]:
    return [
        (row["conversation_id"], row["last"].message_id, row["unread"], row["count"])
        for row in served.node.conversations("lisi")
    ]


def indexes(served) -> set[str]:
    with sqlite3.connect(served.dir / "node.db") as connection:
        names = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    connection.close()
    return names


def schema_version(served) -> str:
    with sqlite3.connect(served.dir / "node.db") as connection:
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
    connection.close()
    return version


def assert_summary_searches_indexes(served, user: str) -> None:
    plan = summary_plan(served, user)
    assert [detail for detail in plan if detail.startswith("SCAN messages")] == [], plan
    assert {
        "SEARCH messages USING INDEX ix_messages_sender_address (sender_address=?)",
        "SEARCH messages USING INDEX ix_messages_to (to=?)",
        "SEARCH messages USING INDEX ix_messages_conversation_id (conversation_id=?)",
    } <= set(plan), plan


def test_the_conversation_summary_finds_the_users_messages_by_index(network):  # noqa: F811
    """The summary read every message of the node (a scan of the messages table in conversation order) to find
    the user's: a peer's thousands of conversations with other users included. It searches the indexes on sender
    and recipient, and on conversation for the user's groups, instead."""
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "你好")
    group = b.node.create_group("lisi", "专班", [a.user("zhangsan")])
    b.node.send_text("lisi", group.address, "开会")
    with_conversations(b, 3)
    assert_summary_searches_indexes(b, "lisi")
    assert_summary_searches_indexes(a, "wangwu")  # a user in no group, with no messages


def test_a_database_of_schema_4_gains_the_indexes_the_conversation_summary_searches(network):  # noqa: F811
    """A node's data directory is its identity: a database of schema 4 takes the indexes in place on its next
    start, and lists the same conversations as before, by index."""
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "你好")
    with_conversations(b, 3)
    listed = summaries(b)
    _as_schema_4(b.dir / "node.db")  # the node's database as schema 4 left it, under the idle node
    assert not {"ix_messages_sender_address", "ix_messages_to"} & indexes(b)
    open_database(b.dir / "node.db").kw["bind"].dispose()  # what the next start of the node does
    assert {"ix_messages_sender_address", "ix_messages_to"} <= indexes(b)
    assert schema_version(b) == SCHEMA_VERSION == "5"
    assert_summary_searches_indexes(b, "lisi")
    assert summaries(b) == listed
