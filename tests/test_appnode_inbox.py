"""The reference node's inbox: the CLI pages a user's conversations as the operator page does, and the query
behind both finds the user's messages by index, not by reading every message the node holds."""

from __future__ import annotations

import json
import sqlite3

from click.testing import CliRunner
from sqlalchemy import event

from app.appnode.cli import cli
from app.appnode.store_schema import SCHEMA_VERSION, open_database
from tests.test_appnode import _as_schema_4, network  # noqa: F401 (fixture)
from tests.test_appnode_page import with_conversations
from tests.test_sessions import people  # noqa: F401 (fixture)


def inbox(served, *args: str) -> tuple[list[str], str]:
    """`inbox --as lisi ARGS`: the conversation ids it lists, a line each, and what it says on stderr."""
    result = CliRunner().invoke(cli, ["--data", str(served.dir), "inbox", "--as", "lisi", *args])
    assert result.exit_code == 0, result.output
    return [line.split("\t")[0] for line in result.stdout.splitlines()], result.stderr


def test_inbox_lists_the_newest_fifty_conversations_and_says_how_to_read_older_ones(network):  # noqa: F811
    """Every conversation at once: a peer opening thousands made the command's output unbounded and slow."""
    a, b = network["a"], network["b"]
    first = a.node.send_text("zhangsan", b.user("lisi"), "你好")
    newest = [*with_conversations(b, 54), first.conversation_id]
    as_json = json.loads(CliRunner().invoke(cli, ["--data", str(b.dir), "--json", "inbox", "--as", "lisi"]).stdout)
    cursor = as_json[49]["last_message_id"]  # the last listed conversation's last message
    assert inbox(b) == (newest[:50], f"older conversations: inbox --before {cursor}\n")
    assert inbox(b, "--before", cursor) == (newest[50:], "")
    shown, told = inbox(b, "--limit", "3", "--before", cursor)
    assert shown == newest[50:53] and told.startswith("older conversations: inbox --before ")
    assert inbox(b, "--limit", "2", "--before", told.split()[-1]) == (newest[53:], "")
    assert inbox(b, "--before", first.message_id) == (["no older conversations"], "")


def test_inbox_json_keeps_its_list_of_conversations_a_page_at_a_time(network):  # noqa: F811
    a, b = network["a"], network["b"]
    first = a.node.send_text("zhangsan", b.user("lisi"), "你好")
    newest = [*with_conversations(b, 3), first.conversation_id]

    def page(*args: str) -> list[dict]:
        result = CliRunner().invoke(cli, ["--data", str(b.dir), "--json", "inbox", "--as", "lisi", *args])
        assert result.exit_code == 0 and result.stderr == "", result.output
        return json.loads(result.stdout)

    one = page("--limit", "3")
    assert [row["conversation_id"] for row in one] == newest[:3]
    assert set(one[0]) == {"conversation_id", "with", "unread", "count", "last_message_id"}
    # The next page: before the last listed conversation's last message, as --before takes it
    assert page("--limit", "3", "--before", one[-1]["last_message_id"]) == [
        {
            "conversation_id": first.conversation_id,
            "with": a.user("zhangsan"),
            "unread": 1,
            "count": 1,
            "last_message_id": first.message_id,
        }
    ]


def test_inbox_refuses_a_limit_outside_one_to_a_thousand_and_a_cursor_it_does_not_have(network):  # noqa: F811
    b = network["b"]
    for limit, reason in (
        ("0", "0 is not in the range 1 to 1000."),
        ("1001", "1001 is not in the range 1 to 1000."),
        ("-1", "'-1' is not a whole number in ASCII digits."),
    ):
        refused = CliRunner().invoke(cli, ["--data", str(b.dir), "--json", "inbox", "--as", "lisi", "--limit", limit])
        assert (refused.exit_code, json.loads(refused.stderr)) == (
            2,
            {"error": {"code": "usage_error", "message": f"Invalid value for '--limit': {reason}"}},
        ), limit
        refused = CliRunner().invoke(cli, ["--data", str(b.dir), "inbox", "--as", "lisi", "--limit", limit])
        assert refused.exit_code == 2 and f"Invalid value for '--limit': {reason}" in refused.stderr
    unknown = "01a2ffff-0000-7000-8000-000000000000"
    refused = CliRunner().invoke(cli, ["--data", str(b.dir), "--json", "inbox", "--as", "lisi", "--before", unknown])
    assert (refused.exit_code, json.loads(refused.stderr)) == (
        2,
        {"error": {"code": "not_found", "message": f"no message {unknown}"}},
    )


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
    assert schema_version(b) == SCHEMA_VERSION == "8"
    assert_summary_searches_indexes(b, "lisi")
    assert summaries(b) == listed
