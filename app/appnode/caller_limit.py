"""How many of the node's threads one caller may hold at once (docs/protocol.md §10).

The deadlines of `request_deadline.py` bound how long one connection holds a thread, not how many a caller
opens: a peer that reconnected as fast as it was cut off still kept every thread, each for up to 30 to 94 s.
So each caller may hold at most `limit` of them at a time. A caller is its verified client certificate's node
once the TLS handshake is done, and its IP address before that (the handshake is reached without a
certificate) or without one (health checks, the operator's page). A connection over the limit is not served:
during the handshake it is closed at once, after it an HTTP/1.1 503 `too_many_connections` with `Retry-After`
is written without reading the request, and the connection is closed. The sender retries either (§6).

Only connections in a thread count: a kept-alive connection waiting for its next request holds none.

A refusal holds a thread too, while its answer is written and the caller given time to close (up to
2 * REFUSAL_SECONDS), outside the caller's limit: a caller at its limit that kept opening connections held all
the other threads that way. So a refusal is answered only while the caller has no other refusal being answered
and another thread is left idle; otherwise the connection is closed at once without an answer, as during the
handshake, which takes a thread for milliseconds.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time

from app.appnode import protocol
from app.appnode.outbox import DELIVERY_PARALLELISM

log = logging.getLogger("mpim.appnode")
# The reference sender delivers up to DELIVERY_PARALLELISM envelopes to one peer at once, each on its own
# connection, and the same peer's other traffic comes on top of that: a CLI send (which delivers from a process
# of its own), a download or a group operation one of its users waits on. With no headroom, a peer delivering
# at full speed had those refused. More than half of the threads is never the default, so other peers keep
# the rest.
HEADROOM = 2
DEFAULT_PER_CALLER = DELIVERY_PARALLELISM + HEADROOM
# `run --threads` by default: enough that the default limit is in force (at most half of them), and that two
# peers at their limit still leave a few threads to everybody else.
DEFAULT_THREADS = 16
MAX_PER_CALLER = 64
RETRY_AFTER_SECONDS = 5
# A refusal is written and the request it did not read drained (so that the close does not reset the answer
# away) within this time at most; a caller that does not take it loses it.
REFUSAL_SECONDS = 1.0
# After an answer that closes the connection, how long the caller may take to close its end (gunicorn's own
# `util.close_graceful` waits as long), and how much of what it still sends is drained meanwhile.
LINGER_SECONDS = 2.0
LINGER_DRAIN_BYTES = 64 * 1024


def per_caller_limit(configured: int | None, threads: int) -> int:
    """The limit in force: `configured` (at most `threads`), or by default DEFAULT_PER_CALLER and never more than
    half the threads."""
    if configured is not None:
        return min(configured, threads)
    return max(1, min(DEFAULT_PER_CALLER, threads // 2))


class CallerLimit:
    """Connections in a thread, counted per caller (a node URN or an IP address), at most `limit` each, and
    the refusals being answered, at most one per caller and never in the last idle one of `threads`."""

    def __init__(self, limit: int, threads: int):
        self.limit, self.threads = limit, threads
        self._held: dict[str, int] = {}
        self._refused: set[str] = set()  # refusals logged until the caller holds fewer again
        self._answering: set[str] = set()  # callers with a refusal being answered
        self._busy = 0  # threads counted here: connections held and refusals being answered
        self._lock = threading.Lock()

    def take(self, caller: str) -> bool:
        """One more connection of `caller` in a thread; False, with nothing taken, when it holds its limit."""
        with self._lock:
            if self._held.get(caller, 0) >= self.limit:
                return False
            self._held[caller] = self._held.get(caller, 0) + 1
            self._busy += 1
            return True

    def release(self, caller: str) -> None:
        with self._lock:
            self._busy -= 1
            held = self._held.get(caller, 0) - 1
            if held > 0:
                self._held[caller] = held
            else:
                self._held.pop(caller, None)
            if held < self.limit:
                self._refused.discard(caller)

    def move(self, before: str, after: str) -> bool:
        """A connection counted as `before` (its address) turns out to be `after` (its node): counted as that, or,
        when `after` holds its limit, released and False."""
        self.release(before)
        return self.take(after)

    def first_refusal(self, caller: str) -> bool:
        """Whether this refusal is the first since `caller` reached its limit: only that one is logged."""
        with self._lock:
            if caller in self._refused:
                return False
            self._refused.add(caller)
            return True

    def take_refusal(self, caller: str) -> bool:
        """Whether a refusal of `caller`, in a thread now, may be answered (taken until `release_refusal`): not
        while another of its refusals is, nor when that would leave no thread idle. Otherwise it is closed without
        an answer, so that refusals never take the threads the limit keeps for other callers."""
        with self._lock:
            if caller in self._answering or self._busy + 2 > self.threads:  # this thread, and one idle
                return False
            self._answering.add(caller)
            self._busy += 1
            return True

    def release_refusal(self, caller: str) -> None:
        with self._lock:
            self._answering.discard(caller)
            self._busy -= 1

    def held(self, caller: str) -> int:
        with self._lock:
            return self._held.get(caller, 0)


def refusal(limit: int) -> bytes:
    """The 503 a caller over its limit gets, closing the connection."""
    body = json.dumps(protocol.TooManyConnections(
        f"this caller already has {limit} connections being served here; retry after {RETRY_AFTER_SECONDS} s"
    ).to_dict()).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nRetry-After: %d\r\nConnection: close\r\n\r\n" % (len(body), RETRY_AFTER_SECONDS)
            + body)


def refuse(sock, limit: int) -> None:
    """Refuse the connection on `sock` (its TLS handshake done) without serving it: the 503, then the caller's time
    to close, each within REFUSAL_SECONDS. The socket is left shut down for the server to close."""
    try:
        sock.settimeout(REFUSAL_SECONDS)
        sock.sendall(refusal(limit))
    except OSError:
        return shut(sock)  # the caller went, or did not take the refusal in time: it is closed all the same
    shut_after_linger(sock, REFUSAL_SECONDS)


def shut_after_linger(sock, seconds: float = LINGER_SECONDS) -> None:
    """End a connection whose answer was sent, as gunicorn's `util.close_graceful` does (RFC 9112 §9.6: our end
    first, then what the caller still sends is drained, at most `seconds` and 64 KiB, so that closing does not
    reset the answer away), but in the thread that served it and without closing the socket, which gunicorn's
    main loop still does: there, a caller that never closed its end held up every other caller `seconds` a
    connection, while here it holds one of its own threads (the caller's limit)."""
    try:
        sock.shutdown(socket.SHUT_WR)  # SSLSocket's: the TLS layer is done, the raw socket drained below
        end, drained = time.monotonic() + seconds, 0
        while drained < LINGER_DRAIN_BYTES and (remaining := end - time.monotonic()) > 0:
            sock.settimeout(remaining)
            data = sock.recv(4096)
            if not data:
                break
            drained += len(data)
    except OSError:
        pass  # the caller went, or did not close its end in time: it is closed all the same
    shut(sock)


def shut(sock) -> None:
    """Both ways of the TCP connection under `sock` shut down: the main loop's close then waits for nothing."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
