"""What a peer or the management node answers is read without trusting its shape: an error body nested
deeper than Python's JSON parser goes reads as 'no usable error', never as an exception in the sender;
an answer that never ends is cut off at a limit, never read into memory whole."""

from __future__ import annotations

import json
import ssl
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler
from types import SimpleNamespace

import pytest

from app import readable
from app.appnode import outbox
from app.appnode.node import Node
from app.appnode.protocol import Unavailable, UnknownPeer
from app.appnode.registry import REGISTRY_ANSWER_LIMIT, HTTPResult, RegistryClient, RegistryError
from app.appnode.store import utcnow
from app.appnode.transport import ANSWER_LIMIT, PeerAnswerTooLarge, PeerPool, PeerUnreachable
from app.errors import Conflict
from tests.conftest import stop_serving
from tests.factories import loopback_tls_server, not_strict_bodies
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)

NESTED = b"[" * 5000


def test_a_peers_error_body_nested_too_deep_is_a_plain_peer_error():
    error = Node._peer_error(SimpleNamespace(body=NESTED, status=500))
    assert error.code == "peer_error" and "HTTP 500" in error.message
    assert Node._error_code(NESTED) is None


def test_a_registry_error_body_nested_too_deep_names_the_http_status():
    error = RegistryClient.fail(HTTPResult(502, {}, NESTED), "apply")
    assert error.message == "apply: HTTP 502"


def test_a_registry_answer_that_is_not_strict_json_is_a_registry_error_not_a_value_guessed_at():
    """A session answer naming its token twice was read as the last one; one with a BOM or in UTF-16 was read
    too. Each is a RegistryError saying why, and an error answer of that kind names only the HTTP status."""
    answer = {"token": "T" * 43, "expires_at": "2026-01-01T00:00:00Z", "nested": {"k": 1}}
    for case, (body, reason) in not_strict_bodies(answer, duplicate="token", nested="nested").items():
        with pytest.raises(RegistryError, match="not strict JSON") as refused:
            HTTPResult(201, {}, body).json()
        assert reason in refused.value.message, case
    error = {"error": {"code": "invalid_json", "message": "m"}}
    for case, (body, _) in not_strict_bodies(error, duplicate="error", nested="error").items():
        assert RegistryClient.fail(HTTPResult(400, {}, body), "apply").message == "apply: HTTP 400", case
    assert RegistryClient.fail(HTTPResult(400, {}, b'{"error": "text"}'), "apply").message == "apply: HTTP 400"


def test_a_peers_error_answer_that_is_not_strict_json_is_a_plain_peer_error():
    """A peer's refusal naming its code twice ({"code": "rate_limited", "code": "forbidden"}) or sent with a BOM
    or in UTF-16 was read for its code, and the code decides whether the sender retries."""
    error = {"error": {"code": "forbidden", "message": "m"}}
    for case, (body, _) in not_strict_bodies(error, duplicate="error", nested="error").items():
        assert Node._error_code(body) is None, case
        refusal = Node._peer_error(SimpleNamespace(body=body, status=403))
        assert (refusal.code, refusal.message) == ("peer_error", "peer answered HTTP 403"), case


def test_an_answer_with_an_integer_longer_than_python_converts_is_refused_as_not_strict_json():
    """Python 3.11 refuses an integer of more than 4,300 digits with a plain ValueError, which escaped the strict
    reader: a registry answer of that kind is a RegistryError and a peer's error answer names its HTTP status."""
    body = b'{"error": {"code": "rate_limited", "message": "m", "n": ' + b"9" * 5000 + b"}}"
    with pytest.raises(RegistryError, match="not strict JSON"):
        HTTPResult(200, {}, body).json()
    assert RegistryClient.fail(HTTPResult(429, {}, body), "apply").message == "apply: HTTP 429"
    assert Node._error_code(body) is None
    assert Node._peer_error(SimpleNamespace(body=body, status=429)).code == "peer_error"


class EndlessAnswer(BaseHTTPRequestHandler):
    """A peer whose answer never ends (chunked, no length), or announces a length it would not fit."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802 (the http.server hook's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path == "/silent":  # a peer that takes the request and never answers
            time.sleep(60)
            return
        self.send_response(200)
        if self.path == "/announces":
            self.send_header("Content-Length", str(10 * 1024 ** 3))
            self.end_headers()
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        chunk = b"x" * 65536
        try:
            while True:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        except OSError:  # the reader hung up: what the test wants
            pass

    def log_message(self, *_args):
        pass


@pytest.fixture
def endless_peer(tmp_path):
    server, thread, certificate_file = loopback_tls_server(EndlessAnswer, tmp_path)
    client = ssl.create_default_context(cafile=str(certificate_file))
    yield PeerPool(lambda: client), f"https://127.0.0.1:{server.server_address[1]}"
    stop_serving(server, thread)


def test_an_answer_that_never_ends_is_cut_off_at_the_limit(endless_peer):
    pool, endpoint = endless_peer
    with pytest.raises(PeerAnswerTooLarge, match=f"runs past {ANSWER_LIMIT} bytes"):
        pool.post(endpoint, "/endless", b"{}", pin=None)
    with tempfile.TemporaryFile() as into:  # a download: to a file, at most the declared size
        with pytest.raises(PeerAnswerTooLarge, match="runs past 200000 bytes"):
            pool.post(endpoint, "/endless", b"{}", pin=None, into=into, limit=200_000)
        assert into.tell() <= 200_000


def test_an_answer_announcing_more_than_the_limit_is_refused_before_reading(endless_peer):
    pool, endpoint = endless_peer
    with pytest.raises(PeerAnswerTooLarge, match="announces 10737418240 bytes"):
        pool.post(endpoint, "/announces", b"{}", pin=None)


def test_a_stopping_node_abandons_a_request_a_silent_peer_never_answers(endless_peer):
    """At exit the process waited for the slowest answer (up to 30 s), past gunicorn's 10 s grace, and was
    killed. `abort` (Node.close, from the worker's exit hook) ends such a request at once."""
    pool, endpoint = endless_peer
    outcome = {}

    def deliver():
        started = time.monotonic()
        try:
            pool.post(endpoint, "/silent", b"{}", pin=None)
        except PeerUnreachable as error:
            outcome["error"] = str(error)
        outcome["seconds"] = time.monotonic() - started

    sender = threading.Thread(target=deliver)
    sender.start()
    time.sleep(0.5)  # the request is out, its answer awaited
    assert sender.is_alive()
    pool.abort()
    sender.join(timeout=5)
    assert not sender.is_alive() and "this node is stopping" in outcome["error"], outcome
    with pytest.raises(PeerUnreachable, match="stopping"):
        pool.post(endpoint, "/endless", b"{}", pin=None)  # nothing new starts


def answering_unavailable(retry_after: str):
    """A peer node that takes nothing now and says when to come back. The value goes on the wire as UTF-8, as a
    hostile peer may write it: WSGI takes header values as Latin-1 text, and the server refused anything else
    (the client then waited out its own 30 s timeout, never reading a Retry-After at all)."""
    def answer(environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("503 Service Unavailable", [("Content-Type", "application/json"),
                                                   ("Retry-After", retry_after.encode().decode("latin-1"))])
        return [json.dumps(Unavailable("busy").to_dict()).encode()]
    return answer


@pytest.mark.parametrize("retry_after", ["1e400", "99999999999999", "٣٠٠٠٠٠٠٠٠٠٠٠٠٠٠"])
def test_a_peers_retry_after_beyond_the_calendar_is_no_crash_and_no_endless_wait(network, retry_after):  # noqa: F811
    """float() took "1e400" (infinity), a delay past year 9999, and Arabic-Indic digits: the user's send failed
    with OverflowError, and in the loop the whole batch of envelopes with it was never written back."""
    a, b = network["a"], network["b"]
    b.server.app = answering_unavailable(retry_after)
    message = a.node.send_text("zhangsan", b.user("lisi"), "稍后再试")
    [row] = a.node.outbox()
    assert (row.message_id, row.state) == (message.message_id, "pending")
    assert "busy" in row.last_error  # the peer's answer was read, not waited out
    assert row.next_attempt_at <= utcnow() + outbox.RETRY_AFTER_MAX


def test_a_retry_after_given_as_an_http_date_is_waited_for(network):  # noqa: F811
    """RFC 9110 lets Retry-After be an HTTP-date, which a proxy in front of a peer may send; it was read as no
    delay at all (the sender's own back-off, seconds), and a renewal asked again every 5 s."""
    a, b = network["a"], network["b"]
    b.server.app = answering_unavailable(format_datetime(utcnow() + timedelta(minutes=20), usegmt=True))
    a.node.send_text("zhangsan", b.user("lisi"), "二十分钟后")
    [row] = a.node.outbox()
    assert row.state == "pending"
    assert utcnow() + timedelta(minutes=18) < row.next_attempt_at <= utcnow() + timedelta(minutes=20)


@pytest.mark.parametrize(("value", "seconds"), [
    ("Wed, 02 Dec 2026 08:20:00 GMT", 1200.0), ("Wednesday, 02-Dec-26 08:20:00 GMT", 1200.0),
    ("Wed Dec  2 08:20:00 2026", 1200.0), ("Wed, 02 Dec 2026 07:00:00 GMT", 0.0),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 3600.0), ("Wed, 99 Foo 2026 08:20:00 GMT", 0.0), ("x" * 100, 0.0),
    ("１２", 0.0), ("120", 120.0)])
def test_retry_after_reads_seconds_and_the_three_http_date_forms_and_nothing_else(value, seconds):
    now = datetime(2026, 12, 2, 8, 0, tzinfo=UTC)
    assert outbox.retry_after_seconds(value, now) == seconds


def test_an_answer_length_in_superscript_digits_is_no_length_and_no_crash(network):  # noqa: F811
    """A "²" length: "²".isdigit() holds but int("²") fails; the ValueError escaped the transport, so the send
    failed and the loop lost the batch. A length that is not ASCII digits is no length; the answer is
    still read to its limit."""
    a, b = network["a"], network["b"]
    served = b.server.app

    def superscript_length(environ, start_response):
        def start(status, headers, *args):
            return start_response(status, [(name, "²" if name.lower() == "content-length" else value)
                                           for name, value in headers], *args)
        return served(environ, start)
    b.server.app = superscript_length
    message = a.node.send_text("zhangsan", b.user("lisi"), "上标")
    assert a.node.outbox()[0].state == "delivered"
    assert b.node.history("lisi", message.conversation_id)[0]["message"].document["content"]["text"] == "上标"


HOSTILE_MESSAGE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mgone\u202e" + "x" * 3000


def test_a_peers_error_text_is_escaped_and_bounded_and_a_code_that_is_no_snake_case_code_is_not_taken():
    """A peer's refusal reached the operator's terminal raw: escape sequences cleared the screen and printed a
    fake success, and 3,000 characters were echoed whole. Its code was taken as given ("not_found\\x1b[2J")."""
    body = json.dumps({"error": {"code": "not_found\x1b[2J", "message": HOSTILE_MESSAGE}}).encode()
    assert Node._error_code(body) is None
    refusal = Node._peer_error(SimpleNamespace(body=body, status=404))
    assert refusal.code == "peer_error" and refusal.status == 404
    assert "not_found\\u001b[2J" in refusal.message  # the code given, shown escaped
    assert "\\u001b]0;pwned\\u0007\\u001b[2J\\u001b[31mgone\\u202e" in refusal.message
    assert not any(ch in refusal.message for ch in "\x1b\x07\u202e") and len(refusal.message) < 400
    assert "more characters" in refusal.message

    body = json.dumps({"error": {"code": "not_found", "message": "a\\b\n\u2028c"}}).encode()
    refusal = Node._peer_error(SimpleNamespace(body=body, status=404))
    assert (refusal.code, refusal.message) == ("not_found", "peer: a\\\\b\\n\\u2028c")
    for code in ("NotFound", "x" * 65, "not-found", "_x", 7, None):
        body = json.dumps({"error": {"code": code, "message": "m"}}).encode()
        assert Node._error_code(body) is None, code
        assert Node._peer_error(SimpleNamespace(body=body, status=400)).code == "peer_error", code


def answering_200(body: bytes, content_type: str = "application/json"):
    """A peer (or a proxy in front of it, presenting its certificate) that answers every request 200 with `body`."""
    def answer(environ, start_response):
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", content_type)])
        return [body]
    return answer


@pytest.mark.parametrize(("body", "content_type"), [
    (b"<html>maintenance</html>", "text/html"),
    (b"{}", "application/json"),
    (json.dumps({"status": "accepted", "message_id": "019761eb-c248-7fe9-8e2a-a164507f46e1",
                 "received_at": "2026-12-06T08:00:00.000Z"}).encode(), "application/json"),  # another message's
    (b'{"status": "ok"}', "application/json"),
])
def test_a_200_that_is_no_acknowledgement_of_the_message_is_retried_not_taken_as_delivered(network, body, content_type):  # noqa: F811,E501
    """§5.2: a 200 carries the acknowledgement of the envelope sent. Any 200 counted as delivered, and a proxy's
    maintenance page lost the message for good."""
    a, b = network["a"], network["b"]
    b.server.app = answering_200(body, content_type)
    message = a.node.send_text("zhangsan", b.user("lisi"), "到了吗")
    [row] = a.node.outbox()
    assert (row.message_id, row.state, row.attempts) == (message.message_id, "pending", 1)
    assert row.last_error.startswith("HTTP 200 without an acknowledgement of this envelope")


def test_an_acknowledged_envelope_is_delivered_without_its_answer_written_out_as_an_error(network):  # noqa: F811
    """A delivered row keeps no error, so the answer is escaped for one (`bounded_line`) only when it is no
    acknowledgement: escaping every acknowledgement anyway, character by character, cost each delivery about a
    fifth more instructions on the sending node (bench/messages.py)."""
    a, b = network["a"], network["b"]
    written = []

    def watch(frame, event, arg):
        if event == "call" and frame.f_code is readable.bounded_line.__code__:
            written.append(frame.f_locals["value"])

    sys.setprofile(watch)
    threading.setprofile(watch)
    try:
        message = a.node.send_text("zhangsan", b.user("lisi"), "到了吗")
    finally:
        threading.setprofile(None)
        sys.setprofile(None)
    [row] = a.node.outbox()
    assert (row.message_id, row.state, row.last_error) == (message.message_id, "delivered", None)
    assert written == []


def test_a_group_request_answered_200_without_an_acknowledgement_is_queued_not_accepted(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    a.server.app = answering_200(b"<html>maintenance</html>", "text/html")
    assert b.node.group_operation("lisi", f"{group.group_id}@{a.id}", "quit") == "queued"
    [row] = [row for row in b.node.outbox() if row.kind == "group_op"]
    assert row.state == "pending" and "without an acknowledgement" in row.last_error


def test_an_ephemeral_batch_answered_200_without_an_acknowledgement_is_not_counted_sent(network):  # noqa: F811
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    a.node.set_presence("zhangsan", "busy", "android")
    b.server.app = answering_200(b"<html>maintenance</html>", "text/html")
    assert a.node.flush_ephemeral() == 0  # kept for its next try (§6: at most 3 within 60 s)
    b.server.app = answering_200(b"{}")
    assert a.node.flush_ephemeral() == 0


def test_a_member_confirmation_answered_200_without_an_acknowledgement_refuses_the_operation(network):  # noqa: F811
    a, b = network["a"], network["b"]
    b.server.app = answering_200(b"<html>maintenance</html>", "text/html")
    with pytest.raises(Conflict, match=r"answered HTTP 200 without an acknowledgement \(not JSON\); nothing changed"):
        a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    assert a.node.groups("zhangsan") == []


def acking_loosely(**extra):
    """A peer of another make whose ack names the envelope and says accepted, with its own additions: another
    field, or its time spelled another way (or left out)."""
    def answer(environ, start_response):
        envelope = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"status": "accepted", "message_id": envelope["message_id"], **extra}).encode()]
    return answer


LOOSE_ACKS = [{"received_at": "2026-12-06T08:00:00Z", "server": "other-im 2.1"},
              {"received_at": "2026-12-06 08:00:00+08:00"}, {}]


@pytest.mark.parametrize("extra", LOOSE_ACKS, ids=["extra-field", "other-time", "no-time"])
def test_an_ack_naming_the_envelope_as_accepted_is_taken_whatever_else_it_holds(network, extra):  # noqa: F811
    """Only what matters is checked: a JSON object acknowledging this envelope, accepted or duplicate. The whole
    ack schema was, and a peer's ack with another field or another time spelling was retried for 48 hours."""
    a, b = network["a"], network["b"]
    b.server.app = acking_loosely(**extra)
    message = a.node.send_text("zhangsan", b.user("lisi"), "到了吗")
    [row] = a.node.outbox()
    assert (row.message_id, row.state) == (message.message_id, "delivered"), row.last_error
    a.node.set_presence("zhangsan", "busy", "android")
    assert a.node.flush_ephemeral() == 1
    assert a.node.create_group("zhangsan", "专班", [b.user("lisi")]).name == "专班"


class BrokenRegistryAnswer(BaseHTTPRequestHandler):
    """A management node, or a proxy before it, whose answers break (`server.mode`): cut short of their length,
    a chunk cut off, a status line that is no HTTP, a length past any table, or no length and no end."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (the http.server hook's name)
        self.server.requests.append(self.path)
        self.close_connection = True
        mode = self.server.mode
        if mode == "not_http":
            self.wfile.write(b"SPDY/9 200 OK\r\n\r\n{}")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "cut_short":
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b'{"version": 7, "nodes": [')
        elif mode == "chunk_cut":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b'40\r\n{"version": 7, "nodes": [')
        elif mode == "announces":
            self.send_header("Content-Length", str(10 * 1024 ** 3))
            self.end_headers()
        else:  # endless: no length, the answer ends when the connection does
            self.end_headers()
            try:
                while True:
                    self.wfile.write(b" " * 65536)
            except OSError:  # the reader hung up: what the test wants
                pass

    def log_message(self, *_args):
        pass


@pytest.fixture
def broken_registry():
    from http.server import ThreadingHTTPServer

    server = ThreadingHTTPServer(("127.0.0.1", 0), BrokenRegistryAnswer)
    server.mode, server.requests = "cut_short", []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    stop_serving(server, thread)


@pytest.mark.parametrize("mode", ["cut_short", "chunk_cut", "not_http"])
def test_a_table_answer_cut_short_or_not_http_is_an_unreachable_registry_not_a_crash(network, broken_registry,  # noqa: F811
                                                                                   mode):
    """`http.client` raises IncompleteRead and BadStatusLine, which are no OSError: `routes pull` and `send` ended
    in a traceback. The pull is refused as the management node unreachable, and a send to a node the table does
    not list is refused as such, the failed pull counting for the 30 s before the next."""
    a = network["a"]
    broken_registry.mode = mode
    a.node.registry.base_url = f"http://127.0.0.1:{broken_registry.server_address[1]}"
    with pytest.raises(RegistryError) as refused:
        a.node.sync_routes()
    assert refused.value.code == "registry_unreachable"
    assert "/api/v1/routes" in refused.value.message

    a.node._recipient_pull = (0.0, None)  # the last pull for a recipient long ago: this send pulls
    for _ in range(2):
        with pytest.raises(UnknownPeer):
            a.node.send_text("zhangsan", "someone@11000000002025000099", "不在路由表中")
    assert broken_registry.requests.count("/api/v1/routes") == 2  # sync_routes', and the first send's only


@pytest.mark.parametrize("mode, what", [("announces", "announces 10737418240 bytes"),
                                        ("endless", f"runs past {REGISTRY_ANSWER_LIMIT} bytes")])
def test_a_registry_answer_past_the_limit_is_refused_not_read_into_memory(network, broken_registry, mode, what):  # noqa: F811
    a = network["a"]
    broken_registry.mode = mode
    a.node.registry.base_url = f"http://127.0.0.1:{broken_registry.server_address[1]}"
    with pytest.raises(RegistryError) as refused:
        a.node.sync_routes()
    assert refused.value.code == "registry_answer_too_large"
    assert what in refused.value.message
