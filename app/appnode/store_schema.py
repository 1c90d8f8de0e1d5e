"""Opening the reference node's database: created on first use; a vendor node would migrate it, the
reference node upgrades in place from the versions listed in `_create_or_upgrade` and refuses any other
(SCHEMA_VERSION). The CLI and the server process share the file: WAL mode lets the CLI write while the server
reads.
"""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import create_engine, event, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker

from app.appnode.store import Base, Message, Outbox, Presence, ReadState, Setting
from app.database import switch_to_wal

SCHEMA_VERSION = "8"

BUSY_TIMEOUT = 30  # seconds a connection waits for another's write lock


def open_database(path: Path) -> sessionmaker[Session]:
    """The node's sessionmaker; WAL journal so that the CLI and the server can share the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        f"sqlite:///{path}",
        connect_args={"timeout": BUSY_TIMEOUT, "check_same_thread": False},
        json_serializer=lambda value: json.dumps(value, ensure_ascii=False),
    )

    @event.listens_for(engine, "connect")
    def _pragmas(connection, _record):
        cursor = connection.cursor()
        switch_to_wal(cursor, BUSY_TIMEOUT)  # the management node's listener did already, when imported
        # NORMAL in WAL mode: a commit survives a crash of the process (what an ack promises a peer);
        # only an operating-system crash may lose the last moments.
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Checkpoints (the only fsyncs in WAL mode with NORMAL) run from the node loop every second
        # (`checkpoint`), not inside a message's commit; this is the safety net if no loop runs.
        cursor.execute("PRAGMA wal_autocheckpoint=20000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    # pysqlite begins its implicit transaction only before INSERT, UPDATE and DELETE: an ALTER TABLE or a
    # CREATE TABLE would run outside it, committed at once. With the driver in autocommit the transaction is the
    # one begun here, and the steps are atomic. IMMEDIATE takes the write lock before the version is read: a
    # second process (the server and a CLI command opening a node just upgraded) waits, then finds the new one.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("BEGIN IMMEDIATE")
        try:
            _create_or_upgrade(connection, path)
        except BaseException:
            if connection.connection.driver_connection.in_transaction:  # SQLite may have rolled back itself
                connection.exec_driver_sql("ROLLBACK")
            raise
        connection.exec_driver_sql("COMMIT")
    return sessionmaker(engine, expire_on_commit=False)


def _create_or_upgrade(connection: Connection, path: Path) -> None:
    """Create the tables of a new database, or take one of an older schema to SCHEMA_VERSION; inside the
    caller's transaction."""
    Base.metadata.create_all(connection)
    settings = Setting.__table__
    current = connection.execute(select(settings.c.value).where(settings.c.key == "schema_version")).scalar()
    if current is None:
        connection.execute(insert(settings).values(key="schema_version", value=SCHEMA_VERSION))
    elif current in ("1", "2", "3", "4", "5", "6", "7"):
        if current == "1":
            _add_peer_node(connection)
        if current in ("1", "2"):
            _add_delivered_forgotten(connection)
        if current in ("1", "2", "3"):
            _add_joined_at(connection)
        if current in ("1", "2", "3", "4"):
            _index_message_parties(connection)
        if current in ("1", "2", "3", "4", "5"):
            _index_outbox_messages(connection)
        if current in ("1", "2", "3", "4", "5", "6"):
            _key_group_requests(connection)
        _mark_created_hidden(connection)
        connection.execute(update(settings).where(settings.c.key == "schema_version").values(value=SCHEMA_VERSION))
    elif current != SCHEMA_VERSION:
        raise RuntimeError(f"{path} has schema {current}; this node software needs {SCHEMA_VERSION}")


def _has_column(connection: Connection, table: str, column: str) -> bool:
    """Each step checks before it adds: releases before the steps were atomic could leave one half done."""
    return any(row[1] == column for row in connection.exec_driver_sql(f"PRAGMA table_info({table})"))


def _add_peer_node(connection: Connection) -> None:
    """Schema 1 to 2: who reported each read state and presence entry, for the caps per peer. A node's data
    directory is its identity (key, certificate, admission), so this one step is done in place rather than
    starting afresh. Kept rows count against their user's node: a group's read states relayed by its home node
    before the upgrade are few, and count against the members' nodes instead."""
    for table in ("read_states", "presence"):
        if not _has_column(connection, table, "peer_node"):
            connection.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN peer_node VARCHAR(20) NOT NULL DEFAULT ''")
        connection.exec_driver_sql(
            f"UPDATE {table} SET peer_node = substr(user_id, instr(user_id, '@') + 1) WHERE peer_node = ''"
        )
    for index in (*ReadState.__table__.indexes, *Presence.__table__.indexes):
        index.create(connection, checkfirst=True)


def _add_delivered_forgotten(connection: Connection) -> None:
    """Schema 2 to 3: whether housekeeping deleted delivered outbox rows of a message. Rows deleted before the
    upgrade are not known any more: those messages read as before, with no delivery state."""
    if not _has_column(connection, "messages", "delivered_forgotten"):
        connection.exec_driver_sql("ALTER TABLE messages ADD COLUMN delivered_forgotten BOOLEAN NOT NULL DEFAULT 0")


def _add_joined_at(connection: Connection) -> None:
    """Schema 3 to 4: when each group member was last added. Nobody recorded it before the upgrade: the members
    then have no entry, and see their groups' messages from the beginning, as they did."""
    if not _has_column(connection, "groups", "joined_at"):
        connection.exec_driver_sql("ALTER TABLE groups ADD COLUMN joined_at JSON NOT NULL DEFAULT '{}'")


def _index_message_parties(connection: Connection) -> None:
    """Schema 4 to 5: the indexes on the messages' sender and recipient that a user's conversation list searches
    (`conversations_page`); without them it read every message the node holds."""
    for index in Message.__table__.indexes:
        index.create(connection, checkfirst=True)


def _index_outbox_messages(connection: Connection) -> None:
    """Schema 5 to 6: the index on the outbox's message_id, by which every history page finds its messages'
    delivery states (`_delivery_states`); without it each page read the whole outbox."""
    _create_index(connection, "ix_outbox_message_id")


def _key_group_requests(connection: Connection) -> None:
    """Schema 6 to 7: the outbox's `group_key` and the index on it, by which a group request finds an earlier
    one for the same group it waits behind (`BEHIND_EARLIER_REQUEST`); compared by json_extract, every earlier
    row of the peer was read for each request, and a delivery round with 500 groups waiting took 2 s. Filled for
    every row already queued as `store.group_key` fills a new one."""
    if not _has_column(connection, "outbox", "group_key"):
        connection.exec_driver_sql("ALTER TABLE outbox ADD COLUMN group_key VARCHAR(64)")
    connection.exec_driver_sql(
        "UPDATE outbox SET group_key = json_extract(envelope, '$.payload.group_id') WHERE kind = 'group_op'"
        " AND json_extract(envelope, '$.payload.home_node_id') = peer_node"
    )
    _create_index(connection, "ix_outbox_group_requests")


def _create_index(connection: Connection, name: str) -> None:
    """One of the outbox's indexes, unless it is there: each step creates its own, not a later step's."""
    next(index for index in Outbox.__table__.indexes if index.name == name).create(connection, checkfirst=True)


def _mark_created_hidden(connection: Connection) -> None:
    """Schema 7 to 8: `groups.created_hidden`, the replicas an announcement listing no user of this node created,
    which alone count against `max_hidden_groups_per_peer`; every hidden replica counted before, the groups this
    node's users had left among them, and past the cap an honest kick that came before its invite was refused for
    good. Which of the hidden replicas kept were created so was never recorded: none is marked. Marking them all
    would leave an upgraded node refusing honest kicks as before; marking none lets a home node that filled the
    cap before the upgrade have as many again kept, once, and no more."""
    if not _has_column(connection, "groups", "created_hidden"):
        connection.exec_driver_sql("ALTER TABLE groups ADD COLUMN created_hidden BOOLEAN NOT NULL DEFAULT 0")
