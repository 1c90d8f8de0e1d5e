"""The reference node refuses what it cannot take in the protocol's own terms (docs/protocol.md §5.3), and its
CLI says when a message or a request did not get through instead of claiming success."""

from __future__ import annotations

import json

import pytest

from app.appnode import protocol, validation
from app.appnode.config import CAPABILITIES
from app.appnode.messages import Reply
from app.appnode.protocol import NotFound
from app.appnode.web import create_node_app
from tests.appnode_harness import raw_post
from tests.factories import not_strict_bodies
from tests.test_appnode import (  # noqa: F401 (fixture)
    GIF,
    PDF,
    adts,
    history,
    network,
    settle,
    stored_messages,
    text_envelope,
)
from tests.test_appnode_renewal import node_cli
from tests.test_sessions import people  # noqa: F401 (fixture)


def test_a_body_nested_deeper_than_the_parser_goes_is_invalid_json_not_a_server_error(network):  # noqa: F811
    a, b = network["a"], network["b"]
    for path in protocol.ENDPOINTS.values():
        status, body = raw_post(a.node, b, path, b"[" * 5000)
        assert status == 400 and body["error"]["code"] == "invalid_json"
        validation.validate("error", body)
    nested = json.dumps(text_envelope(a, b)).replace('"text": "', '"text": ' + "[" * 5000 + '"', 1).encode()
    status, body = raw_post(a.node, b, "message", nested)
    assert status == 400 and body["error"]["code"] == "invalid_json"


def test_a_number_longer_than_the_parser_converts_is_invalid_json_not_a_server_error(network):  # noqa: F811
    """Python 3.11 refuses an integer of over 4,300 digits with a plain ValueError: it answered 500, which the
    sender retries for 48 hours."""
    a, b = network["a"], network["b"]
    body = json.dumps(text_envelope(a, b)).replace('"payload": {', '"payload": {"n": ' + "7" * 5000 + ", ", 1)
    status, answer = raw_post(a.node, b, "message", body.encode())
    assert status == 400 and answer["error"]["code"] == "invalid_json", answer
    validation.validate("error", answer)


def test_a_string_holding_a_lone_surrogate_is_invalid_json_not_a_server_error(network):  # noqa: F811
    """A "\\ud800" escape parses in Python but is no text: the schema validator could not encode it and answered
    500, which the sender retries for 48 hours."""
    a, b = network["a"], network["b"]
    for text in ('"\\ud800"', '"\\udfff\\ud800"', '"a\\ud83d"'):
        body = json.dumps(text_envelope(a, b, text="X")).replace('"X"', text).encode()
        status, answer = raw_post(a.node, b, "message", body)
        assert status == 400 and answer["error"]["code"] == "invalid_json", answer
    key = json.dumps(text_envelope(a, b)).replace('"payload"', '"\\udc00payload"').encode()
    assert raw_post(a.node, b, "message", key)[1]["error"]["code"] == "invalid_json"
    paired = json.dumps(text_envelope(a, b, text="X")).replace('"X"', '"\\ud83d\\ude00"').encode()
    assert raw_post(a.node, b, "message", paired)[0] == 200  # a surrogate pair is a character: 😀
    assert [m.document["content"]["text"] for m in stored_messages(b)] == ["😀"]


def test_a_body_that_is_not_strict_json_is_invalid_json_saying_why_and_nothing_is_kept(network):  # noqa: F811
    """A key named twice, at the top or in the payload, is refused naming the key (Python's json would keep
    the last); a body with a BOM, in UTF-16 or in UTF-32 says it must be UTF-8 without a byte-order mark
    (RFC 8259 §8.1), where it was "the body is not JSON". None is stored or recorded as received: the same
    envelope, sent right, is then accepted as new."""
    a, b = network["a"], network["b"]
    envelope = text_envelope(a, b)
    for case, (body, reason) in not_strict_bodies(envelope, duplicate="message_id", nested="payload").items():
        status, answer = raw_post(a.node, b, "message", body)
        assert (status, answer["error"]["code"]) == (400, "invalid_json"), case
        assert reason in answer["error"]["message"], (case, answer)
        validation.validate("error", answer)
    assert stored_messages(b) == []
    status, ack = raw_post(a.node, b, "message", envelope)
    assert (status, ack["status"]) == (200, "accepted")
    assert [m.document["content"]["text"] for m in stored_messages(b)] == ["你好"]


def test_a_body_announced_over_the_limit_is_refused_before_it_is_read(network):  # noqa: F811
    """The node waited for the announced bytes, holding one of its few threads for a caller who needs no
    certificate to say it will send 100 MB, then sends nothing."""
    import http.client

    from app.appnode.transport import client_context
    a, b = network["a"], network["b"]
    who = a.node.identity
    connection = http.client.HTTPSConnection("127.0.0.1", b.port, timeout=30,
                                             context=client_context(who.cert_file, who.key_file, who.bundle_file))
    connection.putrequest("POST", "/api/v1/federation/messages")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(100 * 1024 * 1024))
    connection.endheaders(b"{")
    answered = connection.getresponse()
    assert answered.status == 413 and json.loads(answered.read())["error"]["code"] == "payload_too_large"
    connection.close()


def test_a_wrong_method_is_method_not_allowed_and_a_fault_is_a_json_500(network):  # noqa: F811
    a, b = network["a"], network["b"]
    entry = a.node.routes.entry(b.id)
    answered = a.node.peers.post(entry["endpoint"], "/api/v1/health", b"{}", pin=entry["cert_sha256"])
    assert answered.status == 405 and json.loads(answered.body)["error"]["code"] == "method_not_allowed"
    for method, path, allowed in (("POST", "/api/v1/health", "GET"), ("GET", "/api/v1/federation/messages", "POST")):
        answered = create_node_app(b.node).test_client().open(path, method=method)
        assert answered.status_code == 405 and allowed in answered.headers["Allow"]  # RFC 9110 §15.5.6

    app = create_node_app(b.node)  # the node's own app, with one path that fails as a bug would

    @app.get("/api/v1/broken")
    def broken():
        raise RuntimeError("a fault of this node")
    answered = app.test_client().get("/api/v1/broken")
    assert answered.status_code == 500 and answered.json["error"]["code"] == "internal_error"
    validation.validate("error", answered.json)


def counts(served) -> tuple[int, int]:
    return len(stored_messages(served)), len(served.node.outbox())


def test_a_message_to_a_dismissed_left_or_unknown_group_is_refused_and_nothing_is_kept(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    b.node.send_text("lisi", group.address, "收到")
    settle(a, b)
    a.node.group_operation("zhangsan", group.address, "dismiss")
    settle(a, b)
    assert b.node.groups() == []  # B's replica is gone
    before = {node.id: counts(node) for node in (a, b)}
    with pytest.raises(NotFound, match="no group"):
        b.node.send_text("lisi", group.address, "还在吗")
    with pytest.raises(NotFound, match="no group"):
        a.node.send_text("zhangsan", group.address, "还在吗")
    # a group id B never heard of goes to its node as a single chat, which has no such user: refused at once
    with pytest.raises(NotFound, match="not kept"):
        b.node.send_text("lisi", f"g0123456789ab@{a.id}", "喂")
    assert {node.id: counts(node) for node in (a, b)} == before
    # Its messages are kept (counts above), but a dismissed group is no longer one of lisi's conversations: listed,
    # it could not be opened (not_a_participant)
    assert b.node.conversations("lisi") == []


def test_the_cli_says_when_a_message_or_request_is_refused_and_exits_non_zero(network):  # noqa: F811
    a, b = network["a"], network["b"]
    done = node_cli(a, "send", "--as", "zhangsan", b.user("nobody"), "在吗")
    assert done.returncode == 2 and "not_found" in done.stderr and "nobody" in done.stderr
    # The refusal once, in the CLI's words: no log line before it with the peer's answer as raw JSON
    assert done.stderr.splitlines() == [f"error (not_found): peer: no user {b.user('nobody')} here (node {b.id}); "
                                        f"the message was not kept"]
    assert a.node.conversations("zhangsan") == [] and a.node.outbox() == []

    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    done = node_cli(b, "group", "rename", "--as", "lisi", group.address, "改名")  # lisi is not the owner
    assert done.returncode == 2 and "forbidden" in done.stderr
    assert done.stderr.splitlines() == [f"error (forbidden): peer: only the owner may update_info (home node {a.id}); "
                                        f"the request was not kept"]
    assert a.node.groups()[0].name == "专班"
    done = node_cli(a, "--json", "group", "rename", "--as", "zhangsan", group.address, "改名")
    assert done.returncode == 0 and json.loads(done.stdout)["outcome"] == "applied"

    (a.dir / "clip.aac").write_bytes(adts(900))
    (a.dir / "ok.gif").write_bytes(GIF)
    done = node_cli(a, "send-file", "--as", "zhangsan", "--kind", "voice", "--duration-ms", "5000", b.user("lisi"),
                    str(a.dir / "clip.aac"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == ["error (unsupported_media_type): the recording is 906 ms long, not the 5000 ms "
                                        "its message states (at most 1000 ms apart); refused"]
    done = node_cli(a, "send-file", "--as", "zhangsan", "--kind", "sticker", b.user("lisi"), str(a.dir / "ok.gif"))
    assert done.returncode == 2 and "--package" in done.stderr and "Traceback" not in done.stderr


def test_the_cli_reports_a_sticker_sent_as_text_and_the_member_nodes_a_message_misses(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000", capabilities=[cap for cap in CAPABILITIES if cap not in ("sticker", "voice")])
    for node in (a, b, c):
        node.node.sync_routes()
    (a.dir / "ok.gif").write_bytes(GIF)
    (a.dir / "clip.aac").write_bytes(adts(900))
    done = node_cli(a, "--json", "send-file", "--as", "zhangsan", "--kind", "sticker", "--package", "jingwu",
                    "--sticker", "ok", "--alt", "[好的]", c.user("sunqi"), str(a.dir / "ok.gif"))
    assert done.returncode == 0, done.stderr
    sent = json.loads(done.stdout)
    assert sent["file_id"] is None and sent["undelivered"] == {}
    assert history(c, "sunqi", a.node.conversations("zhangsan")[0]["conversation_id"])[0]["content"] == {
        "text": "[好的]"}
    done = node_cli(a, "send-file", "--as", "zhangsan", "--kind", "sticker", "--package", "jingwu",
                    "--sticker", "ok", "--alt", "[好的]", c.user("sunqi"), str(a.dir / "ok.gif"))
    assert done.returncode == 0 and f"sent as its alt text [好的]: {c.id} does not take stickers" in done.stderr
    assert "\t2 messages" in node_cli(a, "inbox", "--as", "zhangsan").stdout

    group = a.node.create_group("zhangsan", "三地", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    done = node_cli(a, "send-file", "--as", "zhangsan", "--kind", "voice", "--duration-ms", "900", group.address,
                    str(a.dir / "clip.aac"))
    assert done.returncode == 3 and f"not delivered to node {c.id}" in done.stderr and "voice" in done.stderr
    assert [row.state for row in b.node.outbox()] == []  # nothing B had to do; B got the voice from home A
    settle(a, b, c)
    assert history(b, "lisi", f"g:{group.address}")[-1]["msg_type"] == "voice"


def hostile_refusal(code: str = "not_found") -> Reply:
    return Reply(status=404, document={"error": {"code": code, "message": "\x1b[2J\x1b[H\x1b[32mdownload complete: "
                                                 "r.pdf 3016 bytes\x1b[8m\x1b]0;title\x07\u202e" + "x" * 3000}})


def assert_readable(text: str) -> None:
    assert not any(ch in text for ch in "\x1b\x07\u202e") and "\\u001b[2J" in text and len(text) < 600, text


def test_a_peers_refusal_reaches_the_terminal_and_json_escaped_and_bounded(network, monkeypatch):  # noqa: F811
    """A hostile origin's 404 cleared the operator's screen and printed a fake success in green; a peer refusing a
    message could do the same to the sender's terminal."""
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="r.pdf")
    monkeypatch.setattr(a.node, "_serve_download", lambda envelope: hostile_refusal("not_found\x1b[2J"))
    done = node_cli(b, "download", "--as", "lisi", message.message_id)
    assert done.returncode == 2 and done.stderr.startswith("error (peer_error): peer: ")
    assert_readable(done.stderr)
    assert "not_found\\u001b[2J" in done.stderr
    done = node_cli(b, "--json", "download", "--as", "lisi", message.message_id)
    error = json.loads(done.stderr)["error"]
    assert done.returncode == 2 and error["code"] == "peer_error"
    assert_readable(error["message"])

    monkeypatch.setattr(b.node, "receive", lambda *args: hostile_refusal())
    for args in ((), ("--json",)):
        done = node_cli(a, *args, "send", "--as", "zhangsan", b.user("lisi"), "在吗")
        assert done.returncode == 2 and "not_found" in done.stderr
        assert_readable(done.stderr if not args else json.loads(done.stderr)["error"]["message"])


def test_a_peers_refusal_of_a_group_message_is_reported_escaped_and_bounded(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    monkeypatch.setattr(b.node, "receive", lambda *args: hostile_refusal())
    done = node_cli(a, "send", "--as", "zhangsan", group.address, "在吗")
    assert done.returncode == 3 and f"not delivered to node {b.id}: " in done.stderr
    assert_readable(done.stderr)
    (row,) = [row for row in a.node.outbox() if row.state == "failed"]
    assert_readable(row.last_error)
