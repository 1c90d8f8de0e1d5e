"""Health alerts as their receivers see them: retries, identity, TLS and what the log says of a failure."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.health import service
from app.health.webhook import outbox, send_webhook
from tests.conftest import stop_serving

CHANGE = service.StatusChange("36000000002025000001", "up", "down", "timeout", "no answer within 5 s", False)


class FirstAttemptUnanswered(BaseHTTPRequestHandler):
    """A receiver that reads each POST whole and records it, then leaves every odd one (each alert's first attempt,
    alerts being sent one after another) unanswered: it drops the connection, or holds it past the sender's timeout
    (until the test ends). The rest get a 204."""

    how = "dropped"
    received: list = []  # (headers, body bytes) of every request read, answered or not
    release = threading.Event()

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        FirstAttemptUnanswered.received.append((dict(self.headers), body))
        if len(FirstAttemptUnanswered.received) % 2:
            if FirstAttemptUnanswered.how == "slow":
                FirstAttemptUnanswered.release.wait()  # the test's end; the sender has given this attempt up
            self.close_connection = True
            return
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def first_attempt_unanswered() -> Iterator[str]:
    FirstAttemptUnanswered.how, FirstAttemptUnanswered.received = "dropped", []
    FirstAttemptUnanswered.release = threading.Event()
    server = ThreadingHTTPServer(("127.0.0.1", 0), FirstAttemptUnanswered)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    assert outbox.wait(60)
    FirstAttemptUnanswered.release.set()
    stop_serving(server, thread)


@pytest.mark.parametrize("how", ["dropped", "slow"])
def test_a_retried_alert_carries_the_same_alert_id_and_each_alert_its_own(app, first_attempt_unanswered, how):
    """From a review: a receiver that dropped the connection after reading the alert, or answered past the
    timeout, got it again in full on the next attempt, with nothing to tell a retry from a new alert. Each alert
    carries an `alert_id`, the same on each of its attempts, another for the next alert: receivers dedupe on it."""
    FirstAttemptUnanswered.how = how
    assert send_webhook(first_attempt_unanswered, [CHANGE], timeout=0.5, backoff=0) is True
    assert send_webhook(first_attempt_unanswered, [CHANGE], timeout=0.5, backoff=0) is True
    bodies = [body for _headers, body in FirstAttemptUnanswered.received]
    assert len(bodies) == 4 and bodies[0] == bodies[1] and bodies[2] == bodies[3]  # each retry sent in full
    first, second = json.loads(bodies[0])["alert_id"], json.loads(bodies[2])["alert_id"]
    assert first and second and first != second


def test_alerts_queued_by_rounds_each_carry_their_own_alert_id_under_the_signature(app, first_attempt_unanswered):
    """The outbox gives each alert its id when the round queues it; the signature covers it with the rest of the
    body, so a receiver deduping on it dedupes on what the registry said."""
    secret = "w3bh00k-S3CRET"
    outbox.put(first_attempt_unanswered, [CHANGE], secret=secret)
    outbox.put(first_attempt_unanswered, [CHANGE], secret=secret)
    assert outbox.wait(60)
    ids = [json.loads(body)["alert_id"] for _headers, body in FirstAttemptUnanswered.received]
    assert len(ids) == 4 and ids[0] == ids[1] != ids[2] == ids[3]
    for headers, body in FirstAttemptUnanswered.received:
        timestamp = headers["X-MPIM-Timestamp"]
        expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
        assert headers["X-MPIM-Signature"] == f"sha256={expected}"
