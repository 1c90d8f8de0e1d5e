"""The reference node's own database (app/appnode/store.py): its schema steps are taken in place, keeping what a
node holds, since a node's data directory is its identity."""

from __future__ import annotations

import json
import sqlite3

from sqlalchemy import select, text

from app.appnode import protocol
from app.appnode.store import SCHEMA_VERSION, Message, Outbox, Received, Setting, open_database

# The tables schema 3 changed, as schema 2 created them (messages keyed by id alone; dedup records and the
# outbox without an origin).
SCHEMA_2_TABLES = """
DROP TABLE messages; DROP TABLE received; DROP TABLE outbox;
CREATE TABLE messages (
    message_id VARCHAR(36) NOT NULL, conversation_id VARCHAR(200) NOT NULL, chat_type VARCHAR(8) NOT NULL,
    sender_address VARCHAR(100) NOT NULL, origin_node VARCHAR(20) NOT NULL, "to" VARCHAR(100) NOT NULL,
    msg_type VARCHAR(10) NOT NULL, document JSON NOT NULL, send_time VARCHAR(32) NOT NULL,
    received_at DATETIME NOT NULL, participant_nodes JSON NOT NULL, PRIMARY KEY (message_id));
CREATE INDEX ix_messages_conversation_id ON messages (conversation_id);
CREATE INDEX ix_messages_send_time ON messages (send_time);
CREATE TABLE received (
    from_node VARCHAR(20) NOT NULL, message_id VARCHAR(36) NOT NULL, received_at DATETIME NOT NULL,
    PRIMARY KEY (from_node, message_id));
CREATE TABLE outbox (
    id INTEGER NOT NULL, peer_node VARCHAR(20) NOT NULL, kind VARCHAR(10) NOT NULL,
    message_id VARCHAR(36) NOT NULL, envelope JSON NOT NULL, state VARCHAR(10) NOT NULL, attempts INTEGER NOT NULL,
    first_attempt_at DATETIME, next_attempt_at DATETIME NOT NULL, last_error VARCHAR(300), finished_at DATETIME,
    PRIMARY KEY (id));
CREATE INDEX ix_outbox_next_attempt_at ON outbox (next_attempt_at);
CREATE INDEX ix_outbox_state ON outbox (state);
CREATE INDEX ix_outbox_peer_node ON outbox (peer_node);
UPDATE settings SET value = '2' WHERE key = 'schema_version';
"""

HOME, SENDER, MEMBER = "36000000002025000001", "44000000002025000001", "11000000002025000001"
WHEN = "2026-12-01 08:00:00.000000"


def as_schema_2(connection: sqlite3.Connection) -> None:
    """Turn a new, empty node database back into what schema 2 created."""
    connection.executescript(SCHEMA_2_TABLES)


def test_a_database_of_schema_2_keys_its_messages_by_origin_in_place(tmp_path):
    """Schema 2 to 3: every message, dedup record and outbox row is kept and gains its origin, and from then on
    another node's message under a kept id is a message of its own."""
    path = tmp_path / "node.sqlite3"
    open_database(path).kw["bind"].dispose()
    message_id, group = protocol.new_message_id(), f"g:g1@{HOME}"
    message = {"message_id": message_id, "sender": {"node_id": SENDER}, "content": {"text": "原话"}}
    with sqlite3.connect(path) as connection:
        as_schema_2(connection)
        connection.execute("INSERT INTO messages VALUES (?, ?, 'group', ?, ?, ?, 'text', ?, ?, ?, ?)",
                           (message_id, group, f"lisi@{SENDER}", SENDER, f"g1@{HOME}", json.dumps(message), WHEN,
                            WHEN, json.dumps([HOME, SENDER, MEMBER])))
        connection.execute("INSERT INTO received VALUES (?, ?, ?)", (HOME, message_id, WHEN))  # relayed by home
        connection.execute("INSERT INTO received VALUES (?, ?, ?)", (HOME, "op-1", WHEN))  # a group operation
        relay = {"from_node": HOME, "to_node": MEMBER, "message_id": message_id, "type": "message",
                 "payload": message}
        operation = {"from_node": HOME, "to_node": MEMBER, "message_id": "op-2", "type": "group_op", "payload": {}}
        for kind, envelope in (("message", relay), ("group_op", operation)):
            connection.execute("INSERT INTO outbox (peer_node, kind, message_id, envelope, state, attempts, "
                               "next_attempt_at) VALUES (?, ?, ?, ?, 'pending', 0, ?)",
                               (MEMBER, kind, envelope["message_id"], json.dumps(envelope), WHEN))
    connection.close()
    factory = open_database(path)
    with factory() as session:
        assert session.get(Setting, "schema_version").value == SCHEMA_VERSION == "3"
        kept = session.get(Message, (SENDER, message_id))
        assert (kept.conversation_id, kept.document["content"]["text"]) == (group, "原话")
        assert {(r.from_node, r.origin_node, r.message_id) for r in session.scalars(select(Received))} == {
            (HOME, SENDER, message_id), (HOME, HOME, "op-1")}
        assert [(row.kind, row.origin_node) for row in session.scalars(select(Outbox).order_by(Outbox.id))] == [
            ("message", SENDER), ("group_op", HOME)]
        indexes = set(session.scalars(select(text("name")).select_from(text("sqlite_master"))
                                      .where(text("type = 'index'"))))
        assert {"ix_messages_conversation_id", "ix_messages_send_time"} <= indexes
        columns = {column.name: getattr(kept, column.name) for column in Message.__table__.columns}
        session.add(Message(**{**columns, "origin_node": MEMBER}))  # another origin's message, same id
        session.commit()
        assert sorted(m.origin_node for m in session.scalars(select(Message))) == sorted([SENDER, MEMBER])
    factory.kw["bind"].dispose()
    open_database(path).kw["bind"].dispose()  # and opens as schema 3 from then on
