"""The reference node's own database: a small SQLite file in its data directory.

Plain SQLAlchemy 2.0 with its own declarative base, so nothing of the management node's schema
(Flask-SQLAlchemy, Alembic) leaks into a node. Its tables are here, with the hot path's plain SQL; how the file
is opened, created and upgraded (SCHEMA_VERSION) is `store_schema`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    Boolean,
    Index,
    Integer,
    String,
    Text,
    bindparam,
    false,
    select,
    text,
    update,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from app.database import UTCDateTime, utcnow


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class Setting(Base):
    """The node's identity and registry state (node id, application id, session), by key."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class User(Base):
    """A local user: the people of this IM system who write to other nodes' users."""

    __tablename__ = "users"
    user_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64))
    org_code: Mapped[str] = mapped_column(String(32))
    org_name: Mapped[str] = mapped_column(String(100))


class Message(Base):
    """An A.9 message this node sent or received; `participant_nodes` is the origin's snapshot of who may
    download its file (docs/protocol.md §7.2). `delivered_forgotten`: housekeeping deleted outbox rows of it
    that were delivered, so its delivery state still counts them."""

    __tablename__ = "messages"
    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    conversation_id: Mapped[str] = mapped_column(String(200), index=True)
    chat_type: Mapped[str] = mapped_column(String(8))
    # Indexed (schema 5): a user's conversations are found by their messages' sender and recipient.
    sender_address: Mapped[str] = mapped_column(String(100), index=True)
    origin_node: Mapped[str] = mapped_column(String(20))
    to: Mapped[str] = mapped_column(String(100), index=True)
    msg_type: Mapped[str] = mapped_column(String(10))
    document: Mapped[dict] = mapped_column(JSON)
    send_time: Mapped[str] = mapped_column(String(32), index=True)  # protocol.sortable_time: text order is time order
    received_at: Mapped[datetime]
    participant_nodes: Mapped[list] = mapped_column(JSON, default=list)
    # A server default: the hot path's INSERT (insert_message) leaves it out.
    delivered_forgotten: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Received(Base):
    """Every (from_node, message_id) accepted: a repeat is acknowledged as a duplicate, never delivered twice."""

    __tablename__ = "received"
    from_node: Mapped[str] = mapped_column(String(20), primary_key=True)
    message_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    received_at: Mapped[datetime]


class Outbox(Base):
    """An envelope waiting for its peer's acknowledgement; survives restarts, retried with backoff."""

    __tablename__ = "outbox"
    # A request's earlier ones for the same group are found by one probe of this index (schema 7); it holds
    # the group requests only: a message queued costs it nothing.
    __table_args__ = (Index("ix_outbox_group_requests", "peer_node", "group_key", "state", "id",
                            sqlite_where=text("group_key IS NOT NULL")),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    peer_node: Mapped[str] = mapped_column(String(20), index=True)
    kind: Mapped[str] = mapped_column(String(10))
    message_id: Mapped[str] = mapped_column(String(36), index=True)  # a history page's delivery states (schema 6)
    envelope: Mapped[dict] = mapped_column(JSON)
    # The group_id of an A.12 request to the group's home node, NULL on any other row (`group_key`, schema 7).
    group_key: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(10), default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_attempt_at: Mapped[datetime | None]
    next_attempt_at: Mapped[datetime] = mapped_column(index=True)
    last_error: Mapped[str | None] = mapped_column(String(300))
    finished_at: Mapped[datetime | None]


class StoredFile(Base):
    """A file's bytes on disk: one a local user sent (origin = this node) or one downloaded from its origin."""

    __tablename__ = "files"
    origin_node: Mapped[str] = mapped_column(String(20), primary_key=True)
    file_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10))
    declared: Mapped[str] = mapped_column(String(127))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(300))
    file_name: Mapped[str | None] = mapped_column(String(255))
    expire_at: Mapped[datetime | None]
    created_at: Mapped[datetime]


class Group(Base):
    """A group this node is home of (authoritative) or a replica of its home node's last announcement.
    `joined_at`: when each member was last added, as this node learned it (`set_members`); a member sees the
    group's messages sent from then on (docs/protocol.md §8.9)."""

    __tablename__ = "groups"
    group_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    home_node_id: Mapped[str] = mapped_column(String(20), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    notice: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(String(100))
    members: Mapped[list] = mapped_column(JSON)
    seq: Mapped[int] = mapped_column(Integer)
    dismissed: Mapped[bool] = mapped_column(Boolean, default=False)
    # Schema 8: a replica that an announcement listing no user of this node created, kept hidden for its seq;
    # false once a state lists one of them. Only these count against `max_hidden_groups_per_peer`: a group this
    # node's users left is hidden too, and is no home node's to fill this node with.
    created_hidden: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Member address to `protocol.sortable_time` (text order is time order). Schema 4: a member without an
    # entry was there before anything was recorded (a group's first members; every member of an older schema).
    joined_at: Mapped[dict] = mapped_column(JSON, default=dict, server_default="{}")

    @property
    def address(self) -> str:
        return f"{self.group_id}@{self.home_node_id}"

    def joined(self, member: str) -> str:
        """When `member` was last added, comparable with `Message.send_time`; "" (before any message) when it is
        not known: a member since the group's beginning, or since before schema 4."""
        return (self.joined_at or {}).get(member, "")

    def set_members(self, members: list[str], now: str | None, rejoined: Iterable[str] = ()) -> None:
        """The group's members become `members`. Each one it did not list joins `now` (None: the group's first
        members, there from its beginning); each one it keeps keeps its time, and a removed one loses it, so
        that being invited again starts afresh. A replica that missed states may still list someone removed
        and added again meanwhile: `rejoined`, the members the operation added, join `now` all the same."""
        listed, joined, kept = set(self.members or ()) - set(rejoined), self.joined_at or {}, {}
        for member in members:
            if member not in listed:
                if now is not None:
                    kept[member] = now
            elif member in joined:
                kept[member] = joined[member]
        self.joined_at, self.members = kept, list(members)

    def info(self) -> dict:
        return {"name": self.name, "notice": self.notice, "owner": self.owner, "members": list(self.members)}


class ReadState(Base):
    """A.13: a user's read position in a conversation, local users' and peers' alike; newest `updated_at` wins.
    `peer_node` is the node that first reported it (this node for its own users), whose cap it counts against."""

    __tablename__ = "read_states"
    conversation_id: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    read_up_to_message_id: Mapped[str] = mapped_column(String(36))
    unread_count: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[str] = mapped_column(String(32))
    peer_node: Mapped[str] = mapped_column(String(20), index=True)


class Presence(Base):
    """A.15: the newest status of a user, local or remote; `peer_node` is the user's node, as for read states."""

    __tablename__ = "presence"
    __table_args__ = (Index("ix_presence_peer_node_updated_at", "peer_node", "updated_at"),)
    user_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    status: Mapped[str] = mapped_column(String(8))
    client_type: Mapped[str] = mapped_column(String(8))
    last_active: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    peer_node: Mapped[str] = mapped_column(String(20))


class PendingEphemeral(Base):
    """Read states and presence waiting for the next batch to their peer: newest per key only, not durable
    in spirit (a batch that keeps failing is dropped, docs/protocol.md §6); the table is how the CLI hands
    them to the server process."""

    __tablename__ = "pending_ephemeral"
    peer_node: Mapped[str] = mapped_column(String(20), primary_key=True)
    kind: Mapped[str] = mapped_column(String(10), primary_key=True)
    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    item: Mapped[dict] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    first_try_at: Mapped[datetime | None]


# ---- the hot path in plain SQL -------------------------------------------------------------------------------
# Sending and receiving a message is the node's hottest path (bench/messages.py): these statements run on a
# DBAPI cursor, either from `raw_cursor(session)` inside an ORM transaction or on a connection taken straight
# from the engine's pool, and write exactly what the mapped types above write (times as SQLAlchemy's SQLite
# DateTime strings in UTC, JSON with the engine's serializer).

def sql_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def sql_json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def raw_cursor(session: Session):
    """A DBAPI cursor inside the session's transaction."""
    return session.connection().connection.driver_connection.cursor()


MESSAGE_COLUMNS = ("message_id", "conversation_id", "chat_type", "sender_address", "origin_node", "to",
                   "msg_type", "document", "send_time", "received_at", "participant_nodes")
INSERT_MESSAGE_SQL = (f"INSERT OR IGNORE INTO messages ({', '.join(f'{c!r}' for c in MESSAGE_COLUMNS)}) "
                      f"VALUES ({', '.join('?' for _ in MESSAGE_COLUMNS)})").replace("'", '"')


def insert_message(cursor, values: dict) -> None:
    row = dict(values, document=sql_json(values["document"]), received_at=sql_time(values["received_at"]),
               participant_nodes=sql_json(values["participant_nodes"]))
    cursor.execute(INSERT_MESSAGE_SQL, [row[column] for column in MESSAGE_COLUMNS])


def group_key(peer: str, kind: str, envelope: dict) -> str | None:
    """The group an outbox row to `peer` is a request for: the group_id of an A.12 request to the group's home
    node (docs/protocol.md §6 "Group requests in order"), None for any other row (an announcement goes from the
    home node, to other nodes). The upgrade to schema 7 fills it the same way, in SQL."""
    payload = envelope.get("payload")
    if kind != "group_op" or not isinstance(payload, dict) or payload.get("home_node_id") != peer:
        return None
    return payload.get("group_id")


def insert_outbox(cursor, *, peer: str, kind: str, envelope: dict, next_attempt_at: datetime) -> int:
    cursor.execute("INSERT INTO outbox (peer_node, kind, message_id, envelope, group_key, state, attempts,"
                   " next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', 0, ?) RETURNING id",
                   (peer, kind, envelope["message_id"], sql_json(envelope), group_key(peer, kind, envelope),
                    sql_time(next_attempt_at)))
    return cursor.fetchone()[0]


# Writing back what a delivery attempt changed, one executemany per batch (built once: no compiling per call).
OUTBOX_MUTABLE = ("state", "attempts", "first_attempt_at", "next_attempt_at", "last_error", "finished_at")
UPDATE_OUTBOX = update(Outbox.__table__).where(Outbox.__table__.c.id == bindparam("row_id")).values(
    {name: bindparam(f"new_{name}") for name in OUTBOX_MUTABLE})


def insert_received(cursor, from_node: str, message_id: str, received_at: datetime) -> None:
    """Raises sqlite3.IntegrityError for a pair already received."""
    cursor.execute("INSERT INTO received (from_node, message_id, received_at) VALUES (?, ?, ?)",
                   (from_node, message_id, sql_time(received_at)))


def user_row(cursor, user_id: str) -> tuple | None:
    """(user_id, user_name, org_code, org_name) of a local user."""
    return cursor.execute("SELECT user_id, user_name, org_code, org_name FROM users WHERE user_id = ?",
                          (user_id,)).fetchone()


def is_group(cursor, group_id: str, home_node_id: str) -> bool:
    return cursor.execute("SELECT 1 FROM groups WHERE group_id = ? AND home_node_id = ?",
                          (group_id, home_node_id)).fetchone() is not None


def had_group_conversation(cursor, conversation_id: str) -> bool:
    """A group message was stored under this `g:` conversation id: the address is a group's, even after its
    replica is gone (dismissed, or no local member left)."""
    return cursor.execute("SELECT 1 FROM messages WHERE conversation_id = ? AND chat_type = 'group' LIMIT 1",
                          (conversation_id,)).fetchone() is not None


def checkpoint(factory: sessionmaker[Session]) -> None:
    """Copy the WAL into the database file without blocking writers (PASSIVE)."""
    with factory() as session:
        session.connection().exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def get_setting(session: Session, key: str, default: str | None = None) -> str | None:
    row = session.get(Setting, key)
    return row.value if row else default


def put_setting(session: Session, key: str, value: str) -> None:
    row = session.get(Setting, key)
    if row is None:
        session.add(Setting(key=key, value=value))
    else:
        row.value = value


__all__ = ["Base", "Group", "Message", "Outbox", "PendingEphemeral", "Presence", "ReadState", "Received",
           "Setting", "StoredFile", "User", "get_setting", "put_setting", "select", "utcnow"]
