"""Upgrading a node's database in place (app/appnode/store.py): a node's data directory is its identity (key,
certificate, admission), so an older schema is brought to the current one at start rather than started afresh.

Every step carries its own copy of the DDL it writes, frozen at the schema it brings the database to: a later
change of the models in store.py changes what a new node gets, never what an old step does. All steps run in
one transaction, begun by hand (Python's sqlite3 runs DDL in autocommit when no transaction is open, while
SQLite's DDL is transactional inside one), so a failure anywhere leaves the file as it was.

Versions: "1" and "2" were released; "3" was written by two unreleased builds with different tables (messages
keyed by (origin_node, message_id), from commit 36684d6 which was reverted, and by (conversation_id,
message_id)), told apart here by their primary keys; "4" is current.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

CURRENT = "4"

# ---- schema 4, frozen --------------------------------------------------------------------------------------------

MESSAGES_4 = """CREATE TABLE {name} (
	conversation_id VARCHAR(200) NOT NULL,
	message_id VARCHAR(36) NOT NULL,
	chat_type VARCHAR(8) NOT NULL,
	sender_address VARCHAR(100) NOT NULL,
	origin_node VARCHAR(20) NOT NULL,
	"to" VARCHAR(100) NOT NULL,
	msg_type VARCHAR(10) NOT NULL,
	document JSON NOT NULL,
	send_time VARCHAR(32) NOT NULL,
	received_at DATETIME NOT NULL,
	participant_nodes JSON NOT NULL,
	PRIMARY KEY (conversation_id, message_id)
)"""
MESSAGES_4_INDEXES = ("CREATE INDEX ix_messages_message_id ON messages (message_id)",
                      "CREATE INDEX ix_messages_send_time ON messages (send_time)")
MESSAGE_COLUMNS_4 = ", ".join(f'"{column}"' for column in (
    "conversation_id", "message_id", "chat_type", "sender_address", "origin_node", "to", "msg_type", "document",
    "send_time", "received_at", "participant_nodes"))
RECEIVED_4 = """CREATE TABLE {name} (
	from_node VARCHAR(20) NOT NULL,
	message_id VARCHAR(36) NOT NULL,
	received_at DATETIME NOT NULL,
	PRIMARY KEY (from_node, message_id)
)"""
OUTBOX_4_INDEX = "CREATE INDEX IF NOT EXISTS ix_outbox_message_id ON outbox (message_id)"
FILES_4_COLUMN = "ALTER TABLE files ADD COLUMN conversation_id VARCHAR(200)"

# Primary keys by schema, as `_primary_key` reads them.
MESSAGES_KEY = {"2": ["message_id"], "3-origin": ["origin_node", "message_id"],
                CURRENT: ["conversation_id", "message_id"]}
RECEIVED_KEY = {"3-origin": ["from_node", "origin_node", "message_id"], CURRENT: ["from_node", "message_id"]}


def upgrade(path: Path) -> None:
    """Bring the database at `path` to CURRENT in place, or refuse (RuntimeError) one this software cannot
    upgrade, before anything in the file is touched. A file that does not exist, or holds no tables yet, is left
    alone (store.open_database creates it)."""
    if not path.exists():
        return
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")  # the write lock first: another process may be upgrading it
        try:
            start = _starting_point(connection, path)
            if start is not None and start != CURRENT:
                version = start
                while version != CURRENT:
                    version = UPGRADES[version](connection)
                if connection.execute("UPDATE settings SET value = ? WHERE key = 'schema_version'",
                                      (CURRENT,)).rowcount == 0:
                    connection.execute("INSERT INTO settings (key, value) VALUES ('schema_version', ?)", (CURRENT,))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:  # some errors (a full disk) end the transaction themselves
                connection.execute("ROLLBACK")
            raise
    finally:
        connection.close()


def check(connection: sqlite3.Connection, path: Path) -> None:
    """Refuse to run on a database whose messages or dedup records are not keyed as CURRENT keys them (a file
    some other build wrote under this version number)."""
    for table, keys in (("messages", MESSAGES_KEY), ("received", RECEIVED_KEY)):
        if _primary_key(connection, table) != keys[CURRENT]:
            raise RuntimeError(f"{path}: table {table} is keyed by {_primary_key(connection, table)}, not "
                               f"{keys[CURRENT]} as schema {CURRENT} keys it; restore the data directory from a "
                               "backup taken by a released version, or move the database aside to start afresh")


def _starting_point(connection: sqlite3.Connection, path: Path) -> str | None:
    """Which step to start from (a key of UPGRADES, or CURRENT); None for a file with no tables yet."""
    has_settings = connection.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'settings'").fetchone() is not None
    if not has_settings:
        if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone() is None:
            return None
        raise _unknown(path, "it has tables but no settings table")
    row = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()
    version = row[0] if row else None
    if version == CURRENT:
        return CURRENT
    if version not in (None, "1", "2", "3"):
        raise RuntimeError(f"{path} has schema {version}; this node software needs {CURRENT} and cannot go back: "
                           "run the node software that wrote it")
    # "3" was written by two builds, and a file without a version (its first start stopped between creating the
    # tables and recording the version) by any: the tables tell which.
    messages = _primary_key(connection, "messages")
    if messages == MESSAGES_KEY["2"] and version in (None, "1", "2"):
        has_peer_node = "peer_node" in _columns(connection, "read_states")
        return version or ("2" if has_peer_node else "1")
    if messages == MESSAGES_KEY["3-origin"] and version in (None, "3"):
        return "3-origin"
    if messages == MESSAGES_KEY[CURRENT] and version in (None, "3"):
        return "3"
    raise _unknown(path, f"schema {version}, but messages keyed by {messages}")


def _unknown(path: Path, why: str) -> RuntimeError:
    return RuntimeError(f"{path} is no node database this software can upgrade ({why}); restore the data "
                        "directory from a backup, or move the database aside to start afresh")


def _primary_key(connection: sqlite3.Connection, table: str) -> list[str]:
    columns = connection.execute(f"PRAGMA table_info({table})").fetchall()
    return [name for _, name, _, _, _, position in sorted(columns, key=lambda c: c[5]) if position]


def _columns(connection: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}


# ---- the steps; each returns the version it brings the database to ---------------------------------------------

def _add_peer_node(connection: sqlite3.Connection) -> str:
    """Schema 1 to 2: who reported each read state and presence entry, for the caps per peer. Kept rows count
    against their user's node: a group's read states relayed by its home node before the upgrade are few, and
    count against the members' nodes instead. The release that brought schema 2 ran this step without a
    transaction, and a failure part way left a column added at version 1: a column already there is kept."""
    for table in ("read_states", "presence"):
        if "peer_node" not in _columns(connection, table):
            connection.execute(f"ALTER TABLE {table} ADD COLUMN peer_node VARCHAR(20) NOT NULL DEFAULT ''")
        connection.execute(f"UPDATE {table} SET peer_node = substr(user_id, instr(user_id, '@') + 1)")
    connection.execute("CREATE INDEX IF NOT EXISTS ix_read_states_peer_node ON read_states (peer_node)")
    connection.execute("CREATE INDEX IF NOT EXISTS ix_presence_peer_node_updated_at "
                       "ON presence (peer_node, updated_at)")
    return "2"


def _key_messages_by_conversation(connection: sqlite3.Connection) -> str:
    """Schema 2 to 4: messages keyed by (conversation_id, message_id) instead of message_id alone (docs/protocol.md
    §6). SQLite cannot change a primary key in place: the table is built anew beside the old one and filled by
    one INSERT ... SELECT (every row kept: ids unique before are unique within each conversation), then takes
    the old one's name and indexes."""
    _rebuild_messages(connection, f"SELECT {MESSAGE_COLUMNS_4} FROM messages")
    return _schema_4_extras(connection)


def _unkey_origin(connection: sqlite3.Connection) -> str:
    """Schema 3 as commit 36684d6 wrote it (reverted before any release) to 4: messages keyed by (origin_node,
    message_id) are keyed by (conversation_id, message_id), keeping the first received of two origins' messages
    under one id in one conversation (the later one is what schema 4 refuses with `conflict`); dedup records
    keyed by (from_node, origin_node, message_id) go back to (from_node, message_id), one per pair, the
    earliest; the outbox loses the origin column it added. Each table is one pass over its rows."""
    _rebuild_messages(connection, f"SELECT {MESSAGE_COLUMNS_4} FROM messages ORDER BY received_at, rowid")
    connection.execute(RECEIVED_4.format(name="received_v4"))
    connection.execute("INSERT INTO received_v4 (from_node, message_id, received_at) "
                       "SELECT from_node, message_id, min(received_at) FROM received GROUP BY from_node, message_id")
    connection.execute("DROP TABLE received")
    connection.execute("ALTER TABLE received_v4 RENAME TO received")
    if "origin_node" in _columns(connection, "outbox"):
        connection.execute("ALTER TABLE outbox DROP COLUMN origin_node")
    return _schema_4_extras(connection)


def _schema_4_extras(connection: sqlite3.Connection) -> str:
    """Schema 3 (keyed by conversation) to 4: the outbox found by message id (delivery state, per message), and
    the conversation a downloaded file was fetched for (§7.2; unknown for files kept before)."""
    connection.execute(OUTBOX_4_INDEX)
    if "conversation_id" not in _columns(connection, "files"):
        connection.execute(FILES_4_COLUMN)
    return CURRENT


def _rebuild_messages(connection: sqlite3.Connection, select: str) -> None:
    connection.execute(MESSAGES_4.format(name="messages_v4"))
    # OR IGNORE: of rows sharing (conversation_id, message_id), the first `select` yields is kept
    connection.execute(f"INSERT OR IGNORE INTO messages_v4 ({MESSAGE_COLUMNS_4}) {select}")
    connection.execute("DROP TABLE messages")  # and its indexes with it
    connection.execute("ALTER TABLE messages_v4 RENAME TO messages")
    for index in MESSAGES_4_INDEXES:
        connection.execute(index)


UPGRADES: dict[str, Callable[[sqlite3.Connection], str]] = {
    "1": _add_peer_node, "2": _key_messages_by_conversation, "3": _schema_4_extras, "3-origin": _unkey_origin}
