"""Health alerts as their receivers see them: retries, identity, TLS and what the log says of a failure."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.health import service
from app.health.webhook import outbox, send_webhook
from tests.conftest import stop_serving
from tests.health_servers import raw_receiver
from tests.test_admission_review import admit
from tests.test_health_state import Result

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


def private_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A private CA (as an organisation's own, which no system trust store holds) and a server certificate it
    issued for 127.0.0.1: the CA's PEM, the server's certificate and its key."""
    now = dt.datetime.now(dt.UTC)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Alerts Private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(1).not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
          .sign(ca_key, hashes.SHA256()))
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "alerts receiver")]))
              .issuer_name(ca_name).public_key(server_key.public_key()).serial_number(2)
              .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
              .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), False)
              .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
              .sign(ca_key, hashes.SHA256()))
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return paths


class Receiving(BaseHTTPRequestHandler):
    """A receiver answering every POST 204, keeping its body."""

    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        Receiving.received.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@contextmanager
def tls_receiver(certificate: Path, key: Path) -> Iterator[str]:
    """An https receiver on 127.0.0.1 presenting `certificate`. Yields its URL."""
    Receiving.received = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiving)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)  # a failed handshake is dropped unserved
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_port}/hook?token=S3CRET"
    finally:
        stop_serving(server, thread)


def webhook_log(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mpim.health"]


def test_an_https_receiver_with_a_private_ca_gets_the_alert_with_mpim_health_webhook_ca(app, make_user, tmp_path,
                                                                                         caplog):
    """From a review: an https receiver whose certificate a private CA issued could not be reached (the send
    trusted the system's CAs only), with no documented way to trust that CA. MPIM_HEALTH_WEBHOOK_CA names it;
    a round's alert, queued by `apply_round` with the round's configuration, is delivered."""
    node = admit(make_user("jx-admin", "provincial_admin", ("360000",)), make_user("minister"))
    ca, certificate, key = private_ca(tmp_path)
    with tls_receiver(certificate, key) as url:
        app.config.update(MPIM_HEALTH_WEBHOOK_URL=url, MPIM_HEALTH_WEBHOOK_CA=str(ca))
        for _ in range(2):
            service.apply_round([Result(node.node_id, True)])  # unknown → up: an alert
        assert outbox.wait(60)
    assert [json.loads(body)["changes"][0]["node_id"] for body in Receiving.received] == [node.node_id]
    assert webhook_log(caplog) == []


@pytest.mark.parametrize(("trusting", "checked_against"), [
    ("system", "the system's trusted CAs: MPIM_HEALTH_WEBHOOK_CA names others"),
    ("another CA", "the CAs in MPIM_HEALTH_WEBHOOK_CA")])
def test_a_receiver_certificate_that_fails_verification_is_logged_once_and_not_retried(app, tmp_path, caplog,
                                                                                        trusting, checked_against):
    """Three attempts at a certificate the sender does not trust cannot pass: each was logged as aiohttp's text
    (`[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)`, the host and port). One attempt, one line saying why in
    the poller's words, and which CAs the sender trusts."""
    _ca, certificate, key = private_ca(tmp_path)
    (tmp_path / "other").mkdir()
    other_ca = str(private_ca(tmp_path / "other")[0]) if trusting == "another CA" else ""
    with tls_receiver(certificate, key) as url:
        assert send_webhook(url, [CHANGE], backoff=0, ca=other_ca) is False
    assert Receiving.received == []
    assert webhook_log(caplog) == [("ERROR", "health webhook not sent: the server certificate does not chain to the "
                                             f"CA; not retried (the receiver's certificate is checked against "
                                             f"{checked_against})")]


def answer_with(data: bytes):
    def answer(connection, _stop) -> None:
        connection.sendall(data)
    return answer


@pytest.mark.parametrize(("answer", "said"), [
    (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 10_000 + b"\r\n\r\n", "the answer is not valid HTTP"),
    (b"NOT HTTP AT ALL\r\n\r\n", "the answer is not valid HTTP"),
    (b"HTTP/1.1 200 OK\r\nX-<script>\x01: \xe2\x80\xae\r\nContent-Length: 2\r\n\r\n{}", "the answer is not valid HTTP"),
    (b"", "the receiver closed the connection without answering"),
    (b"HTTP/1.1 503 <script>NOT-YOURS</script>\r\nContent-Length: 0\r\n\r\n", "HTTP 503")])
def test_a_failed_attempt_is_logged_in_our_words_never_the_receivers_bytes(app, caplog, answer, said):
    """From a review: a failed attempt was logged as aiohttp's text, which quotes what the receiver sent
    (`Got more than 8190 bytes when reading: b'aaaa…'`, `Bad status line ... b'NOT HTTP AT ALL'`, a status line's
    reason phrase). Each is said as the poller says a node's (`poller.connection_failure`), naming the receiver."""
    with raw_receiver(answer_with(answer)) as url:
        assert send_webhook(url, [CHANGE], backoff=0) is False
    assert webhook_log(caplog) == [("WARNING", f"health webhook attempt {n} failed: {said}") for n in (1, 2, 3)]
    for quoted in (b"aaaa", b"NOT HTTP", b"script", b"NOT-YOURS"):
        assert quoted.decode() not in caplog.text


def test_a_refusal_is_logged_without_the_receivers_reason_phrase(app, caplog):
    with raw_receiver(answer_with(b"HTTP/1.1 401 token S3CRET expired\r\nContent-Length: 0\r\n\r\n")) as url:
        assert send_webhook(url, [CHANGE], backoff=0) is False
    assert webhook_log(caplog) == [("ERROR", "health webhook refused: HTTP 401; not retried")]


def test_a_receiver_speaking_no_tls_at_an_https_address_is_said_so_without_openssl_internals(app, caplog):
    """`[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)` and the host and port, as aiohttp says it,
    were the line; the poller's words (`tls_failure`) are."""
    with raw_receiver(answer_with(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")) as url:
        assert send_webhook(url.replace("http://", "https://"), [CHANGE], backoff=0) is False
    lines = webhook_log(caplog)
    assert [message.split(":")[0] for _, message in lines] == [f"health webhook attempt {n} failed" for n in (1, 2, 3)]
    assert all(message.endswith(": the TLS handshake failed: WRONG_VERSION_NUMBER") for _, message in lines), lines
    assert "_ssl.c" not in caplog.text and "[SSL" not in caplog.text


def test_a_proxy_that_refuses_or_asks_for_credentials_is_named_as_the_proxy(app, caplog, monkeypatch):
    """From a hostile review: with HTTPS_PROXY at a closed port each attempt said "Connection refused", as if the
    receiver refused, where it had said the proxy; a proxy's 407 was tried three times, which no retry passes."""
    import socket

    for name in ("NO_PROXY", "no_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    closed = socket.create_server(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    assert not send_webhook("https://hooks.example/hook?token=S3CRET", [CHANGE], backoff=0)
    assert webhook_log(caplog)[0] == ("WARNING", "health webhook attempt 1 failed: the proxy: Connection refused")

    caplog.clear()
    asked: list[bytes] = []

    def refuse(connection, _stop):
        asked.append(b"CONNECT")
        connection.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n")

    with raw_receiver(refuse, path="") as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        assert not send_webhook("https://hooks.example/hook?token=S3CRET", [CHANGE], backoff=0)
    assert len(asked) == 1
    assert webhook_log(caplog) == [
        ("ERROR", "health webhook not sent: the proxy asks for credentials (HTTP 407); not retried")]
