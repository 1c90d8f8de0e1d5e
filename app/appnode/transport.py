"""Node-to-node HTTPS with mutual TLS (docs/protocol.md §2), on kept-alive connections.

The client presents the node's certificate, verifies the peer's chain to the network's root and the
endpoint's host, and pins the peer's certificate to the fingerprint the routing table lists for it.

Each request is sent and its whole answer read against a deadline of its own (§6, §7.2), whatever connection
carries it: a peer answering a byte at a time within each read's timeout held the outbox, and with it the node
loop, for as long as it liked.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO
from urllib.parse import urlsplit

from app.appnode.request_deadline import RequestDeadline, bound_requests

CONNECT_TIMEOUT = 10.0
ANSWER_TIMEOUT = 30.0
# A JSON answer (an ack, an error) is a few hundred bytes; more than this is a faulty or hostile peer,
# and reading it whole would let that peer fill this node's memory.
ANSWER_LIMIT = 1024 * 1024
CHUNK_BYTES = 64 * 1024
# The time a request's body and a downloaded file may take on top of the answer timeout: 1 s per 16 KiB
# (128 kbit/s), the rate the receiving side allows its callers (request_deadline.py), so a 1 MiB envelope or a
# 20 MiB file gets through a slow county link while a peer sending a byte at a time is cut off.
MIN_BYTES_PER_SECOND = 16 * 1024


class PeerUnreachable(Exception):
    """A connection failure or timeout: the sender retries (docs/protocol.md §6)."""


class PeerCertificateMismatch(PeerUnreachable):
    """The peer's server certificate is not the one the routing table lists: nothing is sent to it."""


class PeerNotReached(PeerUnreachable):
    """No connection was made (refused, no route, no such name, a failed TLS handshake, none within
    CONNECT_TIMEOUT) and no earlier attempt of this call reached the peer: nothing was sent."""


class PeerClosedHandshake(PeerNotReached):
    """The peer accepted the connection and closed it during the TLS handshake without an alert: what a receiver
    does to a caller past its limit of connections while it counts callers by address (docs/protocol.md §10),
    and what a failing peer, or something in front of it, may do too."""


class PeerTimedOut(PeerUnreachable):
    """No connection within CONNECT_TIMEOUT, or no whole answer within the request's deadline: retried (§6)."""


class PeerAnswerTooLarge(PeerUnreachable):
    """The peer's answer ran past what the caller accepts: the connection is dropped, nothing is kept."""


@dataclass
class PeerResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers.items() if key.lower() == name.lower()), None)


def client_context(cert_file, key_file, bundle_file) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(bundle_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert_file), str(key_file))
    return context


def server_context(cert_file, key_file, bundle_file, deadline: RequestDeadline | None = None) -> ssl.SSLContext:
    """Requests a client certificate without requiring it: health is open, federation paths enforce it.
    With `deadline`, each request's handshake, headers and body are read against it (`request_deadline.py`).

    Each handshake is served the pair now in the files, as gunicorn's per-connection contexts do: when they
    changed (a renewal, or a certificate an admin issued), a context loaded from them takes over. A pair
    caught halfway through being replaced does not load, and the previous one goes on serving."""

    def load() -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(cert_file), str(key_file))
        context.load_verify_locations(cafile=str(bundle_file))
        context.verify_mode = ssl.CERT_OPTIONAL
        return context

    def stamp() -> tuple:
        return tuple((found.st_ino, found.st_mtime_ns, found.st_size)
                     for found in (os.stat(cert_file), os.stat(key_file)))

    first = load()
    held = {"stamp": stamp(), "context": first}
    lock = threading.Lock()

    def follow_files(connection: ssl.SSLSocket, _server_name, _context) -> None:
        with lock:
            try:
                now = stamp()
                if now != held["stamp"]:
                    held["context"], held["stamp"] = load(), now
            except (OSError, ssl.SSLError):
                pass
            if held["context"] is not first:
                connection.context = held["context"]

    first.sni_callback = follow_files  # called on every handshake, with or without a server name
    return bound_requests(first, deadline) if deadline else first


class DeadlineSocket(ssl.SSLSocket):
    """A client TLS socket whose reads and writes each wait at most `wait` seconds, and not past `deadline`
    (monotonic): the socket's own timeout bounds one read, which a peer sending a byte at a time never runs out."""

    deadline: float | None = None
    wait: float | None = None

    def bound(self, wait: float, seconds: float) -> None:
        """The next exchange: `seconds` for all of it, `wait` for any one read or write."""
        self.wait, self.deadline = wait, time.monotonic() + seconds
        self.settimeout(wait)

    def read(self, len=1024, buffer=None):  # noqa: A002 (ssl.SSLSocket's signature); recv and recv_into come here
        self._wait_left()
        return super().read(len, buffer)

    def send(self, data, flags=0):  # sendall comes here
        self._wait_left()
        return super().send(data, flags)

    def _wait_left(self) -> None:
        if self.deadline is None:
            return  # the handshake: CONNECT_TIMEOUT bounds it whole
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the exchange's deadline passed")
        # ssl reads and writes with a timeout end within it in all, however many TCP segments they take.
        self.settimeout(min(self.wait, remaining))


def fingerprint_of(der: bytes | None) -> str | None:
    return hashlib.sha256(der).hexdigest() if der else None


class PeerPool:
    """Idle HTTPS connections per endpoint, reused for the next request to that peer."""

    def __init__(self, context_factory):
        self._context_factory = context_factory
        self._context: ssl.SSLContext | None = None
        self._idle: dict[tuple[str, int], list[http.client.HTTPSConnection]] = {}
        self._busy: set[http.client.HTTPSConnection] = set()
        self._closed = False
        self._lock = threading.Lock()

    def abort(self) -> None:
        """The node is stopping: requests in flight fail now (their sockets are shut down, which wakes a
        thread waiting for an answer), idle connections close, and new requests are refused. Without it
        the process waited at exit for the slowest answer, up to ANSWER_TIMEOUT, past gunicorn's grace."""
        with self._lock:
            self._closed = True
            busy, idle, self._idle = list(self._busy), self._idle, {}
        for connection in busy:
            if connection.sock is not None:
                try:  # the plain socket's shutdown: SSLSocket's own would unwrap it under the reading thread
                    socket.socket.shutdown(connection.sock, socket.SHUT_RDWR)
                except OSError:
                    pass
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def reset(self) -> None:
        """After the node's certificate changed: new context, no old connections."""
        with self._lock:
            self._context = None
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def _context_now(self) -> ssl.SSLContext:
        with self._lock:
            if self._context is None:
                self._context = self._context_factory()
                self._context.sslsocket_class = DeadlineSocket
            return self._context

    def post(self, endpoint: str, path: str, body: bytes, *, pin: str | None, timeout: float = ANSWER_TIMEOUT,
             into: BinaryIO | None = None, limit: int = ANSWER_LIMIT) -> PeerResponse:
        """POST `body`; the answer is read in chunks and refused past `limit` bytes (PeerAnswerTooLarge).
        With `into`, a 200 answer's bytes go to that file instead of memory (`body` is then empty); any
        other answer is an error document, read into memory within ANSWER_LIMIT.

        Once connected, sending the request and reading its whole answer may take `timeout` seconds, plus 1 s
        per MIN_BYTES_PER_SECOND bytes of `body` and, with `into`, of `limit`; no single read or write may wait
        longer than `timeout`. Past either: PeerTimedOut, and the connection is dropped."""
        parts = urlsplit(endpoint)
        key = (parts.hostname, parts.port or 443)
        url = (parts.path.rstrip("/") + path) or "/"
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        seconds = timeout + (len(body) + (limit if into is not None else 0)) / MIN_BYTES_PER_SECOND
        for attempt in (0, 1):  # a kept-alive connection the peer closed is retried once on a fresh one
            connection, reused = self._take(key)
            with self._lock:
                self._busy.add(connection)
            connected = connection.sock is not None
            try:
                if not connected:
                    connection.timeout = CONNECT_TIMEOUT
                    connection.connect()
                    connected = True
                    seen = fingerprint_of(connection.sock.getpeercert(binary_form=True))
                    if pin is not None and seen != pin.lower():
                        connection.close()
                        raise PeerCertificateMismatch(
                            f"{parts.hostname} presented certificate {seen}, the routing table lists {pin}")
                connection.sock.bound(timeout, seconds)  # a kept connection too: what this call allows
                connection.request("POST", url, body=body, headers=headers)
                response = connection.getresponse()
                sink = into if into is not None and response.status == 200 else None
                data = _read_bounded(response, limit if sink is not None else ANSWER_LIMIT, sink, f"{endpoint}{path}")
            except PeerCertificateMismatch:
                raise
            except PeerAnswerTooLarge:
                connection.close()  # the rest of the answer is still on the wire
                raise
            except TimeoutError:
                connection.close()
                if self._closed:
                    raise PeerUnreachable(f"{endpoint}{path}: this node is stopping") from None
                # Not tried again on a new connection: the peer is slow, not gone, and the caller waited enough.
                if not connected:
                    kind = PeerNotReached if attempt == 0 else PeerTimedOut
                    raise kind(f"{endpoint}{path}: no connection within {CONNECT_TIMEOUT:.1f} s") from None
                raise PeerTimedOut(f"{endpoint}{path}: no whole answer within {seconds:.1f} s") from None
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                if self._closed:
                    raise PeerUnreachable(f"{endpoint}{path}: this node is stopping") from None
                if reused and attempt == 0:
                    if into is not None:  # whatever a broken answer wrote is not the file
                        into.seek(0)
                        into.truncate()
                    continue
                # No connection on the first attempt: sent nowhere (after a kept connection failed, it may have been).
                kind = PeerNotReached if not connected and attempt == 0 else PeerUnreachable
                if kind is PeerNotReached and isinstance(error, ssl.SSLEOFError | ConnectionResetError):
                    kind = PeerClosedHandshake
                raise kind(f"{endpoint}{path}: {error.__class__.__name__}: {error}") from None
            finally:
                with self._lock:
                    self._busy.discard(connection)
            result = PeerResponse(response.status, dict(response.getheaders()), data)
            if response.will_close:
                connection.close()
            else:
                self._give(key, connection)
            return result
        raise PeerUnreachable(f"{endpoint}{path}: no connection")  # pragma: no cover (loop always returns)

    def _take(self, key) -> tuple[http.client.HTTPSConnection, bool]:
        with self._lock:
            if self._closed:
                raise PeerUnreachable(f"{key[0]}:{key[1]}: this node is stopping")
            idle = self._idle.get(key)
            if idle:
                return idle.pop(), True
        return http.client.HTTPSConnection(key[0], key[1], context=self._context_now(),
                                           timeout=CONNECT_TIMEOUT), False

    def _give(self, key, connection) -> None:
        with self._lock:
            bucket = None if self._closed else self._idle.setdefault(key, [])
            if bucket is not None and len(bucket) < 8:
                bucket.append(connection)
                return
        connection.close()


def _read_bounded(response: http.client.HTTPResponse, limit: int, sink: BinaryIO | None, where: str) -> bytes:
    """The answer's body, chunk by chunk, into `sink` or memory; PeerAnswerTooLarge past `limit` bytes,
    before reading anything when the answer announces its length."""
    declared = (response.getheader("Content-Length") or "").strip()
    # ASCII digits only: "²".isdigit() holds, and int() then fails, or reads "٣" as 3.
    if re.fullmatch(r"[0-9]+", declared) and int(declared) > limit:
        raise PeerAnswerTooLarge(f"{where}: the answer announces {int(declared)} bytes, more than {limit}")
    chunks, total = [], 0
    while chunk := response.read(CHUNK_BYTES):
        total += len(chunk)
        if total > limit:
            raise PeerAnswerTooLarge(f"{where}: the answer runs past {limit} bytes")
        if sink is not None:
            sink.write(chunk)
        else:
            chunks.append(chunk)
    return b"".join(chunks)
