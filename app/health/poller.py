"""Polling `GET {endpoint}/api/v1/health` of many nodes at once (asyncio + aiohttp).

aiohttp was chosen over httpx's async client by measurement: a bare loop of 10,000 plain-HTTP
requests ran about 16 times faster with it here. One ClientSession with a bounded connector
serves a whole round. An answer counts only if it is HTTP 200, strict JSON, `status: "ok"`, names
the polled node and carries health.schema.json's `version` and `time`; over HTTPS the caller's
SSLContext verifies the chain to our CA and the host, and the poller additionally requires the
certificate to name the node (CN or SAN URI `urn:mpim:node:<id>`) and not to be one we revoked
(the chain check does not consult revocation), and compares its SHA-256 with the registered one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import hashlib
import os
import re
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import aiohttp
from cryptography import x509

from app import strict_json

MAX_BODY = 64 * 1024
# health.schema.json's `time` (common.schema.json's timestamp): UTC, to the second or finer.
TIMESTAMP = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
                       r"(\.[0-9]{1,6})?Z")


@dataclass(frozen=True)
class PollTarget:
    node_id: str
    endpoint: str
    cert_sha256: str | None = None
    # SHA-256 of the node's certificates we revoked: presenting one fails the poll.
    revoked_sha256: frozenset[str] = frozenset()


class FailureReason(StrEnum):
    TIMEOUT = "timeout"
    REFUSED = "refused"
    TLS = "tls"
    CERTIFICATE_MISMATCH = "certificate_mismatch"
    CERTIFICATE_REVOKED = "certificate_revoked"
    HTTP_STATUS = "http_status"
    BAD_BODY = "bad_body"
    WRONG_NODE = "wrong_node"
    ERROR = "error"  # anything else (reset connections, DNS, ...); the detail says what


@dataclass(frozen=True)
class PollResult:
    node_id: str
    # The endpoint polled: a round applied after the node moved must not count the old server's answer.
    endpoint: str
    ok: bool
    latency_ms: float | None
    failure: FailureReason | None
    detail: str
    cert_matches: bool | None
    checked_at: datetime


def stable_offset(node_id: str, interval_s: float) -> float:
    """Where in the interval this node is polled: the same every round, spread over nodes."""
    digest = int.from_bytes(hashlib.sha256(node_id.encode()).digest()[:8], "big")
    return (digest % max(1, int(interval_s * 1000))) / 1000.0


def names_node(der: bytes, node_id: str) -> bool:
    certificate = x509.load_der_x509_certificate(der)
    common_names = [a.value for a in certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)]
    if node_id in common_names:
        return True
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return f"urn:mpim:node:{node_id}" in names.get_values_for_type(x509.UniformResourceIdentifier)


class CertificateKeepingConnector(aiohttp.TCPConnector):
    """A connector that keeps each TLS connection's server certificate on its protocol, read as it connects.

    aiohttp releases a connection as soon as a small answer has arrived, and closes it then when the answer says
    `Connection: close` (gunicorn's sync worker, nginx without keep-alive, the reference node's 503 when too many
    connections are open): by the time the poller holds the response, the transport, and the certificate with
    it, may be gone. A healthy node was then down for "the server certificate does not name this node"."""

    async def _create_connection(self, req, traces, timeout):
        protocol = await super()._create_connection(req, traces, timeout)
        transport = protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        protocol.mpim_peer_certificate = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        return protocol


def peer_certificate(response: aiohttp.ClientResponse) -> bytes | None:
    """The server certificate (DER) of the connection that carried `response`: as kept when it was made
    (`CertificateKeepingConnector`), else from the transport if it is still open (a session made elsewhere)."""
    protocol = getattr(response, "_protocol", None)
    kept = getattr(protocol, "mpim_peer_certificate", None)
    if kept is not None:
        return kept
    transport = response.connection.transport if response.connection is not None else None
    if transport is None:
        transport = getattr(protocol, "transport", None) if protocol is not None else None
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    return ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None


async def read_body(content: aiohttp.StreamReader) -> bytes:
    """The whole answer, or its first MAX_BODY + 1 bytes when it is longer: one `read(n)` returns only what has
    arrived so far, so a healthy answer split over two packets read as cut short. The round's timeout bounds it."""
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY:
        part = await content.read(MAX_BODY + 1 - size)
        if not part:
            break
        parts.append(part)
        size += len(part)
    return b"".join(parts)


def _result(target: PollTarget, started: float, failure: FailureReason | None, detail: str,
            cert_matches: bool | None = None) -> PollResult:
    latency = round((time.perf_counter() - started) * 1000, 2) if failure is None else None
    return PollResult(target.node_id, target.endpoint, failure is None, latency, failure, detail[:300], cert_matches,
                      datetime.now(UTC))


# Connection failures stored as the C library says them ("Network is unreachable"), which the console translates.
SAID_ERRNOS = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ECONNRESET})


# OpenSSL's verification results (X509_V_ERR_*) said in words the console translates (HEALTH_DETAILS); any other
# is stored as OpenSSL says it.
SAID_VERIFY_CODES = {
    9: "the server certificate is not valid yet", 10: "the server certificate has expired",
    62: "the server certificate is not valid for this host", 64: "the server certificate is not valid for this host",
    **dict.fromkeys((2, 18, 19, 20, 21, 27), "the server certificate does not chain to the CA"),
}


def tls_failure(error: Exception) -> str:
    """A TLS failure's detail: OpenSSL's verification result in our words when we have them, never the library's
    wrapping text (the host and port, `_ssl.c` lines)."""
    cause = getattr(error, "certificate_error", None) or getattr(error, "os_error", None) or error
    if isinstance(cause, ssl.SSLCertVerificationError):
        return SAID_VERIFY_CODES.get(cause.verify_code, f"the server certificate was refused: {cause.verify_message}")
    reason = getattr(cause, "reason", None)
    return f"the TLS handshake failed: {reason}" if reason else f"the TLS handshake failed: {cause}"


def connection_failure(error: Exception, timeout: float) -> tuple[FailureReason, str]:
    """What an exception of asking a node's health endpoint stands for, and its detail: for a poll, and for the
    review page's probe (app/admission/probe.py), which asks the same way."""
    if isinstance(error, TimeoutError):
        return FailureReason.TIMEOUT, f"no answer within {timeout:g} s"
    return worded_failure(error) or (FailureReason.ERROR, f"{type(error).__name__}: {error}")


def worded_failure(error: Exception, peer: str = "the node") -> tuple[FailureReason, str] | None:
    """A failure said in our words, never aiohttp's text (which quotes the peer's bytes and the URL) nor OpenSSL's
    wrapping; None for an exception it has no words for. `peer`: who answered, as the detail names it (the health
    webhook's sender says "the receiver")."""
    if isinstance(error, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError):
        return FailureReason.TLS, tls_failure(error)
    if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        # raised while reading the answer (the poller raises no status of its own): aiohttp's parser text quotes
        # the node's bytes and the URL
        return FailureReason.ERROR, "the answer is not valid HTTP"
    if isinstance(error, aiohttp.ClientConnectorDNSError):  # said in words the console translates (HEALTH_DETAILS)
        return FailureReason.ERROR, f"the host name {error.host} does not resolve"
    if isinstance(error, aiohttp.ServerDisconnectedError):  # not aiohttp's "Server disconnected" (HEALTH_DETAILS)
        return FailureReason.ERROR, f"{peer} closed the connection without answering"
    if isinstance(error, aiohttp.ClientConnectorError):
        if isinstance(error.os_error, ConnectionRefusedError):  # not asyncio's "Connect call failed (host, port)"
            return FailureReason.REFUSED, os.strerror(errno.ECONNREFUSED)
        if isinstance(error.os_error, ConnectionError) and error.os_error.errno is None and error.ssl is not False:
            # asyncio's TLS layer lost the connection before the handshake ended ("[None]" in aiohttp's text)
            return FailureReason.TLS, f"{peer} closed the connection during the TLS handshake"
        if getattr(error.os_error, "errno", None) in SAID_ERRNOS:
            return FailureReason.ERROR, os.strerror(error.os_error.errno)
        return FailureReason.ERROR, str(error)  # the host and port at most
    if isinstance(error, aiohttp.ClientOSError) and error.errno in SAID_ERRNOS:  # a reset once connected
        return FailureReason.ERROR, os.strerror(error.errno)
    return None


async def poll_one(session: aiohttp.ClientSession, target: PollTarget, timeout: float) -> PollResult:
    url = target.endpoint.rstrip("/") + "/api/v1/health"
    started = time.perf_counter()
    cert_matches: bool | None = None
    try:
        async with asyncio.timeout(timeout):
            async with session.get(url, allow_redirects=False) as response:
                if url.startswith("https://"):
                    der = peer_certificate(response)
                    if not der:  # none to be read: no claim about what it names
                        return _result(target, started, FailureReason.ERROR,
                                       "the server certificate could not be read")
                    if not names_node(der, target.node_id):
                        return _result(target, started, FailureReason.CERTIFICATE_MISMATCH,
                                       "the server certificate does not name this node")
                    presented = hashlib.sha256(der).hexdigest()
                    if presented in target.revoked_sha256:
                        return _result(target, started, FailureReason.CERTIFICATE_REVOKED,
                                       "the server certificate is revoked", False)
                    if target.cert_sha256:
                        cert_matches = presented == target.cert_sha256
                if response.status != 200:
                    return _result(target, started, FailureReason.HTTP_STATUS, f"HTTP {response.status}",
                                   cert_matches)
                body = await read_body(response.content)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
        return _result(target, started, *connection_failure(error, timeout))
    if len(body) > MAX_BODY:
        return _result(target, started, FailureReason.BAD_BODY, "the answer is longer than 64 KiB", cert_matches)
    try:
        # As strictly as every other JSON on the wire: a repeated "status" or a NaN is no usable answer.
        document = strict_json.parse(body)
    except strict_json.NotStrictJSON as error:
        return _result(target, started, FailureReason.BAD_BODY, f"the answer is not strict JSON: {error}",
                       cert_matches)
    if not isinstance(document, dict):
        return _result(target, started, FailureReason.BAD_BODY, "the answer is not a JSON object", cert_matches)
    if document.get("status") != "ok":
        return _result(target, started, FailureReason.BAD_BODY, f"status is {document.get('status')!r}",
                       cert_matches)
    if document.get("node_id") != target.node_id:
        return _result(target, started, FailureReason.WRONG_NODE,
                       f"answered as {str(document.get('node_id'))[:40]!r}", cert_matches)
    # The rest of health.schema.json's answer: protocol §7.1 says any other answer is no healthy node's.
    version, said_time = document.get("version"), document.get("time")
    if not isinstance(version, str) or not 1 <= len(version) <= 64:
        return _result(target, started, FailureReason.BAD_BODY, "version is not 1 to 64 characters", cert_matches)
    if not isinstance(said_time, str) or not TIMESTAMP.fullmatch(said_time):
        return _result(target, started, FailureReason.BAD_BODY, "time is not a UTC timestamp", cert_matches)
    return _result(target, started, None, "", cert_matches)


def _session(ssl_context: ssl.SSLContext | None, concurrency: int) -> aiohttp.ClientSession:
    connector = CertificateKeepingConnector(limit=concurrency, ssl=ssl_context if ssl_context else True,
                                            ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, headers={"User-Agent": "mpim-registry-health"})


async def poll_all(targets: list[PollTarget], *, ssl_context: ssl.SSLContext | None = None, timeout: float = 5.0,
                   concurrency: int = 500, session: aiohttp.ClientSession | None = None) -> list[PollResult]:
    """Every target as fast as the concurrency bound allows."""
    gate = asyncio.Semaphore(concurrency)

    async def bounded(client, target):
        async with gate:
            return await poll_one(client, target, timeout)

    if session is not None:
        return list(await asyncio.gather(*(bounded(session, t) for t in targets)))
    async with _session(ssl_context, concurrency) as client:
        return list(await asyncio.gather(*(bounded(client, t) for t in targets)))


# The share of a spread round's interval left after its last poll has timed out, for what the round does besides
# polling: `targets()` before the polls, the apply and the webhook after them. A round that runs past its interval
# makes the scheduler skip the next one (one instance of a job at a time), which halves every node's polling.
# A fixed share rather than the previous round's apply time as measured: the window decides each node's offset,
# and a window moving with the last measurement would move every node's poll from round to round (and a new
# leader or a `run-job` has no measurement). The apply grows with the nodes, not with the interval: at 10,000
# nodes it takes seconds (bench/health.py), within a fifth of the default 30 s.
ROUND_HEADROOM = 0.2


def spread_window(interval_s: float, timeout: float) -> float:
    """The seconds of a round over which its polls start, each node at its `stable_offset` within them: what is
    left of the interval after the slowest poll (`timeout`) and the ROUND_HEADROOM share. None left (a timeout
    close to the interval): every poll at once."""
    return max(0.0, interval_s - timeout - interval_s * ROUND_HEADROOM)


async def poll_spread(targets: list[PollTarget], interval_s: float, *, ssl_context: ssl.SSLContext | None = None,
                      timeout: float = 5.0, concurrency: int = 500) -> list[PollResult]:
    """Each node at its stable offset within the interval (Prometheus-style), not all at once."""
    gate = asyncio.Semaphore(concurrency)
    window = spread_window(interval_s, timeout)

    async def delayed(client, target):
        await asyncio.sleep(stable_offset(target.node_id, window) if window else 0)
        async with gate:
            return await poll_one(client, target, timeout)

    async with _session(ssl_context, concurrency) as client:
        return list(await asyncio.gather(*(delayed(client, t) for t in targets)))


class DaemonThreads(concurrent.futures.ThreadPoolExecutor):
    """Each call in a daemon thread of its own: the default executor of a round's loop, on which aiohttp looks host
    names up (getaddrinfo). A node's timeout ends the await of its lookup, not the call: a pool's threads are joined
    when the round ends (asyncio.run) and when the process exits, so a name whose DNS does not answer held the round
    past its headroom, then `flask health poll --once` and a scheduler's stop, for as long as the resolver tried; and
    a pool of cpu + 4 threads let as many such names time every other lookup out. A hung thread ends on its own,
    its result unread. As many threads as lookups under way: at most one per node a round polls. A
    ThreadPoolExecutor only because the loop takes no other kind as its default; its pool is never used."""

    def submit(self, fn, /, *args, **kwargs):
        future = concurrent.futures.Future()

        def call():
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:  # noqa: BLE001 (handed to whoever awaits it, as a pool does)
                future.set_exception(error)
            else:
                future.set_result(result)

        threading.Thread(target=call, name="health-lookup", daemon=True).start()
        return future


def run(coroutine):
    """Run a coroutine to its end in a loop of its own (`run_in_own_loop`), also from a thread whose event loop is
    already running (then in a helper thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_in_own_loop(coroutine)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_in_own_loop, coroutine).result()


def run_in_own_loop(coroutine):
    """asyncio.run, except for its default executor (`DaemonThreads`), whose threads neither its end nor the
    process's exit waits for."""
    loop = asyncio.new_event_loop()
    loop.set_default_executor(DaemonThreads())
    asyncio.set_event_loop(loop)  # as asyncio.run: code asking for "the current loop" gets this one
    try:
        return loop.run_until_complete(coroutine)
    finally:
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def poll_once(targets: list[PollTarget], **options) -> list[PollResult]:
    return run(poll_all(targets, **options))
