"""A peer holds a request of this node no longer than the request's timeout allows (docs/protocol.md §6, §7.2):
each call sets its own wait on a kept-alive connection, and the whole answer, not only each read of it, must
arrive in time. The outbox delivers on the node loop's one thread, so a peer that answered a byte at a time
stopped route pulls, ephemeral batches and renewals for as long as it liked."""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler

import pytest

from app.appnode.transport import MIN_BYTES_PER_SECOND, PeerNotReached, PeerPool, PeerTimedOut
from tests.conftest import stop_serving
from tests.factories import loopback_tls_server

ANSWER = b'{"status": "accepted"}'
TRICKLE = b" " * 40 + ANSWER  # one byte every 0.2 s: about 12 s in all


class SlowPeer(BaseHTTPRequestHandler):
    """A peer answering on kept-alive connections at once, late, not until released, or a byte at a time."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the http.server hook's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.seen.append((self.path, self.client_address[1]))
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
        try:
            if self.path == "/late":
                time.sleep(1)  # longer than the 0.3 s of the call that opened the connection
            elif self.path == "/held":
                self.server.release.wait(10)
            elif self.path == "/trickle":
                self.trickle(head % len(TRICKLE), TRICKLE, 1)
                return
            elif self.path == "/trickle-headers":
                self.trickle(b"", head % len(ANSWER) + ANSWER, 1)
                return
            elif self.path == "/steady":  # 16 KiB in 1 KiB pieces, 0.1 s apart: about 1.6 s
                self.trickle(head % (16 * 1024), b"x" * 16 * 1024, 1024, gap=0.1)
                return
            self.wfile.write(head % len(ANSWER) + ANSWER)
        except OSError:  # the caller gave up, as it should
            self.close_connection = True

    def trickle(self, start: bytes, rest: bytes, size: int, gap: float = 0.2) -> None:
        self.wfile.write(start)
        for index in range(0, len(rest), size):
            self.wfile.flush()
            time.sleep(gap)
            self.wfile.write(rest[index:index + size])

    def log_message(self, *_args):
        pass


@pytest.fixture
def slow_peer(tmp_path):
    server, thread, certificate_file = loopback_tls_server(SlowPeer, tmp_path)
    server.seen, server.release = [], threading.Event()
    pool = PeerPool(lambda: ssl.create_default_context(cafile=str(certificate_file)))
    yield pool, f"https://127.0.0.1:{server.server_address[1]}", server
    server.release.set()
    pool.abort()
    stop_serving(server, thread)


def test_a_kept_connection_opened_by_a_short_call_waits_as_long_as_the_next_call_allows(slow_peer):
    """A connection opened for a 0.3 s call kept 0.3 s: a delivery (30 s) reusing it timed out on a peer that
    took a second, and was sent again on a new connection."""
    pool, endpoint, server = slow_peer
    assert pool.post(endpoint, "/quick", b"{}", pin=None, timeout=0.3).status == 200
    assert pool.post(endpoint, "/late", b"{}", pin=None).status == 200
    assert [path for path, _ in server.seen] == ["/quick", "/late"]  # once each, and on one connection
    assert server.seen[0][1] == server.seen[1][1]


def test_a_kept_connection_opened_by_a_long_call_waits_no_longer_than_the_next_call_allows(slow_peer):
    """A connection opened for a delivery (30 s) kept 30 s: a group confirmation (5 s) reusing it waited 30 s."""
    pool, endpoint, server = slow_peer
    assert pool.post(endpoint, "/quick", b"{}", pin=None).status == 200
    with pytest.raises(PeerTimedOut, match="/held: no whole answer within 0.3 s"):
        pool.post(endpoint, "/held", b"{}", pin=None, timeout=0.3)
    assert [path for path, _ in server.seen] == ["/quick", "/held"]  # not sent again on a new connection
    assert server.seen[0][1] == server.seen[1][1]


@pytest.mark.parametrize("path", ["/trickle", "/trickle-headers"])
def test_a_peer_answering_a_byte_at_a_time_is_cut_off_at_the_timeout(slow_peer, path):
    """Each byte came well within the timeout, so the answer took as long as the peer liked (up to 1 MiB)."""
    pool, endpoint, _ = slow_peer
    with pytest.raises(PeerTimedOut, match=f"{path}: no whole answer within 1.0 s"):
        pool.post(endpoint, path, b"{}", pin=None, timeout=1)


def test_a_download_has_time_for_its_size_where_a_json_answer_has_only_the_timeout(slow_peer):
    """A file comes at a steady rate for longer than the timeout: a download gets 1 s more per
    MIN_BYTES_PER_SECOND bytes of its size limit, a JSON answer (a few hundred bytes) does not."""
    pool, endpoint, _ = slow_peer
    with pytest.raises(PeerTimedOut, match="/steady: no whole answer within 0.5 s"):
        pool.post(endpoint, "/steady", b"{}", pin=None, timeout=0.5)
    with tempfile.TemporaryFile() as into:
        response = pool.post(endpoint, "/steady", b"{}", pin=None, timeout=0.5, into=into,
                             limit=8 * MIN_BYTES_PER_SECOND)  # 8 s more for it
        assert response.status == 200 and into.tell() == 16 * 1024


def test_a_download_trickling_past_the_time_for_its_size_is_cut_off(slow_peer):
    pool, endpoint, _ = slow_peer
    with tempfile.TemporaryFile() as into, pytest.raises(PeerTimedOut, match="/trickle: no whole answer"):
        pool.post(endpoint, "/trickle", b"{}", pin=None, timeout=1, into=into, limit=len(TRICKLE))


def test_a_call_that_never_connects_says_nothing_was_sent(slow_peer):
    """A group's home node gives a state's seq back only when no member node may have taken it: a refused
    connection or a failed TLS handshake sent nothing; they read as failures after sending."""
    import socket

    pool, endpoint, _server = slow_peer
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    with pytest.raises(PeerNotReached):
        pool.post(f"https://127.0.0.1:{refused_port}", "/quick", b"{}", pin=None)
    hanging_up = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        connection, _ = hanging_up.accept()
        connection.close()  # no TLS handshake

    thread = threading.Thread(target=hang_up, daemon=True)
    thread.start()
    try:
        with pytest.raises(PeerNotReached):
            pool.post(f"https://127.0.0.1:{hanging_up.getsockname()[1]}", "/quick", b"{}", pin=None)
    finally:
        thread.join(10)
        hanging_up.close()
    # Connected and answered late: it was sent.
    with pytest.raises(PeerTimedOut) as failure:
        pool.post(endpoint, "/held", b"{}", pin=None, timeout=0.3)
    assert not isinstance(failure.value, PeerNotReached)
