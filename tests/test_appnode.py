"""The reference application node against a real management node, over real mutual TLS (issue 7).

Each test joins two or three nodes through admission, certificates and routes (SPEC §3-§5), then speaks
Appendix A between them. Bad input, each a test: a forged sender node, a certificate not in the table, a
replayed message_id, a stale timestamp, a schema violation, a PNG that is really an executable, a file
over the limit, a download by a node outside the conversation.
"""

from __future__ import annotations

import base64
import hashlib
import json
import multiprocessing
import sqlite3
import struct
import threading
import zlib
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from sqlalchemy import select

from app.admission import nodes
from app.appnode import protocol, validation
from app.appnode.cli import cli
from app.appnode.config import CAPABILITIES
from app.appnode.node import Node
from app.appnode.protocol import (
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    SchemaViolation,
    UnknownPeer,
    UnsupportedMediaType,
)
from app.appnode.registry import RegistryError
from app.appnode.store import Message, Received, Setting, StoredFile
from app.appnode.store_schema import SCHEMA_VERSION, open_database
from app.extensions import db
from app.pki import own_keys
from app.pki import service as pki
from tests.appnode_harness import ServedNode, raw_post
from tests.factories import make_csr, make_key
from tests.test_sessions import people  # noqa: F401 (fixture)

ELF = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 120


def png(width: int = 3, height: int = 2) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


GIF = (b"GIF89a\x02\x00\x02\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00,\x00\x00\x00\x00\x02\x00\x02\x00"
       b"\x00\x02\x02D\x01\x00;")


def adts(duration_ms: int, rate_index: int = 4, blocks: int = 1) -> bytes:
    """An AAC-LC ADTS voice clip as near `duration_ms` long as whole frames go: frames of `blocks` raw data blocks
    of 1024 samples each at the sampling-frequency index `rate_index` (4: 44.1 kHz, 23.2 ms a block)."""
    rate = (96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350)[rate_index]
    frames = max(1, round(duration_ms * rate / (1000 * 1024 * blocks)))
    payload = b"\x21\x00\x49\x90\x02\x19\x00\x23\x80"
    length = 7 + len(payload)
    header = bytes([0xFF, 0xF1, (1 << 6) | (rate_index << 2), (2 << 6) | (length >> 11), (length >> 3) & 0xFF,
                    ((length & 7) << 5) | 0x1F, 0xFC | (blocks - 1)])
    return (header + payload) * frames


PDF = b"%PDF-1.7\n" + b"0" * 3000 + b"\n%%EOF\n"


@pytest.fixture
def network(app, live_server, people, tmp_path):  # noqa: F811
    minister, _ = people
    served = []

    def join(division: str, **config) -> ServedNode:
        node = ServedNode(tmp_path, live_server, division, minister, **config).start()
        served.append(node)
        return node

    a, b = join("360000"), join("440000")
    for node in (a, b):
        node.node.sync_routes()
    yield {"a": a, "b": b, "join": join, "minister": minister}
    for node in served:
        node.stop()


def settle(*served: ServedNode) -> None:
    """What each node's loop does between requests: deliver due envelopes (relays, announcements) until quiet."""
    for _ in range(10):
        if not sum(node.node.deliver()["delivered"] for node in served):
            return


def sync(*served: ServedNode) -> None:
    for node in served:
        node.node.sync_routes()


def sync_until(served: ServedNode, check, what: str) -> None:
    """Pull until `check()` holds: on PostgreSQL the management node's serving process hears of a new
    version by NOTIFY, a moment after the commit, so one pull straight after it may get the table before."""
    from tests.appnode_processes import eventually

    def pulled() -> bool:
        served.node.sync_routes()
        return check()

    eventually(pulled, timeout=10, interval=0.05, what=what)


def history(node: ServedNode, user: str, conversation_id: str) -> list[dict]:
    return [entry["message"].document for entry in node.node.history(user, conversation_id)]


def stored_messages(node: ServedNode) -> list[Message]:
    with node.node.db() as session:
        return list(session.scalars(select(Message)))


def text_envelope(sender: ServedNode, receiver: ServedNode, text: str = "你好", **changes) -> dict:
    message = {"message_id": protocol.new_message_id(), "chat_type": "single", "conversation_id": "",
               "sender": {"user_id": "zhangsan", "user_name": "张三", "node_id": sender.id, "org_code": "360000",
                          "org_name": "江西省公安厅", "client_type": "pc"},
               "to": receiver.user("lisi"), "msg_type": "text", "content": {"text": text},
               "send_time": protocol.format_timestamp(datetime.now(UTC))}
    message.update(changes.pop("message", {}))
    message["conversation_id"] = protocol.conversation_id_for(message)
    envelope = protocol.make_envelope(from_node=sender.id, to_node=receiver.id, type="message", payload=message)
    envelope.update(changes)
    return envelope


# ---- joining -----------------------------------------------------------------------------------------------

def test_a_joined_node_holds_its_certificate_routes_and_serves_health_over_tls(network):
    a, b = network["a"], network["b"]
    assert a.id.startswith("36000000002025") and b.id.startswith("44000000002025")
    assert oct((a.dir / "tls" / "node.key").stat().st_mode & 0o777) == "0o600"
    table = a.node.routes.table
    listed = {entry["node_id"]: entry for entry in table["nodes"]}
    assert listed[a.id]["cert_sha256"] == a.node.identity.fingerprint()
    assert listed[b.id]["endpoint"] == f"https://127.0.0.1:{b.port}"
    import ssl
    import urllib.request
    context = ssl.create_default_context(cafile=str(a.node.identity.bundle_file))
    with urllib.request.urlopen(f"https://127.0.0.1:{b.port}/api/v1/health", context=context,
                                timeout=30) as response:
        health = json.loads(response.read())
    validation.validate("health", health)
    assert health["node_id"] == b.id


def test_a_rejected_application_is_reported_and_the_node_does_not_join(app, live_server, people, tmp_path):  # noqa: F811
    from app.admission import applications
    from app.appnode.config import NodeConfig
    from app.errors import Conflict
    from tests.appnode_harness import enroll

    minister, _ = people
    node = Node.init(tmp_path / "n", NodeConfig(registry_url=live_server, division_code="360000",
                                                endpoint="https://127.0.0.1:9"))
    node.apply(enroll("360000", minister))
    applications.reject(applications.get(node.setting("application_id")), "unknown vendor", by=minister)
    db.session.commit()
    with pytest.raises(Conflict, match="unknown vendor"):
        node.await_approval(timeout=5, interval=0.05)
    assert not node.joined


def test_a_node_whose_application_answer_was_lost_applies_again_and_joins(app, live_server, people, tmp_path):  # noqa: F811
    """The management node stored the application but its 201 never arrived: the node kept no application id.
    `apply` again with the same token is answered with that application, and the node goes on to join."""
    from app.appnode.config import NodeConfig
    from app.appnode.registry import Identity
    from tests.appnode_harness import approve_pending, enroll

    minister, _ = people
    node = Node.init(tmp_path / "n", NodeConfig(registry_url=live_server, division_code="360000",
                                                endpoint="https://127.0.0.1:9"))
    token = enroll("360000", minister)
    lost = node.registry.apply(token, node.information(), Identity.csr_for(node.identity.key()))
    assert node.setting("application_id") is None
    assert node.apply(token) == lost
    approve_pending(node, minister)
    assert node.await_approval(timeout=5, interval=0.05) == node.node_id and node.joined


# ---- single chat, idempotency, files ---------------------------------------------------------------------------

def test_text_single_chat_is_delivered_once_and_a_replay_is_acknowledged_as_duplicate(network):
    a, b = network["a"], network["b"]
    message = a.node.send_text("zhangsan", b.user("lisi"), "下午三点开会")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "下午三点开会"
    assert message.conversation_id == protocol.single_chat_conversation_id(a.user("zhangsan"), b.user("lisi"))

    replay = a.node.outbox()[0].envelope
    status, ack = raw_post(a.node, b, "message", protocol.restamp(replay))
    assert status == 200 and ack["status"] == "duplicate"
    validation.validate("ack", ack)
    assert len(stored_messages(b)) == 1
    with b.node.db() as session:
        assert session.scalar(select(Received).where(Received.message_id == message.message_id)) is not None


def test_image_voice_file_and_sticker_are_downloaded_from_the_origin_and_checked(network):
    a, b = network["a"], network["b"]
    lisi = b.user("lisi")
    sent = {
        "image": a.node.send_file("zhangsan", lisi, png(), "image", file_name="现场.png"),
        "voice": a.node.send_file("zhangsan", lisi, adts(1200), "voice", duration_ms=1200),
        "file": a.node.send_file("zhangsan", lisi, PDF, "file", file_name="协查通报.pdf"),
        "sticker": a.node.send_file("zhangsan", lisi, GIF, "sticker", file_name="ok.gif",
                                    sticker={"package_id": "jingwu", "sticker_id": "ok", "alt_text": "[好的]"}),
    }
    assert sent["image"].document["content"]["width"] == 3 and sent["image"].document["content"]["height"] == 2
    expected = {"image": png(), "voice": adts(1200), "file": PDF, "sticker": GIF}
    for kind, message in sent.items():
        stored = b.node.download("lisi", message.message_id)
        assert b.node.file_bytes(stored) == expected[kind]
        assert stored.sha256 == hashlib.sha256(expected[kind]).hexdigest()
    received = {m.msg_type for m in stored_messages(b)}
    assert received == {"image", "voice", "file", "sticker"}


def test_a_ranged_download_answers_206_with_the_slice_and_416_with_the_size_past_the_end(network):
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="a.pdf")
    request = protocol.make_envelope(from_node=b.id, to_node=a.id, type="download", payload={
        "file_id": message.document["content"]["file_id"], "message_id": message.message_id,
        "range": {"offset": 5, "length": 10}})
    from app.appnode.transport import PeerPool, client_context
    who = b.node.identity
    pool = PeerPool(lambda: client_context(who.cert_file, who.key_file, who.bundle_file))
    response = pool.post(f"https://127.0.0.1:{a.port}", "/api/v1/federation/download",
                         json.dumps(request).encode(), pin=None)
    assert response.status == 206 and response.body == PDF[5:15]
    assert response.header("Content-Range") == f"bytes 5-14/{len(PDF)}"
    assert response.header("X-Content-SHA256") == hashlib.sha256(PDF[5:15]).hexdigest()
    request["payload"]["range"] = {"offset": len(PDF)}
    request["message_id"] = protocol.new_message_id()
    response = pool.post(f"https://127.0.0.1:{a.port}", "/api/v1/federation/download",
                         json.dumps(protocol.restamp(request)).encode(), pin=None)
    assert response.status == 416 and json.loads(response.body)["error"]["code"] == "range_not_satisfiable"
    assert response.header("Content-Range") == f"bytes */{len(PDF)}"  # §7.2: the size, for the next range
    # JSON Schema counts 5.0 and 1e1 as integers: such a range was let through and answered 500, to be retried.
    request["payload"]["range"] = {"offset": 5.0, "length": 1e1}
    request["message_id"] = protocol.new_message_id()
    response = pool.post(f"https://127.0.0.1:{a.port}", "/api/v1/federation/download",
                         json.dumps(protocol.restamp(request)).encode(), pin=None)
    assert response.status == 206 and response.body == PDF[5:15]
    assert response.header("Content-Range") == f"bytes 5-14/{len(PDF)}"


# ---- groups, read counts, presence -----------------------------------------------------------------------------

def test_a_group_across_two_nodes_with_invite_message_read_counts_kick_and_quit(network):
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "治安专班", [a.user("wangwu"), b.user("lisi")])
    b_groups = b.node.groups("lisi")
    assert [g.address for g in b_groups] == [group.address] and b_groups[0].seq == 1

    b.node.group_operation("lisi", group.address, "invite", [b.user("zhaoliu")])  # a member of B asks home A
    settle(a, b)
    replica = b.node.groups("zhaoliu")[0]
    assert replica.seq == 2 and b.user("zhaoliu") in replica.members

    sent = b.node.send_text("lisi", group.address, "收到")  # B → home A → relayed to nobody else (A has the rest)
    a.node.send_text("zhangsan", group.address, "大家好")  # home A → B
    settle(a, b)
    conversation = f"g:{group.address}"
    assert [m["content"]["text"] for m in history(b, "zhaoliu", conversation)] == ["收到", "大家好"]
    assert [m["content"]["text"] for m in history(a, "wangwu", conversation)] == ["收到", "大家好"]

    a.node.mark_read("wangwu", conversation)
    a.node.flush_ephemeral()
    by_b = {e["message"].message_id: e for e in b.node.history("lisi", conversation)}
    assert a.user("wangwu") in by_b[sent.message_id]["read_by"]
    b.node.mark_read("zhaoliu", conversation)
    b.node.flush_ephemeral()  # to home A, which relays to the member nodes but B
    a.node.flush_ephemeral()
    by_a = {e["message"].message_id: e for e in a.node.history("zhangsan", conversation)}
    assert set(by_a[sent.message_id]["read_by"]) == {a.user("wangwu"), b.user("zhaoliu")}
    assert [c["unread"] for c in a.node.conversations("zhangsan")] == [1]

    a.node.group_operation("zhangsan", group.address, "kick", [b.user("zhaoliu")])
    settle(a, b)
    assert b.node.groups("zhaoliu") == [] and b.node.groups("lisi")[0].seq == 3
    b.node.group_operation("lisi", group.address, "quit")
    settle(a, b)
    assert b.node.groups() == []  # no user of B left: the replica is gone
    assert a.node.groups("zhangsan")[0].members == [a.user("zhangsan"), a.user("wangwu")]
    after_quit = text_envelope(b, a, message={"chat_type": "group", "to": group.address,
                                              "sender": {**text_envelope(b, a)["payload"]["sender"],
                                                         "user_id": "lisi", "node_id": b.id}})
    status, body = raw_post(b.node, a, "message", after_quit)  # home A no longer lets lisi speak
    assert status == 403 and body["error"]["code"] == "not_a_participant"


def test_group_permissions_are_the_home_nodes(network):
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    with pytest.raises(PermissionDenied, match="owner"):  # not the owner: the home node's refusal is raised
        b.node.group_operation("lisi", group.address, "kick", [a.user("zhangsan")])
    # The refusal is the answer; like a refused single message, the request is not kept as a failed row
    assert [row for row in b.node.outbox() if row.kind == "group_op"] == []
    for op, targets, info in (("update_info", (), {"name": "改名"}), ("transfer_owner", [b.user("lisi")], None)):
        with pytest.raises(PermissionDenied, match=f"home node {a.id}.*not kept"):
            b.node.group_operation("lisi", group.address, op, targets, info)
    assert b.node.outbox() == [] and a.node.groups("zhangsan")[0].seq == 1


def test_presence_reaches_the_nodes_that_share_a_conversation(network):
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    a.node.set_presence("zhangsan", "busy", "android")
    assert a.node.flush_ephemeral() == 1
    seen = b.node.presence_of(a.user("zhangsan"))
    assert seen["status"] == "busy" and seen["client_type"] == "android"
    assert b.node.presence_of(a.user("wangwu")) is None  # shares nothing with B


# ---- delivery under failure -----------------------------------------------------------------------------------

def test_messages_wait_in_the_outbox_while_the_peer_is_down_and_survive_a_restart(network):
    a, b = network["a"], network["b"]
    b.stop()
    message = a.node.send_text("zhangsan", b.user("lisi"), "稍后送达")
    row = a.node.outbox()[0]
    assert row.state == "pending" and row.attempts == 1 and "ConnectionRefused" in row.last_error
    assert row.next_attempt_at > datetime.now(UTC)
    restarted = Node(a.dir)  # a new process over the same data directory
    b.start()
    assert restarted.retry_now() == 1 and restarted.deliver()["delivered"] == 1
    assert history(b, "lisi", message.conversation_id)[0]["message_id"] == message.message_id



def test_a_delivered_message_still_reads_delivered_once_housekeeping_forgot_its_envelopes(network):
    """The delivery state was worked out from the outbox rows alone, and housekeeping deletes delivered rows
    after 7 days: a delivered message then read "—", as a received one does, and history --json "delivery": null.
    Whatever else a message's rows say (pending, skipped) is kept, and so is no state where there never was one."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000", capabilities=[cap for cap in CAPABILITIES if cap != "voice"])
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "三地", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    sent = {"single": a.node.send_text("zhangsan", b.user("lisi"), "收到请回复"),
            "local": a.node.send_text("zhangsan", a.user("wangwu"), "本地"),
            "group": a.node.send_text("zhangsan", group.address, "集合"),
            "skipped by C": a.node.send_file("zhangsan", group.address, adts(900), "voice", duration_ms=900),
            "from a member": b.node.send_text("lisi", group.address, "到")}
    settle(a, b, c)
    c.stop()
    sent["C down"] = a.node.send_text("zhangsan", group.address, "C 未收到")  # delivered to B, pending to C

    def delivery() -> dict:
        seen = {}
        for served, user in ((a, "zhangsan"), (b, "lisi")):
            for conversation in served.node.conversations(user):
                for entry in served.node.history(user, conversation["conversation_id"]):
                    seen[served.id, entry["message"].message_id] = entry["delivery"]
        return {(node, name): seen[node, message.message_id] for name, message in sent.items()
                for node in (a.id, b.id) if (node, message.message_id) in seen}

    before = delivery()
    assert before == {
        (a.id, "single"): "delivered", (b.id, "single"): None,  # received: no state
        (a.id, "local"): None,  # to a user of this node: no envelope, no state
        (a.id, "group"): "delivered", (b.id, "group"): None,
        (a.id, "skipped by C"): "partial", (b.id, "skipped by C"): None,
        (a.id, "from a member"): None, (b.id, "from a member"): "delivered",  # relayed: no state; sent
        (a.id, "C down"): "pending", (b.id, "C down"): None}
    for served in (a, b):
        served.node.forget_delivered(older_than=timedelta(seconds=-1))  # what the loop does 7 days later
        assert "delivered" not in {row.state for row in served.node.outbox()}
    assert delivery() == before



def test_a_database_of_schema_2_gains_the_mark_of_forgotten_deliveries_in_place(tmp_path):
    """Schema 3 marks a message whose delivered envelopes housekeeping deleted; a node's data directory is its
    identity, so a database of schema 2 takes the column in place, its messages unmarked, as they read before."""
    path = tmp_path / "node.sqlite3"
    open_database(path).kw["bind"].dispose()
    message_id = protocol.new_message_id()
    with sqlite3.connect(path) as connection:  # as schema 2 left it, with a message
        connection.execute("ALTER TABLE messages DROP COLUMN delivered_forgotten")
        connection.execute("UPDATE settings SET value = '2' WHERE key = 'schema_version'")
        connection.execute("INSERT INTO messages VALUES (?, 's:0123456789abcdef0123456789abcdef', 'single', "
                           "'zhangsan@36000000002025000001', '36000000002025000001', "
                           "'lisi@44000000002025000001', 'text', '{}', '2026-01-01T00:00:00.000Z', "
                           "'2026-01-01 00:00:00.000000', '[]')", (message_id,))
    connection.close()
    factory = open_database(path)
    with factory.begin() as session:
        assert session.get(Setting, "schema_version").value == SCHEMA_VERSION == "8"
        assert session.get(Message, message_id).delivered_forgotten is False
        session.get(Message, message_id).delivered_forgotten = True
    with factory() as session:
        assert session.get(Message, message_id).delivered_forgotten is True
    factory.kw["bind"].dispose()
    open_database(path).kw["bind"].dispose()  # and opens as the current schema from then on


def _as_schema_7(path) -> None:
    """A database (a fresh one if there is none) taken back to what schema 7 left: no created_hidden in the
    groups, version 7."""
    open_database(path).kw["bind"].dispose()
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE groups DROP COLUMN created_hidden")
        connection.execute("UPDATE settings SET value = '7' WHERE key = 'schema_version'")
    connection.close()


def _as_schema_6(path) -> None:
    """A database (a fresh one if there is none) taken back to what schema 6 left: no group_key in the outbox
    nor its index (nor schema 8's created_hidden), version 6."""
    _as_schema_7(path)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX IF EXISTS ix_outbox_group_requests")
        connection.execute("ALTER TABLE outbox DROP COLUMN group_key")
        connection.execute("UPDATE settings SET value = '6' WHERE key = 'schema_version'")
    connection.close()


def _as_schema_5(path) -> None:
    """A database (a fresh one if there is none) taken back to what schema 5 left: no index on the outbox's
    message_id (nor schema 7's group_key), version 5."""
    _as_schema_6(path)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX IF EXISTS ix_outbox_message_id")
        connection.execute("UPDATE settings SET value = '5' WHERE key = 'schema_version'")
    connection.close()


def _as_schema_4(path) -> None:
    """A database (a fresh one if there is none) taken back to what schema 4 left: no index on the messages'
    sender nor recipient (nor schema 6's on the outbox), version 4."""
    _as_schema_5(path)
    with sqlite3.connect(path) as connection:
        connection.execute("DROP INDEX ix_messages_sender_address")
        connection.execute("DROP INDEX ix_messages_to")
        connection.execute("UPDATE settings SET value = '4' WHERE key = 'schema_version'")
    connection.close()


def _as_schema_3(path) -> None:
    """A database (a fresh one if there is none) taken back to what schema 3 left: no joined_at (nor schema 5's
    indexes), version 3."""
    _as_schema_4(path)
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE groups DROP COLUMN joined_at")
        connection.execute("UPDATE settings SET value = '3' WHERE key = 'schema_version'")
    connection.close()


def _as_schema_2(path) -> None:
    """A fresh database taken back to what schema 2 left: no delivered_forgotten (nor what schemas 4 and 5
    added), version 2."""
    _as_schema_3(path)
    with sqlite3.connect(path) as connection:
        connection.execute("ALTER TABLE messages DROP COLUMN delivered_forgotten")
        connection.execute("UPDATE settings SET value = '2' WHERE key = 'schema_version'")
    connection.close()


def _schema_of(path) -> tuple[str, list[str]]:
    """The schema version, and the columns of the tables the steps since schema 2 changed (messages, groups)."""
    with sqlite3.connect(path) as connection:
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
        columns = [row[1] for table in ("messages", "groups")
                   for row in connection.execute(f"PRAGMA table_info({table})")]
    connection.close()
    return version, columns


def _open_after(barrier, path, results) -> None:
    """One process of the race below: the server and a CLI command opening the node's database together."""
    barrier.wait()
    try:
        open_database(path).kw["bind"].dispose()
        results.put("ok")
    except Exception as error:  # noqa: BLE001 (reported to the parent, which asserts on it)
        results.put(f"{type(error).__name__}: {error}".splitlines()[0])


def test_processes_opening_a_database_of_schema_2_together_upgrade_it_once(tmp_path):
    """The server and a CLI command may open a node just upgraded at the same moment: one takes the step,
    the others wait for its write lock and then find schema 3, none fails on a column already added."""
    context = multiprocessing.get_context("fork")
    outcomes = []
    for trial in range(10):
        path = tmp_path / f"node-{trial}.sqlite3"
        _as_schema_2(path)
        barrier, results = context.Barrier(3), context.Queue()
        processes = [context.Process(target=_open_after, args=(barrier, path, results)) for _ in range(3)]
        for process in processes:
            process.start()
        outcomes += [results.get(timeout=120) for _ in processes]
        for process in processes:
            process.join()
        version, columns = _schema_of(path)
        assert version == SCHEMA_VERSION and columns.count("delivered_forgotten") == 1
        assert columns.count("joined_at") == 1
    assert [outcome for outcome in outcomes if outcome != "ok"] == []


def test_a_brand_new_database_opened_while_another_opener_writes_its_first_page_waits_for_it(tmp_path):
    """Two processes opening a brand-new node database together failed about once in 270 with "database is
    locked": while the first writes the file's first page (still in rollback-journal mode, under its write
    lock), SQLite refuses the second's switch to WAL at once, without waiting out the busy timeout."""
    path = tmp_path / "node.sqlite3"
    first = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    first.execute("BEGIN IMMEDIATE")  # the other opener, part way through its first write
    first.execute("CREATE TABLE being_written (x)")
    released = threading.Timer(0.3, first.execute, args=("COMMIT",))
    released.start()
    try:
        open_database(path).kw["bind"].dispose()
    finally:
        released.join()
        first.close()
    version, columns = _schema_of(path)
    assert version == SCHEMA_VERSION and "delivered_forgotten" in columns
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()


def _opens_after_a_step_cut_short(path, as_older, step: str, column: str) -> None:
    """A database turned back by `as_older`, then given `step` (the upgrade's column) but not the version, as an
    upgrade cut short leaves it: it opens, takes the rest of the step, and has the column once."""
    as_older(path)
    with sqlite3.connect(path) as connection:
        connection.execute(step)
    connection.close()
    open_database(path).kw["bind"].dispose()
    version, columns = _schema_of(path)
    assert version == SCHEMA_VERSION and columns.count(column) == 1


def test_an_upgrade_to_schema_3_interrupted_after_its_column_opens(tmp_path):
    """A database left with the new column but still version 2 (an upgrade cut short by an older release,
    which added the column outside its transaction) takes the rest of the step instead of never opening."""
    _opens_after_a_step_cut_short(
        tmp_path / "node.sqlite3", _as_schema_2,
        "ALTER TABLE messages ADD COLUMN delivered_forgotten BOOLEAN NOT NULL DEFAULT 0", "delivered_forgotten")


def test_an_upgrade_to_schema_8_interrupted_after_its_column_opens(tmp_path):
    """A database left with schema 8's column but still version 7 (an upgrade cut short) takes the rest of the
    step instead of failing on a column already there."""
    _opens_after_a_step_cut_short(tmp_path / "node.sqlite3", _as_schema_7,
                                  "ALTER TABLE groups ADD COLUMN created_hidden BOOLEAN NOT NULL DEFAULT 0",
                                  "created_hidden")


def test_a_database_of_schema_3_gains_when_each_member_joined_in_place(network):
    """Schema 4 records when each group member was last added: a member sees the group's messages from then on
    (docs/protocol.md §8.9). A node's data directory is its identity, so a database of schema 3 takes the column
    in place; its members, whose joining nobody recorded, keep seeing everything, as they did."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    conversation = f"g:{group.address}"

    def texts(user: str) -> list[str]:
        return [document["content"]["text"] for document in history(a, user, conversation)]

    a.node.send_text("zhangsan", group.address, "早")
    a.node.group_operation("zhangsan", group.address, "invite", [a.user("wangwu")])
    a.node.send_text("zhangsan", group.address, "晚")
    settle(a, b)
    assert texts("wangwu") == ["晚"]
    _as_schema_3(a.dir / "node.db")  # the node's database as schema 3 left it, under the idle node
    open_database(a.dir / "node.db").kw["bind"].dispose()  # what the next start of the node does
    version, columns = _schema_of(a.dir / "node.db")
    assert version == SCHEMA_VERSION == "8" and columns.count("joined_at") == 1
    assert texts("wangwu") == ["早", "晚"]
    assert [(row["unread"], row["count"]) for row in a.node.conversations("wangwu")] == [(2, 2)]
    assert [entry["unread_by"] for entry in a.node.history("zhangsan", conversation)] == [2, 2]
    a.node.group_operation("zhangsan", group.address, "kick", [a.user("wangwu")])
    a.node.group_operation("zhangsan", group.address, "invite", [a.user("wangwu")])
    a.node.send_text("zhangsan", group.address, "再")
    settle(a, b)
    assert texts("wangwu") == ["再"]  # a member added since the upgrade: from when they were
    assert texts("zhangsan") == ["早", "晚", "再"]


def test_an_upgrade_to_schema_4_interrupted_after_its_column_opens(tmp_path):
    """A database left with schema 4's column but still version 3 (an upgrade cut short) takes the rest of the
    step instead of failing on a column already there."""
    _opens_after_a_step_cut_short(tmp_path / "node.sqlite3", _as_schema_3,
                                  "ALTER TABLE groups ADD COLUMN joined_at JSON NOT NULL DEFAULT '{}'", "joined_at")


# ---- trust and bad input, each a test ---------------------------------------------------------------------------

def test_a_forged_sender_node_is_refused(network):
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    # C's certificate, but the envelope claims to come from A
    status, body = raw_post(c.node, b, "message", text_envelope(a, b), identity_of=c.node)
    assert status == 403 and body["error"]["code"] == "certificate_mismatch"
    # A's own envelope speaking for a user of C
    envelope = text_envelope(a, b, message={"sender": {"user_id": "sunqi", "user_name": "孙七", "node_id": c.id,
                                                         "org_code": "110000", "org_name": "北京市公安局",
                                                         "client_type": "pc"}})
    status, body = raw_post(a.node, b, "message", envelope)
    assert status == 403 and body["error"]["code"] == "sender_mismatch"
    assert stored_messages(b) == []


def test_a_certificate_whose_fingerprint_is_not_in_the_table_is_refused(network):
    a, b = network["a"], network["b"]
    presented = a.node.identity.fingerprint()
    pki.renew(nodes.get(a.id), make_csr(make_key()), by=network["minister"])  # an admin renews A's certificate
    db.session.commit()
    sync_until(b, lambda: b.node.routes.entry(a.id)["cert_sha256"] != presented,
               "B's table to list A's new certificate")
    status, body = raw_post(a.node, b, "message", text_envelope(a, b))  # A still presents the old, valid one
    assert status == 403 and body["error"]["code"] == "certificate_mismatch"
    assert stored_messages(b) == []


def test_an_unknown_or_suspended_node_is_refused_after_the_next_table(network):
    a, b = network["a"], network["b"]
    nodes.suspend(nodes.get(a.id), "drill", by=network["minister"])
    db.session.commit()
    sync_until(b, lambda: b.node.routes.entry(a.id) is None, "B's table to drop the suspended A")
    with pytest.raises(RegistryError):  # A itself can no longer open a session, and its status says why
        a.node.sync_routes()
    status = json.loads(CliRunner().invoke(cli, ["--data", str(a.dir), "--json", "status"]).output)
    assert status["registry_problem"].startswith("node_suspended")
    text = CliRunner().invoke(cli, ["--data", str(a.dir), "status"]).output  # for a person: lines, not JSON
    assert text.startswith(f"node {a.id}\nrouting table v") and "\nproblem: node_suspended" in text
    message = a.node.send_text("zhangsan", b.user("lisi"), "被暂停后")
    row = a.node.outbox()[0]
    assert row.state == "pending" and "unknown_peer" in row.last_error  # kept for retries within the hour
    assert stored_messages(b) == []

    nodes.resume(nodes.get(a.id), "drill over", by=network["minister"])
    db.session.commit()
    sync_until(b, lambda: b.node.routes.entry(a.id) is not None, "B's table to list the resumed A")
    a.node.retry_now()
    assert a.node.deliver()["delivered"] == 1
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "被暂停后"
    a.node.sync_routes()
    assert json.loads(CliRunner().invoke(cli, ["--data", str(a.dir), "--json", "status"]).output)[
        "registry_problem"] is None


def test_a_stale_timestamp_is_refused(network):
    a, b = network["a"], network["b"]
    envelope = text_envelope(a, b)
    envelope["timestamp"] = protocol.format_timestamp(datetime.now(UTC) - timedelta(minutes=6))
    status, body = raw_post(a.node, b, "message", envelope)
    assert status == 400 and body["error"]["code"] == "stale_timestamp"
    assert stored_messages(b) == []


@pytest.mark.parametrize("mutate, field", [
    (lambda e: e["payload"]["content"].update(text=""), "payload.content.text"),
    (lambda e: e["payload"].update(msg_type="video"), "payload.msg_type"),
    (lambda e: e.update(extra=1), "extra"),
    # a replay under the same id with a newline after it: Python's `$` matched before it, and it was stored again
    (lambda e: (e.update(message_id=e["message_id"] + "\n"), e["payload"].update(message_id=e["message_id"])),
     "message_id"),
    (lambda e: e["payload"]["sender"].update(user_id="zhangsan\n"), "payload.sender.user_id"),
])
def test_a_payload_that_fails_its_schema_is_refused(network, mutate, field):
    a, b = network["a"], network["b"]
    envelope = text_envelope(a, b)
    mutate(envelope)
    status, body = raw_post(a.node, b, "message", envelope)
    assert status == 422 and body["error"]["code"] == "schema_violation"
    assert body["error"]["field"] == field
    assert stored_messages(b) == []


def test_bodies_that_are_not_json_objects_are_refused(network):
    a, b = network["a"], network["b"]
    assert raw_post(a.node, b, "message", b"[1, 2]")[1]["error"]["code"] == "invalid_json"
    assert raw_post(a.node, b, "message", b'{"a": 1, "a": 2}')[1]["error"]["code"] == "invalid_json"
    status, body = raw_post(a.node, b, "message", b"{}", content_type="text/plain")
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    status, body = raw_post(a.node, b, "message", b"{" + b" " * (1024 * 1024) + b"}")
    assert status == 413


def test_a_png_that_is_really_an_executable_is_refused(network):
    a, b = network["a"], network["b"]
    with pytest.raises(UnsupportedMediaType, match="executable"):
        a.node.send_file("zhangsan", b.user("lisi"), ELF, "image", file_name="photo.png")
    with pytest.raises(UnsupportedMediaType, match="executable"):
        a.node.send_file("zhangsan", b.user("lisi"), ELF, "file", file_name="report.pdf")
    assert a.node.outbox() == []
    # a peer's image whose inline thumbnail is an executable declared as PNG
    envelope = text_envelope(a, b, message={"msg_type": "image", "content": {
        "file_id": "f-1", "format": "PNG", "size": 100, "width": 1, "height": 1, "sha256": "0" * 64,
        "thumbnail": {"format": "PNG", "width": 1, "height": 1, "data": base64.b64encode(ELF).decode()}}})
    status, body = raw_post(a.node, b, "message", envelope)
    assert status == 415 and body["error"]["code"] == "unsupported_media_type"
    assert stored_messages(b) == []


def test_a_downloaded_file_that_is_not_what_it_claims_is_discarded(network):
    a, b = network["a"], network["b"]
    picture = png()
    message = a.node.send_file("zhangsan", b.user("lisi"), picture, "image", file_name="p.png")
    stored = next(f for f in (a.dir / "files" / a.id).iterdir())
    stored.write_bytes(ELF.ljust(len(picture), b"\0")[:len(picture)])  # swapped behind its back, same size
    with pytest.raises(UnsupportedMediaType, match="checksum"):
        b.node.download("lisi", message.message_id)
    assert list((b.dir / "files" / a.id).iterdir()) == []  # nothing kept, not even the partial download


def test_a_download_running_past_the_declared_size_is_cut_off_and_discarded(network):
    """The origin sends more than the message declared: the download stops there (it never holds a
    hostile origin's gigabytes), and nothing is kept."""
    a, b = network["a"], network["b"]
    picture = png()
    message = a.node.send_file("zhangsan", b.user("lisi"), picture, "image", file_name="p.png")
    stored = next(f for f in (a.dir / "files" / a.id).iterdir())
    stored.write_bytes(picture + b"\0" * (4 * 1024 * 1024))
    with pytest.raises(PayloadTooLarge, match=f"more than the {len(picture)} bytes the message declares"):
        b.node.download("lisi", message.message_id)
    assert list((b.dir / "files" / a.id).iterdir()) == []


def test_a_file_over_the_limit_is_refused(network):
    a, b = network["a"], network["b"]
    c = network["join"]("110000", limits={"file": 1000})  # C takes files of at most 1000 bytes
    sync(a, b, c)
    with pytest.raises(PayloadTooLarge):
        c.node.send_file("sunqi", a.user("zhangsan"), PDF, "file", file_name="big.pdf")  # over C's own limit
    with pytest.raises(PayloadTooLarge, match="not kept"):  # C refuses it for good: A keeps nothing to retry
        a.node.send_file("zhangsan", c.user("sunqi"), PDF, "file", file_name="big.pdf")
    assert a.node.outbox() == [] and a.node.conversations("zhangsan") == []
    assert stored_messages(c) == []


def test_a_file_whose_message_is_refused_leaves_no_bytes_or_row_at_its_origin(network):
    """The file was stored before its message was checked and sent: each refusal left its bytes (up to 1 GiB)
    and their row at the origin, served to nobody and never removed."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000", limits={"file": 1000})
    sync(a, b, c)
    refusals = [(NotFound, lambda: a.node.send_file("zhangsan", a.user("nobody"), png(), "image")),
                (SchemaViolation, lambda: a.node.send_file("zhangsan", b.user("lisi"), png(), "image",
                                                           file_name="现场/照片.png")),
                (PayloadTooLarge, lambda: a.node.send_file("zhangsan", c.user("sunqi"), PDF, "file",
                                                           file_name="big.pdf"))]  # C refuses it for good
    for refusal, send in refusals:
        with pytest.raises(refusal):
            send()
    with a.node.db() as session:
        assert session.scalars(select(StoredFile)).all() == []
    assert not (a.dir / "files" / a.id).exists() or list((a.dir / "files" / a.id).iterdir()) == []
    kept = a.node.send_file("zhangsan", b.user("lisi"), png(), "image")  # one that is sent keeps its file
    assert [f.name for f in (a.dir / "files" / a.id).iterdir()] == [kept.document["content"]["file_id"]]


def test_a_download_by_a_node_outside_the_conversation_is_refused(network):
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="机密.pdf")
    request = protocol.make_envelope(from_node=c.id, to_node=a.id, type="download", payload={
        "file_id": message.document["content"]["file_id"], "message_id": message.message_id})
    status, body = raw_post(c.node, a, "download", request)
    assert status == 403 and body["error"]["code"] == "not_a_participant"


def test_a_request_without_a_client_certificate_is_refused(network):
    import http.client
    import ssl
    a, b = network["a"], network["b"]
    context = ssl.create_default_context(cafile=str(a.node.identity.bundle_file))
    connection = http.client.HTTPSConnection("127.0.0.1", b.port, context=context)
    connection.request("POST", "/api/v1/federation/messages", body=json.dumps(text_envelope(a, b)),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    assert response.status == 403 and json.loads(response.read())["error"]["code"] == "certificate_mismatch"


def test_sending_to_a_node_outside_the_routing_table_is_refused_at_once(network):
    a = network["a"]
    with pytest.raises(UnknownPeer):
        a.node.send_text("zhangsan", "lisi@44000000002025000999", "谁")
    assert a.node.outbox() == []


def test_the_certificate_pin_stops_a_peer_presenting_another_certificate(network):
    a, b = network["a"], network["b"]
    table_entry = a.node.routes.entry(b.id)
    from app.appnode.transport import PeerCertificateMismatch
    with pytest.raises(PeerCertificateMismatch):
        a.node.peers.post(table_entry["endpoint"], "/api/v1/federation/messages", b"{}", pin="0" * 64)
    assert not any(a.node.peers._idle.values())  # the connection to the wrong certificate was not kept
    answered = a.node.peers.post(table_entry["endpoint"], "/api/v1/health", b"{}", pin=table_entry["cert_sha256"])
    assert answered.status == 405  # with the table's fingerprint the request reaches the peer


def test_presence_is_repeated_for_users_who_are_not_offline(network):
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    a.node.set_presence("zhangsan", "online")
    a.node.set_presence("wangwu", "offline")
    a.node.flush_ephemeral()
    first = b.node.presence_of(a.user("zhangsan"))
    assert a.node.rebroadcast_presence() == 1  # zhangsan only
    a.node.flush_ephemeral()
    with b.node.db() as session:
        from app.appnode.store import Presence
        again = session.get(Presence, a.user("zhangsan"))
    assert again.updated_at >= first["last_active"] and again.status == "online"


def test_a_node_renews_in_the_last_third_and_peers_accept_the_new_certificate(network, monkeypatch):
    a, b = network["a"], network["b"]
    old = a.node.identity.fingerprint()
    from app.errors import DomainError
    with pytest.raises(DomainError, match="renewal_too_early|Renewal opens"):
        a.node.renew()  # the management node refuses before the last third
    assert a.node.identity.fingerprint() == old
    later = datetime.now(UTC) + timedelta(days=70)  # of 90: inside the last third
    assert a.node.renewal_due(later) and not a.node.renewal_due()
    import app.pki.service as pki_service
    monkeypatch.setattr(pki_service, "utcnow", lambda: later)  # the management node's clock, 70 days on
    new = a.node.renew()
    assert new != old and a.node.identity.fingerprint() == new
    assert oct((a.dir / "tls" / "node.key").stat().st_mode & 0o777) == "0o600"
    monkeypatch.undo()
    sync(a, b)
    assert b.node.routes.entry(a.id)["cert_sha256"] == new  # the table carries the new fingerprint
    message = a.node.send_text("zhangsan", b.user("lisi"), "新证书")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "新证书"
    b.node.send_text("lisi", a.user("zhangsan"), "收到")  # A's running server presents the new one too
    assert [row.state for row in b.node.outbox()] == ["delivered"]


def test_a_node_follows_a_route_signer_rotation_and_keeps_talking(network):
    """SPEC §5: after `flask ca rotate-route-signer` the table names a signer the node does not hold;
    the node fetches the new signer certificate, checks it against its trust anchor, and goes on."""
    a, b = network["a"], network["b"]
    old_signer = a.node.identity.signer_file.read_bytes()
    version = a.node.routes.table["version"]
    rotated = own_keys.rotate_route_signer(actor="tests")  # re-signs the table as a new version
    db.session.commit()
    for served in (a, b):
        sync_until(served, lambda served=served: served.node.routes.table["version"] == version + 1,
                   f"{served.id} pulls the table the new signer signed")
    assert a.node.routes.table["version"] == version + 1
    held = x509.load_pem_x509_certificate(a.node.identity.signer_file.read_bytes())
    assert a.node.identity.signer_file.read_bytes() != old_signer
    assert held.fingerprint(hashes.SHA256()).hex() == rotated.sha256
    message = a.node.send_text("zhangsan", b.user("lisi"), "新的路由签名")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert history(b, "lisi", message.conversation_id)[0]["content"]["text"] == "新的路由签名"


def test_a_group_message_reaches_every_members_node_through_the_home_node(network):
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync(a, b, c)
    group = a.node.create_group("zhangsan", "三地协作", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    assert [g.address for g in c.node.groups("sunqi")] == [group.address]
    sent = b.node.send_text("lisi", group.address, "广东收到")  # B → home A → relayed to C (not back to B)
    settle(a, b, c)
    conversation = f"g:{group.address}"
    for node, user in ((a, "zhangsan"), (b, "lisi"), (c, "sunqi")):
        assert [m["message_id"] for m in history(node, user, conversation)] == [sent.message_id]
    relayed = [row for row in a.node.outbox() if row.message_id == sent.message_id]
    assert [(row.peer_node, row.state) for row in relayed] == [(c.id, "delivered")]
    # C downloads a file B sent to the group: C had a member when it was sent
    document = b.node.send_file("lisi", group.address, PDF, "file", file_name="通报.pdf")
    settle(a, b, c)
    assert c.node.file_bytes(c.node.download("sunqi", document.message_id)) == PDF


def test_the_cli_reports_a_refusal_clearly_and_changes_nothing(network):
    import subprocess
    import sys
    a = network["a"]
    done = subprocess.run([sys.executable, "-m", "app.appnode", "--data", str(a.dir), "send", "--as", "zhangsan",
                           "lisi@44000000002025000999", "谁"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "unknown_peer" in done.stderr
    done = subprocess.run([sys.executable, "-m", "app.appnode", "--data", str(a.dir), "--json", "status"],
                          capture_output=True, text=True, timeout=60)
    status = json.loads(done.stdout)
    assert status["node_id"] == a.id and status["outbox"] == {} and status["route_version"] >= 2


def test_the_node_page_shows_conversations_in_a_real_browser(network, browser):
    from tests.conftest import screenshot
    a, b = network["a"], network["b"]
    sent = a.node.send_text("zhangsan", b.user("lisi"), "请回电")
    context = browser.new_context(locale="zh-CN", ignore_https_errors=True,
                                  http_credentials={"username": "operator", "password": "operator-password"})
    page = context.new_page()
    try:
        page.goto(f"https://127.0.0.1:{b.port}/?user=lisi")
        assert page.locator("h1").inner_text() == "会话"
        row = page.locator("table.list tbody tr").first
        assert sent.conversation_id in row.inner_text() and row.locator("td").nth(4).inner_text() == "1"
        row.locator("a").click()
        assert "请回电" in page.locator("table.list").inner_text()
        screenshot(page, "appnode-conversation")
        page.goto(f"https://127.0.0.1:{b.port}/?user=lisi&lang=en")
        assert page.locator("h1").inner_text() == "Conversations"
        stranger = browser.new_context(ignore_https_errors=True)  # no operator password
        assert stranger.request.get(f"https://127.0.0.1:{b.port}/").status == 401
        stranger.close()
    finally:
        context.close()
