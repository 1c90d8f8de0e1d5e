"""The node's database across schema versions (app/appnode/store.py): a data directory is the node's identity,
so an older schema is upgraded in place at start, all of it or nothing."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError

from app.appnode import protocol
from app.appnode.store import SCHEMA_VERSION, Message, Setting, open_database, utcnow

SCHEMA_2 = Path(__file__).parent / "fixtures" / "appnode_schema_2.sql"
COLUMNS = ("message_id", "conversation_id", "chat_type", "sender_address", "origin_node", "to", "msg_type",
           "document", "send_time", "received_at", "participant_nodes")
SELECT_MESSAGES = f"SELECT {', '.join(repr(c).replace(chr(39), chr(34)) for c in COLUMNS)} FROM messages"
HOME, MEMBER = "36000000002025000001", "44000000002025000001"


def message_row(number: int) -> tuple:
    """A schema-2 messages row: single chats of a few pairs and one group, as the node wrote them."""
    sender, to = f"user{number % 7}@{MEMBER}", f"zhangsan@{HOME}"
    group = number % 5 == 0
    conversation = f"g:zhuanban@{HOME}" if group else protocol.single_chat_conversation_id(sender, to)
    message = {"message_id": protocol.new_message_id(), "chat_type": "group" if group else "single",
               "conversation_id": conversation, "sender": {"user_id": sender.split("@")[0], "node_id": MEMBER},
               "to": f"zhuanban@{HOME}" if group else to, "msg_type": "text", "content": {"text": f"第{number}条"},
               "send_time": protocol.format_timestamp(utcnow())}
    return (message["message_id"], conversation, message["chat_type"], sender, MEMBER, message["to"], "text",
            json.dumps(message, ensure_ascii=False), protocol.sortable_time(message["send_time"]),
            "2026-12-01 08:00:00.000000", json.dumps([HOME, MEMBER]))


def schema_2_database(path: Path, messages: int = 5) -> None:
    """A database as schema 2 left it (tests/fixtures/appnode_schema_2.sql), with `messages` messages."""
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_2.read_text("utf-8"))
        connection.executemany(f"INSERT INTO messages VALUES ({', '.join('?' for _ in COLUMNS)})",
                               (message_row(number) for number in range(messages)))
    connection.close()


def snapshot(path: Path) -> tuple[list, list, str]:
    """Everything an upgrade could leave behind: the schema's objects, the messages and the schema version."""
    with sqlite3.connect(path) as connection:
        schema = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        messages = connection.execute(f"{SELECT_MESSAGES} ORDER BY message_id").fetchall()
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
    connection.close()
    return schema, messages, version


def shape(path: Path) -> tuple[list, list]:
    """The messages table as SQLite sees it: its columns with their primary-key positions, and its indexes."""
    with sqlite3.connect(path) as connection:
        columns = connection.execute("PRAGMA table_info(messages)").fetchall()
        indexes = sorted((name, unique, [c[2] for c in connection.execute(f"PRAGMA index_info({name})")])
                         for _, name, unique, *_ in connection.execute("PRAGMA index_list(messages)"))
    connection.close()
    return columns, indexes


def test_a_schema_2_database_is_keyed_by_conversation_and_id_after_the_upgrade_with_every_row_kept(tmp_path):
    """Schema 3 keys messages by (conversation_id, message_id), so that a message id learnt in one conversation
    takes nothing in another (docs/protocol.md §6); a node's messages survive the upgrade, and the table is the
    one a new node gets."""
    path = tmp_path / "node.sqlite3"
    schema_2_database(path)
    _, before, _ = snapshot(path)
    factory = open_database(path)
    schema, after, version = snapshot(path)
    assert (after, version) == (before, SCHEMA_VERSION) and SCHEMA_VERSION == "3"
    assert [name for kind, name, _ in schema if kind == "table" and name.startswith("messages")] == ["messages"]
    fresh = tmp_path / "fresh.sqlite3"
    open_database(fresh).kw["bind"].dispose()
    assert shape(path) == shape(fresh)
    first = before[0]
    with factory.begin() as session:  # the same id in another conversation is another message now
        kept = session.get(Message, (first[1], first[0]))
        assert kept.document == json.loads(first[7])
        session.add(Message(**{**{c: getattr(kept, c) for c in COLUMNS}, "conversation_id": "s:" + "0" * 32}))
    with pytest.raises(IntegrityError), factory.begin() as session:  # and the same one twice is not
        session.add(Message(**{c: getattr(kept, c) for c in COLUMNS}))
    with factory() as session:
        assert session.get(Setting, "schema_version").value == "3"
        assert session.query(Message).filter(Message.message_id == first[0]).count() == 2
    factory.kw["bind"].dispose()
    open_database(path).kw["bind"].dispose()  # and opens as schema 3 from then on


def test_an_upgrade_that_fails_part_way_leaves_the_database_as_it_was_and_the_next_start_upgrades_it(tmp_path):
    """The steps run in one transaction. Python's sqlite3 ran each statement of an upgrade in a transaction of
    its own, so a failure after the new table was built left it beside the old one (or an empty one in its
    place) at schema 2, and the node never started again. The failure here is in the upgrade's last step,
    the version bump, after every table has been rebuilt."""
    path = tmp_path / "node.sqlite3"
    schema_2_database(path)
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TRIGGER broken BEFORE UPDATE ON settings BEGIN SELECT RAISE(ABORT, 'disk trouble'); "
                           "END")
    connection.close()
    before = snapshot(path)
    with pytest.raises(sqlite3.IntegrityError, match="disk trouble"):
        open_database(path)
    assert snapshot(path) == before
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER broken")
    connection.close()
    open_database(path).kw["bind"].dispose()
    _, messages, version = snapshot(path)
    assert (messages, version) == (before[1], "3")


def test_forty_thousand_messages_are_upgraded_in_one_pass(tmp_path):
    """The copy is one INSERT ... SELECT: linear in the rows (an earlier attempt scanned the table once per row
    and took half a minute for this many)."""
    path = tmp_path / "node.sqlite3"
    schema_2_database(path, messages=40_000)
    open_database(path).kw["bind"].dispose()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT count(*), count(DISTINCT message_id) FROM messages").fetchone() == (
            40_000, 40_000)
        assert connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone() == ("3",)
    connection.close()
