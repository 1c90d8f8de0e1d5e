"""How long a caller may take to send a request to the node (docs/protocol.md §10).

The node serves with a few threads (gunicorn's gthread worker, 16 by default), and neither gunicorn nor werkzeug
bounds how long a thread waits for a caller: not the TLS handshake, not the headers, not the body. A caller
that sends a byte every half second, or nothing at all once connected, held a thread for as long as it liked,
and a few such callers held them all. Mutual TLS does not help: any node of the network has a valid
certificate, and the handshake itself is reached without one.

So every read from a caller's TLS socket is made against a deadline: the handshake of a new connection and
the request line, headers and body of each request must all arrive within `RequestDeadline.seconds`, plus a
time for the body that grows with the length it declares (`allow_body`). Past it the connection is shut down
and the read sees it closed, as if the caller had gone; one log line names the caller. No 408 is sent: §6 makes
any other 4xx final for the sender, while a dropped connection is retried, which is what an honest peer on a
bad link needs. The deadline ends once the request is read and the answer begins (`request_read`).

The answer has a deadline of its own, for a caller that stops reading it (a download it asked for, and let
lie, held a thread as long as it liked): each write must go out within `seconds`, and the whole answer within
`seconds` plus the time its length takes at `min_bytes_per_second`. Past either the connection is shut down,
the write fails as if the caller had gone, and one log line names the caller.
"""

from __future__ import annotations

import errno
import logging
import math
import socket
import ssl
import time
from dataclasses import dataclass

log = logging.getLogger("mpim.appnode")


@dataclass(frozen=True)
class RequestDeadline:
    """`seconds` for a request's handshake, headers and body together, and a body 1 s more per
    `min_bytes_per_second` bytes it declares.

    Why a rate on top of a fixed time: the largest request a peer sends is a 1 MiB envelope (files travel in
    download answers, never in requests). Within 30 s alone that takes 35 KiB/s, which a county link shared by
    a few deliveries may not give, and the sender would retry it for 48 hours to the same end; with 16 KiB/s
    (128 kbit/s) it gets 94 s. A caller that declares a body it does not send gains no more than that, and one
    that sends none gets the fixed time."""

    seconds: float = 30.0
    min_bytes_per_second: float = 16 * 1024

    def __post_init__(self):
        if not all(math.isfinite(value) and value > 0 for value in (self.seconds, self.min_bytes_per_second)):
            raise ValueError("not a positive number")

    def for_body(self, length: int) -> float:
        return length / self.min_bytes_per_second


class DeadlineSSLSocket(ssl.SSLSocket):
    """A server-side TLS socket whose reads stop at the current request's deadline (see the module)."""

    request_deadline: RequestDeadline = RequestDeadline()
    _deadline: float | None = None
    _answer_deadline: float | None = None
    _answer_length: int | None = None

    def start_request(self) -> None:
        """A request begins: the handshake of a new connection, or the next request on a kept-alive one."""
        self._deadline = time.monotonic() + self.request_deadline.seconds
        self._answer_deadline = None

    def allow_body(self, length: int) -> None:
        """The request's body is about to be read: the deadline grows by the time its `length` bytes may take."""
        if self._deadline is not None:
            self._deadline += self.request_deadline.for_body(length)

    def request_read(self, answer_length: int | None = None) -> None:
        """The answer begins: reading this request is over, and so is its deadline. The answer's starts: each
        write within `seconds`, and all `answer_length` bytes (when known) within `seconds` more per
        `min_bytes_per_second`."""
        self._deadline = None
        self._answer_length = answer_length
        self._answer_deadline = (time.monotonic() + self.request_deadline.seconds
                                 + self.request_deadline.for_body(answer_length or 0))

    def send(self, data, flags=0):  # sendall and sendfile come here
        if self._answer_deadline is None:
            return super().send(data, flags)
        limit = min(self.request_deadline.seconds, self._answer_deadline - time.monotonic())
        if limit > 0:
            own = self.gettimeout()
            self.settimeout(limit if own is None else min(own, limit))
            try:
                return super().send(data, flags)
            except TimeoutError:
                if own is not None and own < limit:
                    raise  # the server's own shorter wait ran out: its business
            finally:
                self.settimeout(own)
        self._cut_off_answer()
        raise BrokenPipeError(errno.EPIPE, "the caller did not take its answer within the deadline")

    def do_handshake(self, block=False):
        if self._deadline is None:
            self.start_request()
        return self._before_deadline(super().do_handshake, block)

    def read(self, len=1024, buffer=None):  # noqa: A002 (ssl.SSLSocket's signature); recv and recv_into come here
        return self._before_deadline(super().read, len, buffer)

    def _before_deadline(self, read, *args):
        if self._deadline is None:
            return read(*args)
        remaining = self._deadline - time.monotonic()
        if remaining > 0:
            timeout = self.gettimeout()  # the server's own (blocking, or a shorter wait of its own) is kept
            self.settimeout(remaining if timeout is None else min(timeout, remaining))
            try:
                return read(*args)
            except TimeoutError:
                if time.monotonic() < self._deadline:
                    raise  # the server's own shorter wait ran out: its business
            finally:
                self.settimeout(timeout)
        self._cut_off()
        return read(*args)  # on the shut connection: EOF for a read, an EOF error for a handshake

    def _cut_off(self) -> None:
        log.warning("closed the connection from %s: it did not send its request within the deadline "
                    "(%g s, and %g s more per MiB of declared body)", self._caller(), self.request_deadline.seconds,
                    self.request_deadline.for_body(1024 * 1024))
        self._deadline = None  # the reads after this one see the connection closed
        try:
            # The TCP socket's shutdown, not SSLSocket's, which drops the TLS state a read then needs.
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            pass

    def _cut_off_answer(self) -> None:
        length = "of unknown length" if self._answer_length is None else f"of {self._answer_length} bytes"
        log.warning("closed the connection to %s: it did not take its answer (%s) within the deadline (%g s for "
                    "each write, and %g s more per MiB of the answer)", self._caller(), length,
                    self.request_deadline.seconds, self.request_deadline.for_body(1024 * 1024))
        self._answer_deadline = None
        try:
            socket.socket.shutdown(self, socket.SHUT_RDWR)
        except OSError:
            pass

    def _caller(self) -> str:
        """The caller's address, and the node URN or subject of its certificate when the handshake got that far."""
        try:
            host, port = self.getpeername()[:2]
        except OSError:
            return "a caller that is gone"
        name = certificate_name(self)
        return f"{host}:{port}" + (f" ({name})" if name else " (no client certificate)")


def certificate_name(sock) -> str | None:
    """The node URN (or else the subject CN) of the verified client certificate on `sock`, once the handshake
    is done; None without one."""
    try:
        certificate = sock.getpeercert() or {}
    except (ValueError, AttributeError, OSError):  # not TLS, the handshake is not done, or the socket is gone
        return None
    names = [value for kind, value in certificate.get("subjectAltName", ()) if kind == "URI"]
    names += [value for rdn in certificate.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if names else None


def bound_requests(context: ssl.SSLContext, deadline: RequestDeadline) -> ssl.SSLContext:
    """`context`, its server sockets reading each request against `deadline`."""
    context.sslsocket_class = type("DeadlineSSLSocket", (DeadlineSSLSocket,), {"request_deadline": deadline})
    return context


def deadline_socket(sock) -> DeadlineSSLSocket | None:
    return sock if isinstance(sock, DeadlineSSLSocket) else None
