"""Callers that send their request slowly, or not at all, against the reference node as production serves it
(gunicorn, a few threads, mutual TLS on 127.0.0.1): each request has a deadline (docs/protocol.md §10,
app/appnode/request_deadline.py), so a peer holding a valid certificate cannot keep the node's threads."""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import time

import pytest

from app.appnode.transport import client_context
from tests.appnode_harness import ServedNode, raw_post
from tests.appnode_processes import eventually
from tests.test_appnode import network, stored_messages, text_envelope  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)

THREADS = 2
FEDERATION_POST = (b"POST /api/v1/federation/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n")


@pytest.fixture
def bounded(network, live_server, people, tmp_path):  # noqa: F811
    """Node A, and node C served by gunicorn with THREADS threads and a 1 s request deadline (bodies get
    1 s more per 128 KiB they declare). One caller may hold all the threads here: these tests are about the
    deadline alone (test_appnode_connection_limits.py is about the limit per caller)."""
    minister, _ = people
    c = ServedNode(tmp_path, live_server, "110000", minister, request_read_seconds=1.0,
                   request_min_bytes_per_second=128 * 1024,
                   max_connections_per_caller=THREADS).start_process(threads=THREADS)
    network["a"].node.sync_routes()
    yield network["a"], c
    c.stop()


def peer_connection(sender: ServedNode, receiver: ServedNode, source: str = "127.0.0.1") -> ssl.SSLSocket:
    """A TLS connection to `receiver` presenting `sender`'s node certificate, the handshake done, from the
    loopback address `source`."""
    identity = sender.node.identity
    context = client_context(identity.cert_file, identity.key_file, identity.bundle_file)
    connection = socket.create_connection(("127.0.0.1", receiver.port), timeout=30, source_address=(source, 0))
    return context.wrap_socket(connection, server_hostname="127.0.0.1")


def sent_until_closed(connection: socket.socket, trickle: bytes = b"", within: float = 60.0) -> bytes:
    """Send `trickle` a byte every 0.5 s until the server closes the connection; what the server sent before
    closing it. Fails if it is still open after `within` seconds (far past any deadline the tests set)."""
    answered = b""
    connection.settimeout(0.5)
    end = time.monotonic() + within
    while time.monotonic() < end:
        try:
            if trickle:
                connection.sendall(trickle[:1])
                trickle = trickle[1:]
            data = connection.recv(4096)
        except TimeoutError:
            continue
        except (ConnectionError, ssl.SSLError):
            return answered
        if not data:
            return answered
        answered += data
    raise AssertionError(f"the server kept the connection open for {within} s")


def in_background(action, *args) -> dict:
    """Run `action(*args)` in a thread; the returned dict gets its "result" (or "error") and its "thread"."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = action(*args)
        except BaseException as error:  # handed to the test, which asserts on it
            outcome["error"] = error

    outcome["thread"] = threading.Thread(target=run, daemon=True)
    outcome["thread"].start()
    return outcome


def finished(outcome: dict):
    outcome["thread"].join(90)
    assert not outcome["thread"].is_alive()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def honest_message(a: ServedNode, c: ServedNode, text: str = "你好") -> dict:
    return text_envelope(a, c, text=text, message={"to": c.user("sunqi")})


def logged_cut_off(c: ServedNode, who: str) -> list[str]:
    """The lines of C's log saying it closed a connection of `who` (an address or a node id) for its deadline."""
    return [line for line in c.log.read_text("utf-8", "replace").splitlines()
            if "closed the connection" in line and who in line]


def test_peers_trickling_their_bodies_are_cut_off_and_an_honest_peer_is_served(bounded):
    """A peer with a valid certificate announced a body and sent it a byte every half second: it held one of the
    node's few threads for as long as it liked (neither gunicorn nor the node bounded reading a body), and a
    few such peers held them all. Each is cut off at its deadline, and an honest peer's message waiting behind
    them is answered."""
    a, c = bounded
    tricklers = []
    for _ in range(THREADS):  # one for each of C's threads
        connection = peer_connection(a, c)
        # A whole envelope, then the rest of the announced length as whitespace, slowly: what arrived before
        # the cut-off parses, but is not the request the peer announced, and is not taken.
        envelope = json.dumps(honest_message(a, c, "慢慢来"), ensure_ascii=False).encode()
        connection.sendall(FEDERATION_POST % (len(envelope) + 10240) + envelope)
        tricklers.append(in_background(sent_until_closed, connection, b" " * 10240))
    status, body = raw_post(a.node, c, "message", honest_message(a, c))
    assert (status, body["status"]) == (200, "accepted"), body
    for trickler in tricklers:
        assert finished(trickler) == b""  # closed without an answer: a 408 would be final for a sender (§6)
    eventually(lambda: len(logged_cut_off(c, a.id)) == THREADS, timeout=30, what="the cut-offs logged")
    assert [m.document["content"]["text"] for m in stored_messages(c)] == ["你好"]


def test_callers_silent_after_or_within_the_handshake_are_cut_off(bounded):
    """A caller that completed the handshake and sent nothing held a thread, and so did one that stopped halfway
    through the handshake, which needs no certificate at all: anybody could."""
    a, c = bounded
    silent = peer_connection(a, c)
    half_handshake = socket.create_connection(("127.0.0.1", c.port), timeout=30)
    half_handshake.sendall(b"\x16\x03\x01")  # the start of a TLS record header, and nothing more
    waiting = [in_background(sent_until_closed, silent), in_background(sent_until_closed, half_handshake)]
    status, body = raw_post(a.node, c, "message", honest_message(a, c))
    assert (status, body["status"]) == (200, "accepted"), body
    assert [finished(outcome) for outcome in waiting] == [b"", b""]
    eventually(lambda: logged_cut_off(c, a.id), timeout=30, what="the silent peer's cut-off logged")
    port = half_handshake.getsockname()[1]
    eventually(lambda: logged_cut_off(c, f"127.0.0.1:{port}"), timeout=30, what="the half handshake's cut-off")


def test_a_large_body_sent_slower_than_the_base_deadline_is_read_whole(bounded):
    """The deadline grows with the body a request declares: a peer sending the largest body the protocol allows
    (1 MiB) at a rate well above the minimum takes longer than the base deadline, and is still answered."""
    a, c = bounded
    envelope = json.dumps(honest_message(a, c, "大消息"), ensure_ascii=False).encode()
    body = envelope + b" " * (1024 * 1024 - len(envelope))  # JSON allows whitespace after the value
    connection = peer_connection(a, c)
    connection.sendall(FEDERATION_POST % len(body))
    started = time.monotonic()
    chunk = 64 * 1024
    for offset in range(0, len(body), chunk):  # 16 chunks, 0.15 s apart: about 420 KiB/s, over 2 s
        connection.sendall(body[offset:offset + chunk])
        time.sleep(0.15)
    assert time.monotonic() - started > 1.0  # longer than the 1 s a request without a body gets
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    assert (answer.status, json.loads(answer.read())["status"]) == (200, "accepted")
    assert [m.document["content"]["text"] for m in stored_messages(c)] == ["大消息"]
    connection.close()


def test_the_next_request_on_a_kept_alive_connection_has_its_own_deadline(bounded):
    """A connection kept alive after an honest request is handed back to a thread when the next request begins:
    that request is read against a deadline of its own too, not left unbounded once the first was answered."""
    a, c = bounded
    connection = peer_connection(a, c)
    body = json.dumps(honest_message(a, c), ensure_ascii=False).encode()
    connection.sendall(FEDERATION_POST % len(body) + body)
    answer = http.client.HTTPResponse(connection)
    answer.begin()
    assert (answer.status, json.loads(answer.read())["status"]) == (200, "accepted")
    assert answer.getheader("Connection", "").lower() != "close"
    connection.sendall(FEDERATION_POST % 10240 + b"{")
    assert sent_until_closed(connection, b" " * 10239) == b""
    eventually(lambda: logged_cut_off(c, a.id), timeout=30, what="the cut-off logged")
