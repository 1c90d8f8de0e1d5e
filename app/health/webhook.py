"""Health alerts: a round's state changes POSTed as JSON to MPIM_HEALTH_WEBHOOK_URL, off the round.

A round only queues its alerts (`outbox.put`); one thread sends them, in the order queued, so that no receiver
holds a round up (a receiver trickling its answer held `health.poll` past its limit, and every later round was
skipped). Each send has one deadline for all its attempts and their backoff, as polling has for a poll (urllib's
per-read timeout never tripped on a receiver sending a byte a second). Redirects are not followed: urllib turned
the POST into a GET without its body, to any host, and a 200 there counted as delivered.

What a process leaves queued when it ends is given one deadline more (`Outbox.finish`, called by `flask health
poll --once` and as the scheduler stops); an alert still unsent then is logged with its changes, never dropped
silently. No log line names the URL beyond its scheme and host: a webhook's often carries its token. Nor does one
quote what the receiver sent (its bytes, a status line's reason phrase) or OpenSSL's wrapping text: a failure is
said in the poller's words (`said_failure`).

Delivery is at least once: an attempt whose answer is lost (the receiver drops the connection after reading the
alert, or answers past the attempt's timeout) is retried in full, so a receiver may get an alert more than once.
Each alert carries an `alert_id`, given when it is queued and the same on every attempt, for receivers to dedupe on.

With MPIM_HEALTH_WEBHOOK_SECRET set, each attempt is signed (`signature_headers`): X-MPIM-Timestamp, its Unix time,
and X-MPIM-Signature, `sha256=` and the hex HMAC-SHA256 of the timestamp, a dot and the body, keyed with the secret;
docs/operations.md shows a receiver checking it. The secret is never logged.

An https receiver's certificate is checked against the system's CAs, or with MPIM_HEALTH_WEBHOOK_CA set, against
that file's only (a private CA). A certificate that fails the check is logged once and not retried: the next
attempt would meet the same certificate.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import ssl
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from typing import NamedTuple
from urllib.parse import urljoin

import aiohttp

from app.config import is_http_url, url_origin
from app.database import utcnow
from app.health.poller import tls_failure, worded_failure

log = logging.getLogger("mpim.health")

# Answers that another attempt may change: the receiver is failing (5xx), or asks to be asked later.
RETRIED_STATUSES = frozenset({408, 425, 429})


def signature_headers(body: bytes, secret: str, now: float | None = None) -> dict[str, str]:
    """X-MPIM-Timestamp (Unix seconds) and X-MPIM-Signature (`sha256=<hex HMAC-SHA256 over "<timestamp>." + body>`,
    keyed with `secret`): the receiver recomputes it to know the alert is ours, and refuses an old timestamp so
    that a captured alert cannot be replayed later. Empty without a secret."""
    if not secret:
        return {}
    timestamp = str(int(time.time() if now is None else now))
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return {"X-MPIM-Timestamp": timestamp, "X-MPIM-Signature": f"sha256={digest}"}


def new_alert_id() -> str:
    """An alert's identity, made once when it is queued: the alert is not one health event (it may carry several
    changes, or a late one whose event was recorded in an earlier round), so it is named by a random UUID."""
    return str(uuid.uuid4())


def send_webhook(url: str, changes: list, attempts: int = 3, timeout: float = 5.0, backoff: float = 0.5,
                 deadline: float = 15.0, found_at: datetime | None = None, secret: str = "",
                 alert_id: str = "", ca: str = "") -> bool:
    """POST the state changes as JSON; a failure is logged, never raised. What may pass next time is retried with
    backoff: a refused or timed-out connection, an unresolved name, a 5xx, 429, or an answer that is no HTTP at
    all. What cannot is logged once and not retried: a URL that cannot be opened (the start refuses one,
    `config.env_http_url`; the config may still hold one), a 4xx refusing the request, a redirect, and a server
    certificate that fails verification: against the CAs in the PEM file `ca` when given, else the system's.
    `timeout` bounds each attempt, `deadline` the whole send, its backoff included: past it, the send is given up.
    The body's "time" is `found_at`, when the round found the changes (queued behind a slow receiver, an alert is
    sent later than that), else now. Its "alert_id" is `alert_id` (else a new one): the same on every attempt, as
    the whole body is. With a `secret`, each attempt is signed as it is made (`signature_headers`)."""
    if not is_http_url(url):
        log.error("health webhook not sent: MPIM_HEALTH_WEBHOOK_URL is no http:// or https:// address with a host"
                  " and no user name or password; not retried")
        return False
    body = json.dumps({"event": "node_health_changed", "alert_id": alert_id or new_alert_id(),
                       "time": (found_at or utcnow()).isoformat(),
                       "changes": [c.__dict__ for c in changes]}, ensure_ascii=False).encode()
    try:
        trusted: ssl.SSLContext | bool = ssl.create_default_context(cafile=ca) if ca else True
    except OSError:  # read at the start (`config.env_ca_file`), and changed since
        log.error("health webhook not sent: MPIM_HEALTH_WEBHOOK_CA %s no longer holds PEM certificates that can be"
                  " read; not retried", ca)
        return False
    from app.health import poller  # its `run`: asyncio.run, also from a thread whose loop is running
    return poller.run(_send(url, body, attempts, timeout, backoff, deadline, secret, trusted))


async def _send(url: str, body: bytes, attempts: int, timeout: float, backoff: float, deadline: float,
                secret: str = "", trusted: ssl.SSLContext | bool = True) -> bool:
    made = 0
    try:
        # trust_env: the proxy settings (HTTPS_PROXY, NO_PROXY) apply, as they did with urllib.
        async with asyncio.timeout(deadline), aiohttp.ClientSession(
                trust_env=True, connector=aiohttp.TCPConnector(force_close=True, ssl=trusted)) as client:
            for made in range(1, attempts + 1):
                delivered = await _attempt(client, url, body, made, timeout, secret, trusted is not True)
                if delivered is not None:
                    return delivered
                if made < attempts:
                    await asyncio.sleep(backoff * 2 ** (made - 1))
    except TimeoutError:
        log.error("health webhook not sent: not done within its %g s deadline (attempt %d of %d cut short);"
                  " given up", deadline, made, attempts)
    return False


async def _attempt(client: aiohttp.ClientSession, url: str, body: bytes, attempt: int,
                   timeout: float, secret: str = "", own_ca: bool = False) -> bool | None:
    """True: delivered; False: failed, and another attempt would fail the same way; None: failed, and the next
    attempt may pass. Each failure is logged here."""
    # Signed at each attempt: a retry after backoff carries its own time, which the receiver checks for freshness.
    headers = {"Content-Type": "application/json", **signature_headers(body, secret)}
    try:
        async with asyncio.timeout(timeout), client.post(url, data=body, allow_redirects=False,
                                                         headers=headers) as response:
            status, location = response.status, response.headers.get("Location")
    except TimeoutError:
        log.warning("health webhook attempt %s failed: no answer within %g s", attempt, timeout)
        return None
    except aiohttp.ClientConnectorCertificateError as error:
        trusted = "the CAs in MPIM_HEALTH_WEBHOOK_CA" if own_ca else \
            "the system's trusted CAs: MPIM_HEALTH_WEBHOOK_CA names others"
        log.error("health webhook not sent: %s; not retried (the receiver's certificate is checked against %s)",
                  tls_failure(error), trusted)
        return False
    except aiohttp.ClientHttpProxyError as error:
        if error.status != 407:
            log.warning("health webhook attempt %s failed: %s", attempt, said_failure(error))
            return None
        log.error("health webhook not sent: the proxy asks for credentials (HTTP 407); not retried")
        return False
    except aiohttp.InvalidURL:  # what still cannot be opened (is_http_url lets it pass): never raised
        log.error("health webhook not sent: InvalidURL: MPIM_HEALTH_WEBHOOK_URL cannot be opened; not retried")
        return False
    except (aiohttp.ClientError, OSError, ValueError) as error:
        log.warning("health webhook attempt %s failed: %s", attempt, said_failure(error))
        return None
    if 200 <= status < 300:
        return True
    if 300 <= status < 400:
        target = url_origin(urljoin(url, location)) if location else "an address not given"
        log.error("health webhook redirected (HTTP %s to %s); not retried; point MPIM_HEALTH_WEBHOOK_URL at the "
                  "final address", status, target)
        return False
    # The status only: its reason phrase is the receiver's text.
    if 400 <= status < 500 and status not in RETRIED_STATUSES:
        log.error("health webhook refused: HTTP %s; not retried", status)
        return False
    log.warning("health webhook attempt %s failed: HTTP %s", attempt, status)
    return None


def said_failure(error: Exception) -> str:
    """What an attempt's exception stands for, in the poller's words (`poller.worded_failure`), the receiver in the
    node's place: never aiohttp's text, which quotes the receiver's bytes (`Bad status line ... b'...'`) and the
    URL, query and token included, nor OpenSSL's wrapping (`[SSL: ...] ... (_ssl.c:1006)`). A proxy
    (HTTPS_PROXY) is named as the proxy, not taken for the receiver."""
    if isinstance(error, aiohttp.ClientHttpProxyError):  # a ClientResponseError: the proxy's answer to CONNECT
        return f"the proxy answered HTTP {error.status}"
    if isinstance(error, aiohttp.ClientProxyConnectionError):  # a ClientConnectorError
        return f"the proxy: {os.strerror(error.os_error.errno) if error.os_error.errno else 'cannot be reached'}"
    worded = worded_failure(error, peer="the receiver")
    if worded is not None:
        return worded[1]
    if isinstance(error, OSError) and error.errno:  # a reset or a broken pipe once connected
        return os.strerror(error.errno)
    return f"{type(error).__name__} (its message may quote the URL or the answer, so is not shown)"


class Alert(NamedTuple):
    url: str
    changes: list
    deadline: float
    found_at: datetime  # when queued: the body's "time", however long the alert waits behind another
    secret: str = ""  # MPIM_HEALTH_WEBHOOK_SECRET when queued; "" sends the alert unsigned
    alert_id: str = ""  # the body's "alert_id", the same on every attempt (`new_alert_id`)
    ca: str = ""  # MPIM_HEALTH_WEBHOOK_CA when queued: the CAs an https receiver's certificate must chain to

    def __repr__(self) -> str:  # never the secret (nor the URL's token) in a log line or a traceback
        return f"Alert({summary(self.changes)})"


class Outbox:
    """Alerts waiting to be sent, and the one thread sending them in the order queued (started with the first)."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.waiting: deque[Alert] = deque()
        self.sending: Alert | None = None
        self.thread: threading.Thread | None = None

    def put(self, url: str, changes: list, deadline: float = 15.0, secret: str = "", ca: str = "") -> None:
        """Queue an alert. `secret` and `ca` (the CAs to trust for an https receiver, "" for the system's) are
        the round's configuration, given here because the alert is sent outside any app context."""
        with self.changed:
            self.waiting.append(Alert(url, changes, deadline, utcnow(), secret, new_alert_id(), ca))
            if self.thread is None or not self.thread.is_alive():
                # A daemon: a process ending without `finish` (killed, or past the scheduler's stop grace) must
                # not hang on a receiver.
                self.thread = threading.Thread(target=self._send_all, name="health-webhook", daemon=True)
                self.thread.start()
            self.changed.notify_all()

    def _send_all(self) -> None:
        while True:
            with self.changed:
                while not self.waiting:
                    self.changed.wait()
                self.sending = self.waiting.popleft()
            alert = self.sending
            try:
                send_webhook(alert.url, alert.changes, deadline=alert.deadline, found_at=alert.found_at,
                             secret=alert.secret, alert_id=alert.alert_id, ca=alert.ca)
            except Exception:  # send_webhook raises nothing by contract; the thread must outlive a bug in it
                log.exception("health webhook not sent: %s", summary(alert.changes))
            finally:
                with self.changed:
                    self.sending = None
                    self.changed.notify_all()

    def wait(self, timeout: float) -> bool:
        """Until every alert queued is sent or given up, at most `timeout` s: True when none is left."""
        with self.changed:
            return self.changed.wait_for(lambda: not self.waiting and self.sending is None, timeout)

    def finish(self) -> bool:
        """At a process's end: give what is left the longest deadline among it, then log each alert still unsent
        (with its changes: the operator learns of them from the log instead). True when none was left."""
        with self.changed:
            left = [item for item in (self.sending, *self.waiting) if item is not None]
        if not left or self.wait(max(alert.deadline for alert in left) + 1):
            return True
        with self.changed:
            unsent = [item for item in (self.sending, *self.waiting) if item is not None]
            self.waiting.clear()  # the daemon thread dies with the process: these would never go
        for alert in unsent:
            log.error("health webhook not sent: the process ended first; unsent: %s", summary(alert.changes))
        return not unsent


def summary(changes: list) -> str:
    return ", ".join(f"{c.node_id} {c.old}→{c.new}" + (" (after maintenance)" if c.after_maintenance else "")
                     for c in changes)


outbox = Outbox()
