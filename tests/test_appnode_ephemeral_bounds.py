"""What one peer node may make the reference node keep of ephemeral state (docs/protocol.md §6, §8.13): a
bounded number of read states and presence entries, and no `updated_at` ahead of the receiver's clock. A peer
holding a valid certificate made up users and conversations without end, or sent a time years ahead that won
every later comparison."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, text

from app.appnode import protocol, validation
from app.appnode.config import NodeConfig
from app.appnode.store import Presence, ReadState, Setting
from app.appnode.store_schema import SCHEMA_VERSION, open_database
from tests.appnode_harness import raw_post
from tests.test_appnode import network, stored_messages, sync  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)


def stamp(seconds: float = 0) -> str:
    return protocol.format_timestamp(datetime.now(UTC) + timedelta(seconds=seconds))


def presence_item(user: str, seconds: float = 0, status: str = "online") -> dict:
    return {"user_id": user, "status": status, "client_type": "pc", "last_active": stamp(min(seconds, 0)),
            "updated_at": stamp(seconds)}


def read_state(user: str, seconds: float = 0, conversation: str | None = None) -> dict:
    conversation = conversation or "s:" + hashlib.sha256(protocol.new_message_id().encode()).hexdigest()[:32]
    return {"conversation_id": conversation, "user_id": user, "read_up_to_message_id": protocol.new_message_id(),
            "unread_count": 0, "updated_at": stamp(seconds)}


def post_batch(sender, receiver, **batch):
    envelope = protocol.make_envelope(from_node=sender.id, to_node=receiver.id, type="ephemeral", payload=batch)
    return raw_post(sender.node, receiver, "ephemeral", envelope)


def presence_users(served, node_id: str) -> set[str]:
    with served.node.db() as session:
        return set(session.scalars(select(Presence.user_id).where(Presence.user_id.endswith("@" + node_id))))


def read_states(served) -> dict[tuple[str, str], str]:
    with served.node.db() as session:
        return {(row.conversation_id, row.user_id): row.read_up_to_message_id
                for row in session.scalars(select(ReadState))}


def test_presence_past_a_peers_cap_evicts_that_peers_oldest_entries(network):  # noqa: F811
    """Presence for a million made-up users of the peer's own was all kept. Past the cap the peer's oldest
    entries go (they would show as offline within 10 minutes anyway); other peers' and local users' stay."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000", max_presence_per_peer=3)
    sync(a, b, c)
    c.node.set_presence("sunqi", "busy")
    assert post_batch(b, c, presence={"items": [presence_item(b.user("lisi"), -60)]})[0] == 200
    made_up = [a.user(f"fake{index}") for index in range(5)]
    items = [presence_item(user, seconds=-50 + 10 * index) for index, user in enumerate(made_up)]
    status, body = post_batch(a, c, presence={"items": items})
    assert status == 200, body
    assert presence_users(c, a.id) == set(made_up[2:])  # the newest three
    assert presence_users(c, b.id) == {b.user("lisi")}
    assert c.node.presence_of(c.user("sunqi"))["status"] == "busy"
    status, _ = post_batch(a, c, presence={"items": [presence_item(a.user("zhangsan"))]})
    assert status == 200 and presence_users(c, a.id) == {made_up[3], made_up[4], a.user("zhangsan")}
    assert c.node.presence_of(a.user("zhangsan"))["status"] == "online"


def test_read_states_past_a_peers_cap_are_refused_and_nothing_of_the_batch_is_kept(network):  # noqa: F811
    """Read states for endless made-up conversations were all kept. Past the cap the batch is refused with
    quota_exceeded; updates of the read states the peer already has here, and other peers', are still taken."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000", max_read_states_per_peer=3)
    sync(a, b, c)
    kept = [read_state(a.user("zhangsan"), -10) for _ in range(3)]
    assert post_batch(a, c, read_states=kept)[0] == 200
    status, body = post_batch(a, c, read_states=[read_state(a.user("wangwu"))],
                              presence={"items": [presence_item(a.user("wangwu"))]})
    assert (status, body["error"]["code"], body["error"]["field"]) == (403, "quota_exceeded", "payload.read_states")
    validation.validate("error", body)
    assert len(read_states(c)) == 3 and presence_users(c, a.id) == set()
    moved = {**kept[0], "read_up_to_message_id": protocol.new_message_id(), "updated_at": stamp()}
    assert post_batch(a, c, read_states=[moved])[0] == 200
    assert read_states(c)[(moved["conversation_id"], moved["user_id"])] == moved["read_up_to_message_id"]
    honest = read_state(b.user("lisi"))
    assert post_batch(b, c, read_states=[honest])[0] == 200
    assert len(read_states(c)) == 4


@pytest.mark.parametrize("kind", ["presence", "read_states"])
def test_an_updated_at_ahead_of_the_receivers_clock_is_refused(network, kind):  # noqa: F811
    """An `updated_at` years ahead won every later comparison (newest wins): the user's later, true states were
    ignored until then. More than 5 minutes ahead is stale_timestamp, as the envelope's own timestamp is; a
    clock a minute fast is still taken."""
    a, b = network["a"], network["b"]
    user = a.user("zhangsan")
    if kind == "presence":
        def batch(seconds, status):
            return {"presence": {"items": [presence_item(user, seconds, status)]}}

        def seen():
            return b.node.presence_of(user)["status"]
        field = "payload.presence.items[0].updated_at"
    else:
        conversation = read_state(user)["conversation_id"]
        positions = {"busy": protocol.new_message_id(), "online": protocol.new_message_id(),
                     "away": protocol.new_message_id()}

        def batch(seconds, status):
            return {"read_states": [{**read_state(user, seconds, conversation),
                                     "read_up_to_message_id": positions[status]}]}

        def seen():
            return {v: k for k, v in positions.items()}[read_states(b)[(conversation, user)]]
        field = "payload.read_states[0].updated_at"
    status, body = post_batch(a, b, **batch(3650 * 86400, "busy"))
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "stale_timestamp", field), body
    validation.validate("error", body)
    assert post_batch(a, b, **batch(-1, "online"))[0] == 200
    assert seen() == "online"  # the true, later state is not shadowed by the future one
    assert post_batch(a, b, **batch(60, "away"))[0] == 200  # a clock a minute fast: taken
    assert seen() == "away"


def test_a_presence_last_active_ahead_of_the_clock_is_refused(network):  # noqa: F811
    """A peer's presence with last_active in 2099 was kept and shown on the page as the user's last activity:
    only updated_at was held to the receiver's clock. Refused as an updated_at ahead is (stale_timestamp). An
    earlier last_active (an idle user) is taken."""
    a, b = network["a"], network["b"]
    user = a.user("zhangsan")
    field = "payload.presence.items[0].last_active"
    status, body = post_batch(a, b, presence={"items": [{**presence_item(user), "last_active": "2099-01-01T00:00:00Z",
                                                         "updated_at": stamp()}]})
    assert (status, body["error"]["code"], body["error"]["field"]) == (400, "stale_timestamp", field), body
    validation.validate("error", body)
    assert b.node.presence_of(user) is None
    idle_since = stamp(-3600)
    assert post_batch(a, b, presence={"items": [{**presence_item(user), "last_active": idle_since}]})[0] == 200
    assert b.node.presence_of(user)["last_active"] == idle_since


def test_honest_presence_and_read_counts_pass_under_the_default_caps(network):  # noqa: F811
    """The caps a node starts with leave honest traffic as it was: presence and read counts between two nodes."""
    a, b = network["a"], network["b"]
    assert (a.node.config.max_read_states_per_peer, a.node.config.max_presence_per_peer) == (500_000, 50_000)
    sent = a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    a.node.set_presence("zhangsan", "busy")
    assert a.node.flush_ephemeral() == 1
    assert b.node.presence_of(a.user("zhangsan"))["status"] == "busy"
    assert [m.message_id for m in stored_messages(b)] == [sent.message_id]
    b.node.mark_read("lisi", sent.conversation_id)
    assert b.node.flush_ephemeral() == 1
    [entry] = a.node.history("zhangsan", sent.conversation_id)
    assert entry["read_by"] == [b.user("lisi")]
    with b.node.db() as session:
        assert session.scalar(select(func.count()).select_from(ReadState)) == 1


def test_a_config_written_before_the_caps_loads_with_the_defaults(tmp_path):
    config = NodeConfig(registry_url="https://registry.invalid", division_code="360000",
                        endpoint="https://127.0.0.1:8443")
    config.save(tmp_path)
    values = json.loads((tmp_path / NodeConfig.FILE).read_text("utf-8"))
    del values["max_read_states_per_peer"], values["max_presence_per_peer"]
    (tmp_path / NodeConfig.FILE).write_text(json.dumps(values), "utf-8")
    loaded = NodeConfig.load(tmp_path)
    assert (loaded.max_read_states_per_peer, loaded.max_presence_per_peer) == (500_000, 50_000)


def back_to_schema_1(connection: sqlite3.Connection) -> None:
    """A current node database turned back into what schema 1 left: no peer_node and no index on it, and not
    schema 3's delivered_forgotten, schema 4's joined_at, schema 5's and 6's indexes, schema 7's group_key or
    schema 8's created_hidden either."""
    for statement in ("DROP INDEX ix_read_states_peer_node", "DROP INDEX ix_presence_peer_node_updated_at",
                      "DROP INDEX ix_messages_sender_address", "DROP INDEX ix_messages_to",
                      "DROP INDEX ix_outbox_message_id", "DROP INDEX ix_outbox_group_requests",
                      "ALTER TABLE outbox DROP COLUMN group_key",
                      "ALTER TABLE read_states DROP COLUMN peer_node", "ALTER TABLE presence DROP COLUMN peer_node",
                      "ALTER TABLE messages DROP COLUMN delivered_forgotten",
                      "ALTER TABLE groups DROP COLUMN joined_at", "ALTER TABLE groups DROP COLUMN created_hidden",
                      "UPDATE settings SET value = '1' WHERE key = 'schema_version'"):
        connection.execute(statement)


def test_a_database_of_schema_1_gains_who_reported_each_entry_in_place(tmp_path):
    """A node's data directory is its identity: the one schema step so far is taken in place, each kept read
    state and presence entry counted against its user's node, not refused as a database of another version."""
    path = tmp_path / "node.sqlite3"
    open_database(path).kw["bind"].dispose()
    with sqlite3.connect(path) as connection:
        back_to_schema_1(connection)
        connection.execute("INSERT INTO presence VALUES ('lisi@44000000002025000001', 'online', 'pc', ?, ?)",
                           (stamp(), stamp()))
        connection.execute("INSERT INTO read_states VALUES ('s:0123456789abcdef0123456789abcdef', "
                           "'zhangsan@36000000002025000001', ?, 0, ?)", (protocol.new_message_id(), stamp()))
    connection.close()
    factory = open_database(path)
    with factory() as session:
        assert session.get(Setting, "schema_version").value == SCHEMA_VERSION == "8"
        assert [p.peer_node for p in session.scalars(select(Presence))] == ["44000000002025000001"]
        assert [r.peer_node for r in session.scalars(select(ReadState))] == ["36000000002025000001"]
        indexes = set(session.scalars(select(text("name")).select_from(text("sqlite_master"))
                                      .where(text("type = 'index'"))))
    assert {"ix_read_states_peer_node", "ix_presence_peer_node_updated_at", "ix_messages_sender_address",
            "ix_messages_to", "ix_outbox_message_id"} <= indexes
    factory.kw["bind"].dispose()
    open_database(path).kw["bind"].dispose()  # and opens as the current schema from then on


def test_an_upgrade_from_schema_1_interrupted_part_way_opens(tmp_path):
    """An older release added each column outside its transaction: a database left with read_states' new
    column (its rows not yet filled) but not presence's, still version 1, takes the rest of the step."""
    path = tmp_path / "node.sqlite3"
    open_database(path).kw["bind"].dispose()
    with sqlite3.connect(path) as connection:
        back_to_schema_1(connection)
        connection.execute("INSERT INTO read_states VALUES ('s:0123456789abcdef0123456789abcdef', "
                           "'zhangsan@36000000002025000001', ?, 0, ?)", (protocol.new_message_id(), stamp()))
        connection.execute("ALTER TABLE read_states ADD COLUMN peer_node VARCHAR(20) NOT NULL DEFAULT ''")
    connection.close()
    factory = open_database(path)
    with factory() as session:
        assert session.get(Setting, "schema_version").value == SCHEMA_VERSION
        assert [r.peer_node for r in session.scalars(select(ReadState))] == ["36000000002025000001"]
        assert session.scalars(select(func.count()).select_from(Presence)).one() == 0
    factory.kw["bind"].dispose()


def test_an_upgrade_that_fails_part_way_leaves_the_database_as_it_was(tmp_path):
    """The steps and the version run in one transaction: a failure after a column was added (here a trigger
    refusing the fill of presence's) leaves schema 1 whole, and the next open, once the cause is gone, upgrades."""
    path = tmp_path / "node.sqlite3"
    open_database(path).kw["bind"].dispose()
    with sqlite3.connect(path) as connection:
        back_to_schema_1(connection)
        connection.execute("CREATE TRIGGER refuse BEFORE UPDATE ON presence BEGIN SELECT RAISE(ABORT, 'refused'); END")
        connection.execute("INSERT INTO presence VALUES ('lisi@44000000002025000001', 'online', 'pc', ?, ?)",
                           (stamp(), stamp()))
    connection.close()

    def schema() -> tuple:
        with sqlite3.connect(path) as connection:
            version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
            columns = {table: [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
                       for table in ("read_states", "presence")}
        connection.close()
        return version, "peer_node" in columns["read_states"], "peer_node" in columns["presence"]

    with pytest.raises(Exception, match="refused"):
        open_database(path)
    assert schema() == ("1", False, False)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP TRIGGER refuse")
    connection.close()
    open_database(path).kw["bind"].dispose()
    assert schema() == (SCHEMA_VERSION, True, True)
