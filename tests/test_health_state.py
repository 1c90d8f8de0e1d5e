"""Damped health state, history down-sampling, events, maintenance and webhook alerts."""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from sqlalchemy import func, select

from app.admission.models import Node
from app.audit.models import AuditRecord
from app.auth.models import User
from app.database import utcnow
from app.extensions import db
from app.health import history, maintenance, service
from app.health.models import HealthEvent, HealthHourly, HealthSample, NodeHealth
from app.health.state import Counters, Thresholds, step
from app.health.webhook import outbox, send_webhook
from tests.conftest import Console, csrf_token, stop_serving
from tests.health_servers import raw_receiver
from tests.test_admission_review import admit


@dataclass
class Result:
    node_id: str
    ok: bool
    latency_ms: float | None = 12.0
    failure: str | None = None
    detail: str = ""
    cert_matches: bool | None = True
    checked_at: datetime | None = None
    endpoint: str | None = None  # the one polled: the node's when the result is made, unless given

    def __post_init__(self):
        if self.endpoint is None:
            self.endpoint = db.session.get(Node, self.node_id).endpoint


def test_step_needs_three_failures_to_go_down_and_two_successes_to_come_back():
    limits = Thresholds(failures_before_down=3, successes_before_up=2)
    state = Counters("up")
    for expected in ("up", "up", "down", "down"):
        state = step(state, False, limits)
        assert state.status == expected
    state = step(state, True, limits)
    assert state.status == "down"  # one success is not enough
    state = step(state, False, limits)
    state = step(state, True, limits)
    assert state.status == "down"  # the success streak was broken
    assert step(state, True, limits).status == "up"


def test_unknown_leaves_by_either_threshold():
    limits = Thresholds(3, 2)
    assert step(step(Counters("unknown"), True, limits), True, limits).status == "up"
    state = Counters("unknown")
    for _ in range(3):
        state = step(state, False, limits)
    assert state.status == "down"


@pytest.fixture
def node(make_user):
    minister = make_user("minister")
    jx = make_user("jx-admin", "provincial_admin", ("360000",))
    return admit(jx, minister)


def test_rounds_record_events_only_on_changes(app, node):
    for ok in (True, True, False, False, False, True):
        service.apply_round([Result(node.node_id, ok, failure=None if ok else "timeout")])
    events = db.session.scalars(select(HealthEvent).order_by(HealthEvent.id)).all()
    assert [(e.old_status, e.new_status) for e in events] == [("unknown", "up"), ("up", "down")]
    assert events[1].reason == "timeout"
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_successes) == ("down", 1)
    assert db.session.scalar(select(func.count()).select_from(HealthSample)) == 6
    hourly = db.session.scalars(select(HealthHourly)).all()
    assert sum(h.polls for h in hourly) == 6 and sum(h.successes for h in hourly) == 3


def test_a_result_older_than_the_state_is_kept_as_a_sample_and_changes_no_verdict(app, node):
    """A scheduled round applies its polls at the end of its interval; a `flask health poll --once` applied in
    between holds newer results. The round's older ones then wrote over them: the last check went back in time,
    and a success polled before newer failures ended their streak."""
    now = utcnow()
    node.status_changed_at = now - timedelta(hours=1)  # admitted before the polls (none counts from before that)
    db.session.commit()
    for ok in (True, True):
        service.apply_round([Result(node.node_id, ok, checked_at=now - timedelta(seconds=60))])
    for seconds in (30, 20):
        service.apply_round([Result(node.node_id, False, failure="timeout",
                                    checked_at=now - timedelta(seconds=seconds))])
    report = service.apply_round([Result(node.node_id, True, checked_at=now - timedelta(seconds=40))])
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_failures, health.consecutive_successes) == ("up", 2, 0)
    assert health.last_checked_at == now - timedelta(seconds=20) and health.last_failure == "timeout"
    assert report.ok == 1 and report.changes == []
    assert db.session.scalar(select(func.count()).select_from(HealthSample)) == 5  # the poll still happened
    # An older failure agrees with the newest: one more real failure in the streak, the third.
    report = service.apply_round([Result(node.node_id, False, failure="refused",
                                         checked_at=now - timedelta(seconds=25))])
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_failures) == ("down", 3)
    assert health.last_checked_at == now - timedelta(seconds=20) and health.last_failure == "timeout"
    assert [(c.old, c.new) for c in report.changes] == [("up", "down")]


def test_after_the_clock_steps_back_polls_count_though_older_than_the_last_check(app, node):
    """The last check was timed by a clock since stepped back (a host kept in local time, then corrected): every
    poll is older than it for hours. Taken as polls older than the state, the failures of a node gone down did
    not count, and it was shown up for the whole step."""
    ahead = utcnow() + timedelta(hours=8)
    for _ in range(2):
        service.apply_round([Result(node.node_id, True, checked_at=ahead)])
    for _ in range(3):
        service.apply_round([Result(node.node_id, False, failure="timeout")])
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_failures) == ("down", 3)
    assert health.last_checked_at < ahead


def test_downsampling_keeps_hourly_and_drops_old_raw(app, node):
    old = utcnow() - timedelta(days=8)
    service.apply_round([Result(node.node_id, True, checked_at=old)])
    service.apply_round([Result(node.node_id, True)])
    history.downsample()
    assert db.session.scalar(select(func.count()).select_from(HealthSample)) == 1
    assert db.session.scalar(select(func.count()).select_from(HealthHourly)) == 2
    history.downsample(now=utcnow() + timedelta(days=91))
    assert db.session.scalar(select(func.count()).select_from(HealthHourly)) == 0


def test_downsampling_drops_health_events_past_their_retention(app, node):
    """From a review: health events were never deleted, so a flapping node grew the table for good. The
    downsampling job drops those older than MPIM_HEALTH_EVENT_DAYS."""
    app.config["MPIM_HEALTH_EVENT_DAYS"] = 30
    now = utcnow()
    db.session.add_all([HealthEvent(node_id=node.node_id, at=now - timedelta(days=days), old_status="up",
                                    new_status="down", reason="timeout", detail="", in_maintenance=False)
                        for days in (400, 31, 29)])
    db.session.commit()
    assert history.downsample(now) == "deleted 0 raw samples, 0 hourly rows, 2 health events"
    kept = db.session.scalars(select(HealthEvent.at)).all()
    assert kept == [now - timedelta(days=29)]


def test_health_events_are_kept_a_year_unless_configured(tmp_path, monkeypatch):
    from app.config import load_config

    monkeypatch.delenv("MPIM_HEALTH_EVENT_DAYS", raising=False)
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_EVENT_DAYS"] == 365
    monkeypatch.setenv("MPIM_HEALTH_EVENT_DAYS", "30")
    assert load_config({"MPIM_INSTANCE_PATH": str(tmp_path)})["MPIM_HEALTH_EVENT_DAYS"] == 30


def test_uptime_buckets_from_hourly_aggregates(app, node):
    for ok in (True, True, False, True):
        service.apply_round([Result(node.node_id, ok)])
    buckets = history.uptime_buckets(node.node_id, span=timedelta(hours=24), buckets=24)
    assert len(buckets) == 24 and buckets[-1].polls == 4 and buckets[-1].uptime == 0.75
    assert history.uptime_ratio(node.node_id, timedelta(days=7)) == 0.75


def test_polls_in_a_maintenance_window_are_kept_but_do_not_count_against_availability(app, node, make_user):
    for ok in (True, True, False, True):
        service.apply_round([Result(node.node_id, ok)])
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade",
                            by=db.session.merge(make_user("other-minister")))
    db.session.commit()
    for _ in range(6):
        service.apply_round([Result(node.node_id, False, failure="refused")])

    assert history.uptime_ratio(node.node_id, timedelta(days=7)) == 0.75  # the upgrade is not downtime
    assert db.session.scalar(select(func.count()).select_from(HealthSample)) == 10  # every poll is kept
    assert db.session.get(NodeHealth, node.node_id).status == "down"  # and the state still follows them


class Hook(BaseHTTPRequestHandler):
    received: list = []
    delivered: list = []  # (headers, body bytes) of each alert received, as they came
    fail_first = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if Hook.fail_first > 0:
            Hook.fail_first -= 1
            self.send_response(503)
            self.end_headers()
            return
        Hook.received.append(json.loads(body))
        Hook.delivered.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    Hook.received, Hook.delivered, Hook.fail_first = [], [], 1
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    assert outbox.wait(60)  # nothing of this test's left to send to it
    stop_serving(server, thread)


def sent() -> list:
    """What the receiver got, once every alert queued is sent (or given up): a round queues its alerts."""
    assert outbox.wait(60)
    return Hook.received


def test_webhook_is_retried_and_skipped_in_maintenance(app, node, webhook, make_user):
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = webhook
    service.apply_round([Result(node.node_id, True)])
    service.apply_round([Result(node.node_id, True)])  # unknown → up: an alert, after one refused attempt
    assert len(sent()) == 1 and sent()[0]["changes"][0]["new"] == "up"
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=db.session.merge(
        make_user("other-minister")))
    db.session.commit()
    for _ in range(3):
        service.apply_round([Result(node.node_id, False, failure="refused")])
    assert len(sent()) == 1  # down during maintenance: recorded, not alerted
    event = db.session.scalars(select(HealthEvent).order_by(HealthEvent.id.desc())).first()
    assert event.new_status == "down" and event.in_maintenance


def test_an_alert_says_whether_its_node_is_flapping(app, node, webhook):
    """From a review: a flapping node is alerted on every change, and a receiver could not tell those alerts from
    a node's one real outage. Each change in an alert says whether its node is flapping (more changes in the last
    hour than MPIM_HEALTH_FLAP_CHANGES, as the console shows it), so a receiver can damp them."""
    app.config.update(MPIM_HEALTH_WEBHOOK_URL=webhook, MPIM_HEALTH_FLAP_CHANGES=2,
                      MPIM_HEALTH_FAILURES_BEFORE_DOWN=1, MPIM_HEALTH_SUCCESSES_BEFORE_UP=1)
    for ok in (True, False, True, False):
        service.apply_round([Result(node.node_id, ok, failure=None if ok else "timeout")])
    assert [(a["changes"][0]["new"], a["changes"][0]["flapping"]) for a in sent()] == [
        ("up", False), ("down", False), ("up", True), ("down", True)]


def test_an_alert_is_signed_when_a_secret_is_set(app, node, webhook, caplog):
    """From a review: alerts were unsigned, so a receiver could not tell the registry's from anyone's. With
    MPIM_HEALTH_WEBHOOK_SECRET set, each carries X-MPIM-Timestamp and X-MPIM-Signature, an HMAC-SHA256 over the
    timestamp, a dot and the body bytes, which the receiver recomputes (docs/operations.md). The secret is
    never logged (the first attempt, refused, is)."""
    import hashlib
    import hmac
    import time

    secret = "w3bh00k-S3CRET"
    app.config.update(MPIM_HEALTH_WEBHOOK_URL=webhook, MPIM_HEALTH_WEBHOOK_SECRET=secret)
    before = int(time.time())
    for _ in range(2):
        service.apply_round([Result(node.node_id, True)])  # unknown → up: an alert
    sent()
    [(headers, body)] = Hook.delivered
    after = int(time.time())
    timestamp = headers["X-MPIM-Timestamp"]
    assert before <= int(timestamp) <= after
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-MPIM-Signature"] == f"sha256={expected}"
    assert json.loads(body)["changes"][0]["new"] == "up"
    assert "health webhook attempt 1 failed" in caplog.text and secret not in caplog.text


def test_an_alert_without_a_secret_carries_no_signature(app, node, webhook):
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = webhook
    for _ in range(2):
        service.apply_round([Result(node.node_id, True)])
    sent()
    [(headers, _body)] = Hook.delivered
    assert not {"X-MPIM-Signature", "X-MPIM-Timestamp"} & set(headers)


@pytest.fixture
def garbage_webhook():
    """A receiver that answers every request with a line that is no HTTP status line."""
    with raw_receiver(lambda connection, _stop: connection.sendall(b"garbage, not HTTP\r\n\r\n")) as url:
        yield url


def test_a_receiver_answering_garbage_costs_the_alert_not_the_round(app, node, garbage_webhook, caplog):
    """send_webhook caught only OSError: a receiver's garbage answer (BadStatusLine, an HTTPException) raised out
    of apply_round after its commit, so the scheduler recorded the health.poll run failed and `flask health poll
    --once` printed a traceback. It is logged, as a refused attempt is."""
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = garbage_webhook
    service.apply_round([Result(node.node_id, True)])
    report = service.apply_round([Result(node.node_id, True)])  # unknown → up: an alert
    assert [(c.old, c.new) for c in report.changes] == [("unknown", "up")]
    assert db.session.get(NodeHealth, node.node_id).status == "up"
    assert outbox.wait(60)
    assert [r.getMessage().split(":")[0] for r in caplog.records if r.name == "mpim.health"] == [
        f"health webhook attempt {n} failed" for n in (1, 2, 3)]


@pytest.fixture
def trickling_webhook():
    """A receiver that sends its status line and headers a byte a second, never ending them: each read of the
    answer gets a byte well inside a per-read timeout."""

    def trickle(connection: socket.socket, stop: threading.Event) -> None:
        for byte in b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 1000:
            if stop.wait(1.0):  # the pace of the trickle, not a wait for anything
                return
            try:
                connection.send(bytes([byte]))
            except OSError:  # the sender gave up
                return

    with raw_receiver(trickle, query="?token=S3CRET") as url:
        yield url


def test_a_receiver_trickling_its_answer_holds_up_neither_the_round_nor_the_alerts_after(app, node,
                                                                                         trickling_webhook, caplog):
    """urllib's timeout bounds each read of the answer, not the request: a receiver sending a byte a second held
    apply_round (so `health.poll`, past its limit, and every later round skipped) as long as it liked. The round
    queues its alerts; the send is given up at its deadline, and that is logged, without the URL."""
    app.config.update(MPIM_HEALTH_WEBHOOK_URL=trickling_webhook, MPIM_HEALTH_WEBHOOK_SECONDS=3)
    service.apply_round([Result(node.node_id, True)])
    rounds: list = []

    def second_round() -> None:
        with app.app_context():
            rounds.append(service.apply_round([Result(node.node_id, True)]))  # unknown → up: an alert

    thread = threading.Thread(target=second_round, daemon=True)
    thread.start()
    thread.join(30)  # were it waiting for the receiver, it would wait for good
    assert not thread.is_alive() and [(c.old, c.new) for c in rounds[0].changes] == [("unknown", "up")]
    assert outbox.wait(30)  # given up at its deadline, not at the receiver's leisure
    assert webhook_log(caplog)[-1] == ("ERROR", "health webhook not sent: not done within its 3 s deadline "
                                                "(attempt 1 of 3 cut short); given up")
    assert "S3CRET" not in caplog.text and "/hook" not in caplog.text


class Redirecting(BaseHTTPRequestHandler):
    """A receiver answering every POST with a redirect to `location`; any request after it is recorded."""

    status, location, followed = 302, "", []

    def do_POST(self):  # noqa: N802 (http.server's naming)
        if self.path != "/hook":
            return self.do_GET()
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(Redirecting.status)
        self.send_header("Location", Redirecting.location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):  # noqa: N802
        Redirecting.followed.append((self.command, self.path))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(("status", "location", "shown"), [
    (302, "/login?next=/hook&token=S3CRET", "http://127.0.0.1:{port}"), (301, "/hook/", "http://127.0.0.1:{port}"),
    (303, "https://user:S3CRET@alerts.example/landing?token=S3CRET", "https://alerts.example"),
    (307, "/elsewhere", "http://127.0.0.1:{port}"),
    (308, "https://alerts.example:8443/hook", "https://alerts.example:8443")])
def test_a_redirect_is_no_delivery_and_is_not_followed(app, status, location, shown, caplog):
    """urllib followed a 301, 302 or 303 by turning the POST into a GET without its body, to any host, and a 200
    there (an auth proxy's login page, the address with a trailing slash) counted as delivered: every alert was
    lost while send_webhook said True. A redirect is a failure, logged once with where it points (scheme and host
    only), and not followed."""
    Redirecting.status, Redirecting.location, Redirecting.followed = status, location, []
    server = HTTPServer(("127.0.0.1", 0), Redirecting)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        change = service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)
        assert send_webhook(f"http://127.0.0.1:{server.server_port}/hook", [change], backoff=0) is False
    finally:
        stop_serving(server, thread)
    assert Redirecting.followed == []
    assert webhook_log(caplog) == [("ERROR", f"health webhook redirected (HTTP {status} to "
                                             f"{shown.format(port=server.server_port)}); not retried; point "
                                             "MPIM_HEALTH_WEBHOOK_URL at the final address")]


def test_alerts_a_process_leaves_unsent_are_logged_when_it_ends(app, trickling_webhook, caplog):
    """`flask health poll --once` and the scheduler call `finish` as they end: what the deadline does not let
    go is named in the log, never dropped silently, and the process does not wait for the receiver."""
    late = service.StatusChange("36000000002025000002", "up", "down", "refused", "", False, after_maintenance=True)
    outbox.put(trickling_webhook, [service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)],
               deadline=3)
    outbox.put(trickling_webhook, [late], deadline=3)
    assert outbox.finish() is False
    assert ("ERROR", "health webhook not sent: the process ended first; unsent: "
                     "36000000002025000002 up→down (after maintenance)") in webhook_log(caplog)
    assert outbox.wait(30)  # the one being sent was given up at its deadline; the other was dropped from the queue


def test_an_alert_waiting_behind_a_slow_receiver_keeps_the_time_its_round_found_the_change(app, trickling_webhook,
                                                                                        webhook):
    """The body's "time" was taken when the alert was sent: one queued behind a receiver that held its send to the
    deadline said the change happened seconds (up to a deadline per alert ahead of it) after it did."""
    outbox.put(trickling_webhook, [service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)],
               deadline=2)
    Hook.fail_first = 0
    outbox.put(webhook, [service.StatusChange("36000000002025000002", "up", "down", "refused", "", False)])
    queued_by = utcnow()
    [alert] = sent()
    assert alert["changes"][0]["node_id"] == "36000000002025000002"
    assert datetime.fromisoformat(alert["time"]) <= queued_by  # sent only after the first's 2 s deadline


def webhook_log(caplog) -> list[tuple[str, str]]:
    return [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "mpim.health"]


@pytest.mark.parametrize("url", ["hooks.example/alert", "ftp://hooks.example/alert", "http:///alert",
                                 "http://hooks.example:99999/alert", "http://hooks example/alert",
                                 "http://hooks..example/alert", "http://" + "a" * 64 + ".example/alert",
                                 "http://hooks.example/告警", "http://user:pä@hooks.example/",
                                 "https://alerts:S3CRET@hooks.example/notify"])
def test_a_webhook_url_that_is_no_http_address_is_logged_once_and_not_retried(app, url, caplog):
    """A URL without a scheme raised ValueError ("unknown url type") out of the round; then it was tried three
    times with backoff, as if the next attempt could open it, and logged three times. The start refuses such a URL
    (`env_http_url`); one set in the config by other means is named once, as the variable, and no attempt made.
    One with a user name and password was tried: urllib read its password as a port (InvalidURL: nonnumeric port:
    'S3CRET@hooks.example'), logged with the password, three times."""
    change = service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)
    assert send_webhook(url, [change], backoff=0) is False
    assert webhook_log(caplog) == [("ERROR", "health webhook not sent: MPIM_HEALTH_WEBHOOK_URL is no http:// or "
                                             "https:// address with a host and no user name or password; not retried")]


class Answering(BaseHTTPRequestHandler):
    """A webhook receiver answering every POST with `status`, counting them."""

    status = 204
    posts = 0

    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.rfile.read(int(self.headers["Content-Length"]))
        Answering.posts += 1
        self.send_response(Answering.status)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def answering():
    Answering.posts = 0
    server = HTTPServer(("127.0.0.1", 0), Answering)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    stop_serving(server, thread)


@pytest.mark.parametrize(("status", "posts"), [(503, 3), (500, 3), (429, 3), (404, 1), (401, 1), (400, 1)])
def test_a_receiver_failing_is_tried_again_one_refusing_the_request_is_not(app, answering, status, posts, caplog):
    """A 5xx (or 429: come back later) may pass on the next attempt; a 404 or 401 says the address or its
    credentials are wrong, and three attempts with backoff only delayed the round's end and tripled the log."""
    Answering.status = status
    change = service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)
    assert send_webhook(answering, [change], backoff=0) is False
    assert Answering.posts == posts
    if posts == 1:
        assert [level for level, _ in webhook_log(caplog)] == ["ERROR"]
        assert webhook_log(caplog)[0][1].startswith(f"health webhook refused: HTTP {status}; ")
        assert webhook_log(caplog)[0][1].endswith("; not retried")
    else:
        assert [message.split(":")[0] for _, message in webhook_log(caplog)] == [
            f"health webhook attempt {n} failed" for n in (1, 2, 3)]


def test_a_receiver_that_refuses_the_connection_is_tried_again(app, caplog):
    """A receiver being restarted refuses connections for a moment: transient, so every attempt is made."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # closed below: nothing listens there any more
    change = service.StatusChange("36000000002025000001", "up", "down", "timeout", "", False)
    assert send_webhook(f"http://127.0.0.1:{port}/hook", [change], backoff=0) is False
    assert [message.split(":")[0] for _, message in webhook_log(caplog)] == [
        f"health webhook attempt {n} failed" for n in (1, 2, 3)]
    assert "Connection refused" in webhook_log(caplog)[0][1]


def test_a_node_still_down_when_its_maintenance_ends_is_alerted_then_once(app, node, webhook, make_user):
    """Down inside a maintenance window, no alert (as above); when the window ended, nothing was ever sent
    either, and a node that stayed down went unannounced. The round after the window's end sends the change
    it held back, once; a window an admin ends early counts the same."""
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = webhook
    Hook.fail_first = 0
    minister = db.session.merge(make_user("other-minister"))
    for _ in range(2):
        service.apply_round([Result(node.node_id, True)])
    assert [c["new"] for h in sent() for c in h["changes"]] == ["up"]
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    db.session.commit()
    for _ in range(4):
        service.apply_round([Result(node.node_id, False, failure="refused")])
    assert len(sent()) == 1  # held back
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)  # ran out
    db.session.commit()
    report = service.apply_round([Result(node.node_id, False, failure="refused")])
    assert report.changes == [] and [c.node_id for c in report.late_alerts] == [node.node_id]
    assert "still down after maintenance: " + node.node_id in report.summary()
    assert len(sent()) == 2
    assert sent()[1]["changes"] == [{"node_id": node.node_id, "old": "up", "new": "down",
                                             "reason": "refused", "detail": "", "in_maintenance": False,
                                             "after_maintenance": True, "flapping": False}]
    service.apply_round([Result(node.node_id, False, failure="refused")])
    assert len(sent()) == 2  # once

    for _ in range(2):
        service.apply_round([Result(node.node_id, True)])  # back up: alerted as usual
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    for _ in range(3):
        service.apply_round([Result(node.node_id, False, failure="timeout")])
    received = len(sent())
    maintenance.schedule_maintenance(db.session.merge(node), "0", "", by=minister)  # ended early
    db.session.commit()
    service.apply_round([Result(node.node_id, False, failure="timeout")])
    assert len(sent()) == received + 1 and sent()[-1]["changes"][0]["after_maintenance"] is True


def test_a_node_back_up_inside_its_window_or_down_before_it_is_not_alerted_again(app, node, webhook, make_user):
    app.config["MPIM_HEALTH_WEBHOOK_URL"] = webhook
    Hook.fail_first = 0
    minister = db.session.merge(make_user("other-minister"))
    for _ in range(3):
        service.apply_round([Result(node.node_id, False, failure="refused")])  # down before: alerted then
    assert [c["new"] for h in sent() for c in h["changes"]] == ["down"]
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    db.session.commit()
    service.apply_round([Result(node.node_id, False, failure="refused")])
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert service.apply_round([Result(node.node_id, False, failure="refused")]).late_alerts == []
    assert len(sent()) == 1


def test_flapping_counts_changes_in_the_last_hour(app, node):
    for _ in range(3):
        for ok in (True, True, False, False, False):
            service.apply_round([Result(node.node_id, ok)])
    counts = service.flap_counts()
    assert counts[node.node_id] == 6 and service.is_flapping(counts[node.node_id])


def maintenance_records(node_id: str) -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action.like("health.maintenance%"),
                                                             AuditRecord.target == node_id)))


@pytest.mark.parametrize("hours", ["nan", "1e400", "abc", "٣", "-1", "721", ""])
def test_a_maintenance_length_that_is_no_number_of_hours_is_refused_in_words(app, node, console, hours):
    """The form's select gives 0, 1, 4 or 24; a hand-made POST used to flash Python's own text."""
    console.login("minister")
    response = console.post_form(f"/nodes/{node.node_id}", {"hours": hours, "note": "upgrade"},
                                 action=f"/health/{node.node_id}/maintenance")
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert '<div class="error" id="hours-error-1">维护时长为 0（结束维护）至 720 小时。</div>' in page
    assert 'name="note" type="text" value="upgrade"' in page
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert maintenance_records(node.node_id) == []


@pytest.mark.parametrize("note", ["机房\x1b[2J搬迁", "注" * 201])
def test_a_refused_maintenance_note_comes_back_in_its_field_with_the_refusal_beside_it(app, node, console, note):
    """A note the service refused (a pasted control character, one over its 200 characters) redirected to the node
    page, and the note and the chosen length were gone: the page now comes back with both, nothing saved."""
    from markupsafe import escape

    console.login("jx-admin")
    before = db.session.scalar(select(func.count()).select_from(AuditRecord))

    response = console.post_form(f"/nodes/{node.node_id}", {"hours": "24", "note": note},
                                 action=f"/health/{node.node_id}/maintenance")

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert f'aria-invalid="true" id="note" maxlength="200" name="note" type="text" value="{escape(note)}"' in page
    assert '<option selected value="24">' in page
    assert '<div class="error" id="note-error-1">备注：' in page
    db.session.expire_all()
    assert db.session.get(NodeHealth, node.node_id) is None
    assert db.session.scalar(select(func.count()).select_from(AuditRecord)) == before


def test_the_console_sets_and_ends_a_maintenance_window(app, node, console):
    console.login("jx-admin")  # a provincial admin, for a node of their own division
    console.post_form(f"/nodes/{node.node_id}", {"hours": "4", "note": "upgrade"},
                      action=f"/health/{node.node_id}/maintenance")
    health = db.session.get(NodeHealth, node.node_id)
    assert service.in_maintenance(health) and health.maintenance_note == "upgrade"
    assert timedelta(hours=3.9) < health.maintenance_until - utcnow() <= timedelta(hours=4)
    console.post_form(f"/nodes/{node.node_id}", {"hours": "0"}, action=f"/health/{node.node_id}/maintenance")
    db.session.expire_all()
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert [(r.action, r.actor) for r in maintenance_records(node.node_id)] == [
        ("health.maintenance", "jx-admin"), ("health.maintenance_end", "jx-admin")]


def test_the_node_page_shows_the_current_window_and_saving_only_its_note_keeps_it(app, node, console):
    """The form under "Maintenance until ..." came back as "none (end it)" with an empty note: an admin who changed
    only the note and pressed Save ended the window (the node showed down), and the note was shown nowhere."""
    from app.i18n import local_time

    console.login("jx-admin")
    page_url = f"/nodes/{node.node_id}"
    console.post_form(page_url, {"hours": "24", "note": "机房搬迁"}, action=f"/health/{node.node_id}/maintenance")
    until = db.session.get(NodeHealth, node.node_id).maintenance_until

    with app.test_request_context():
        shown_until = local_time(until)
    page = console.client.get(page_url).get_data(as_text=True)
    assert '<option selected value="keep">保持当前结束时间</option>' in page
    assert 'name="note" type="text" value="机房搬迁"' in page
    assert f"维护至 {shown_until}" in page and "由 jx-admin 设置" in page
    assert '<p class="meta" id="maintenance-window">' in page and "备注：机房搬迁" in page

    response = console.post_form(page_url, {"hours": "keep", "note": "机房搬迁，第二天"},
                                 action=f"/health/{node.node_id}/maintenance")
    assert response.status_code == 302
    assert "维护窗口已保存。" in console.client.get(page_url).get_data(as_text=True)
    db.session.expire_all()
    health = db.session.get(NodeHealth, node.node_id)
    assert service.in_maintenance(health)
    assert (health.maintenance_until, health.maintenance_note) == (until, "机房搬迁，第二天")
    assert [(r.action, r.actor) for r in maintenance_records(node.node_id)] == [
        ("health.maintenance", "jx-admin"), ("health.maintenance", "jx-admin")]


def test_without_a_window_the_form_offers_lengths_only(app, node, console):
    """No window to keep or end: the form's first choice starts one, never "none (end it)"."""
    console.login("jx-admin")
    page = console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert 'value="keep"' not in page and '<option value="0"' not in page and "无（结束维护）" not in page
    assert 'id="maintenance-end"' not in page


def page_drawn_during_a_window_that_ran_out_since(node, console) -> str:
    """The node's page as a provincial admin drew it during a one-hour window, which has run out since."""
    console.login("jx-admin")
    page_url = f"/nodes/{node.node_id}"
    console.post_form(page_url, {"hours": "1", "note": "upgrade"}, action=f"/health/{node.node_id}/maintenance")
    token_page = console.client.get(page_url).get_data(as_text=True)
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    return token_page


def test_keeping_the_end_of_a_window_that_ended_meanwhile_is_refused_in_words(app, node, console):
    """The page was drawn during the window, and saved after it ran out: nothing to keep, nothing saved."""
    token_page = page_drawn_during_a_window_that_ran_out_since(node, console)
    response = console.client.post(f"/health/{node.node_id}/maintenance",
                                   data={"hours": "keep", "note": "later", "csrf_token": csrf_token(token_page)})
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert '<div class="error" id="hours-error-1">维护窗口已结束，没有可保持的结束时间；请选择时长。</div>' in page
    assert 'name="note" type="text" value="later"' in page
    db.session.expire_all()
    assert db.session.get(NodeHealth, node.node_id).maintenance_note == "upgrade"
    assert len(maintenance_records(node.node_id)) == 1


def test_ending_a_window_is_its_own_confirmed_action(app, node, console):
    """Ending a window takes the node back into alerting and availability: its own button, asking first, with
    its own message and audit record, never a choice of the form that saves the note."""
    console.login("jx-admin")
    page_url = f"/nodes/{node.node_id}"
    console.post_form(page_url, {"hours": "4", "note": "upgrade"}, action=f"/health/{node.node_id}/maintenance")
    page = console.client.get(page_url).get_data(as_text=True)
    assert '<option value="0"' not in page and "无（结束维护）" not in page
    assert (f'<form method="post" action="/health/{node.node_id}/maintenance/end" class="inline" '
            f'id="maintenance-end" data-confirm="结束 {node.node_id} 的维护窗口？节点立即恢复告警，并计入可用率。">'
            in page)

    response = console.post_form(page_url, {}, action=f"/health/{node.node_id}/maintenance/end")
    assert response.status_code == 302
    assert "维护已结束。" in console.client.get(page_url).get_data(as_text=True)
    db.session.expire_all()
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert [(r.action, r.actor) for r in maintenance_records(node.node_id)] == [
        ("health.maintenance", "jx-admin"), ("health.maintenance_end", "jx-admin")]


def test_ending_a_window_needs_an_admin_of_the_node_s_division(app, node, make_user):
    from tests.conftest import Console

    make_user("eye", "auditor")
    make_user("gd-admin", "provincial_admin", ("440000",))
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade",
                            by=db.session.scalar(select(User).where(User.username == "minister")))
    db.session.commit()
    for username in ("eye", "gd-admin"):
        other = Console(app.test_client())
        other.login(username)
        response = other.post_form("/", {}, action=f"/health/{node.node_id}/maintenance/end")
        assert response.status_code in (403, 404)
    db.session.expire_all()
    assert service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert [r.action for r in maintenance_records(node.node_id)] == ["health.maintenance"]


def test_cli_twin_sets_and_ends_a_maintenance_window(app, node, runner, make_user):
    args = ["health", "maintenance", node.node_id, "--user", "minister", "--json"]
    result = runner.invoke(args=[*args, "--hours", "24", "--note", "机房搬迁"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.output)
    assert answer["node_id"] == node.node_id and answer["note"] == "机房搬迁"
    until = datetime.fromisoformat(answer["maintenance_until"])
    assert timedelta(hours=23.9) < until - utcnow() <= timedelta(hours=24)
    assert service.in_maintenance(db.session.get(NodeHealth, node.node_id))

    result = runner.invoke(args=[*args[:-1], "--hours", "0"])
    assert result.exit_code == 0 and f"{node.node_id}: no maintenance window" in result.output
    db.session.expire_all()
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))

    refused = runner.invoke(args=[*args, "--hours", "nan"])
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"]["code"] == "invalid_hours"
    make_user("eye", "auditor")
    refused = runner.invoke(args=["health", "maintenance", node.node_id, "--user", "eye", "--hours", "1"])
    assert refused.exit_code == 1 and "error:" in refused.stderr
    assert [(r.action, r.actor) for r in maintenance_records(node.node_id)] == [
        ("health.maintenance", "minister"), ("health.maintenance_end", "minister")]


def test_cli_keeps_a_window_s_end_while_changing_its_note(app, node, runner, make_user):
    args = ["health", "maintenance", node.node_id, "--user", "minister", "--json", "--hours"]
    refused = runner.invoke(args=[*args, "keep", "--note", "early"])
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"]["code"] == "window_ended"
    assert runner.invoke(args=[*args, "4", "--note", "upgrade"]).exit_code == 0
    until = db.session.get(NodeHealth, node.node_id).maintenance_until
    result = runner.invoke(args=[*args, "keep", "--note", "upgrade, day two"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"node_id": node.node_id, "maintenance_until": until.isoformat(),
                                         "note": "upgrade, day two"}


def test_two_rounds_applied_at_once_record_a_change_once(app, node):
    """`flask health poll --once` while the scheduler's round is applied: both read the node's state before either
    committed, both took it down, and the event (and its webhook alert) was recorded twice."""
    import time

    from sqlalchemy import text

    if db.engine.dialect.name != "postgresql":
        pytest.skip("two processes writing at once: PostgreSQL (SQLite has one writer at a time)")
    for _ in range(2):
        service.apply_round([Result(node.node_id, True)])
    for _ in range(2):
        service.apply_round([Result(node.node_id, False, failure="timeout")])  # one more failure takes it down
    other_round: list = []

    def second_round():
        with app.app_context():
            other_round.append(service.apply_round([Result(node.node_id, False, failure="timeout")]))

    def while_applying(_changes):
        """Inside the first round's transaction: start the second and let it run until it waits on us."""
        if threads:
            return  # the second round's own change, if it finds one
        thread = threading.Thread(target=second_round)
        thread.start()
        threads.append(thread)
        deadline = time.monotonic() + 30
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while time.monotonic() < deadline and not watcher.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")):
                time.sleep(0.05)

    threads: list[threading.Thread] = []
    service.status_changed.append(while_applying)
    try:
        service.apply_round([Result(node.node_id, False, failure="timeout")])
    finally:
        service.status_changed.remove(while_applying)
    threads[0].join(60)
    db.session.expire_all()
    events = db.session.scalars(select(HealthEvent).order_by(HealthEvent.id)).all()
    assert [(e.old_status, e.new_status) for e in events] == [("unknown", "up"), ("up", "down")]
    assert other_round[0].changes == []
    assert db.session.get(NodeHealth, node.node_id).consecutive_failures == 4


def test_a_round_s_hooks_read_the_health_it_wrote_of_rows_loaded_before_it(app, node):
    """The hooks (the routing table's) run inside the round's transaction: a node's health this session had
    loaded before the round reads there as the round wrote it, not as it was loaded."""
    service.apply_round([Result(node.node_id, True)])
    loaded = db.session.get(NodeHealth, node.node_id)
    assert loaded.status == "unknown"  # one success of two
    seen: list[str] = []

    def hook(_changes) -> None:
        seen.append(db.session.get(NodeHealth, node.node_id).status)  # `loaded`, from the session's identity map

    service.status_changed.append(hook)
    try:
        service.apply_round([Result(node.node_id, True)])
    finally:
        service.status_changed.remove(hook)
    assert seen == ["up"]


def test_the_uptime_figure_counts_the_hours_its_bars_show(app, node):
    """The figure "Uptime, 24 hours" summed 25 hourly rows (from the hour 24 h ago) over bars that show 24: a
    failed poll an hour before the first bar lowered the figure printed above bars that were all green."""
    now = utcnow()
    service.apply_round([Result(node.node_id, False, failure="timeout", checked_at=now - timedelta(hours=24))])
    service.apply_round([Result(node.node_id, True, checked_at=now)])
    for span, count in ((timedelta(hours=24), 24), (timedelta(days=7), 28), (timedelta(days=90), 90)):
        buckets = history.uptime_buckets(node.node_id, span=span, buckets=count, now=now)
        polls, successes = sum(b.polls for b in buckets), sum(b.successes for b in buckets)
        assert history.uptime_ratio(node.node_id, span, now) == successes / polls
    assert history.uptime_ratio(node.node_id, timedelta(hours=24), now) == 1.0


def test_cli_status_json_writes_times_as_the_other_commands_do(app, node, runner):
    """`health status --json` wrote last_checked_at through str() ("2026-12-02 14:00:00"), unlike every other
    command's ISO 8601 ("2026-12-02T14:00:00"), so a script reading both needed two parsers."""
    service.apply_round([Result(node.node_id, False, latency_ms=None, failure="timeout")])
    result = runner.invoke(args=["health", "status", "--json"])
    assert result.exit_code == 0, result.output
    [line] = [json.loads(text) for text in result.output.splitlines()]
    checked = db.session.get(NodeHealth, node.node_id).last_checked_at
    assert line == {"node_id": node.node_id, "status": "unknown", "last_checked_at": checked.isoformat(),
                    "last_latency_ms": None, "last_failure": "timeout", "maintenance": False}
    assert "T" in line["last_checked_at"]


@pytest.mark.parametrize("hours", ["4", "0"])
def test_a_maintenance_window_for_a_node_revoked_meanwhile_is_refused_in_words(app, node, console, runner, hours):
    """Revoked in another tab after its page was drawn: the window was saved (and audited) for a node nobody polls
    any more, and the page said "Maintenance window saved." It is refused, at every door, and the page says why."""
    from app.admission import nodes
    from app.auth.models import User

    console.login("jx-admin")
    page_url = f"/nodes/{node.node_id}"
    csrf_page = console.client.get(page_url)
    assert 'id="maintenance-form"' in csrf_page.get_data(as_text=True)
    nodes.revoke(node, "decommissioned", by=db.session.scalar(select(User).where(User.username == "minister")))
    db.session.commit()
    before = db.session.scalar(select(func.count()).select_from(AuditRecord))

    response = console.post_form(page_url, {"hours": hours, "note": "upgrade"},
                                 action=f"/health/{node.node_id}/maintenance")

    assert response.status_code == 422
    assert "已注销的节点不再巡检，不能设置维护窗口。" in response.get_data(as_text=True)
    refused = runner.invoke(args=["health", "maintenance", node.node_id, "--user", "minister", "--hours", hours,
                                  "--json"])
    assert refused.exit_code == 1 and json.loads(refused.stderr)["error"]["code"] == "node_revoked"
    db.session.expire_all()
    assert not service.in_maintenance(db.session.get(NodeHealth, node.node_id))
    assert db.session.scalar(select(func.count()).select_from(AuditRecord)) == before


def test_ending_a_window_that_has_run_out_or_was_never_set_is_refused_in_words(app, node, console, runner):
    """The end button on a page drawn during the window, pressed after it ran out, or `flask health maintenance
    --hours 0` for a node without one, recorded `health.maintenance_end` for a window that was not there."""
    token_page = page_drawn_during_a_window_that_ran_out_since(node, console)
    response = console.client.post(f"/health/{node.node_id}/maintenance/end",
                                   data={"csrf_token": csrf_token(token_page)}, follow_redirects=True)
    assert "没有进行中的维护窗口可结束。" in response.get_data(as_text=True)
    assert len(maintenance_records(node.node_id)) == 1
    other = admit(db.session.merge(db.session.scalars(select(User).where(User.username == "jx-admin")).one()),
                  db.session.scalars(select(User).where(User.username == "minister")).one())
    result = runner.invoke(args=["health", "maintenance", other.node_id, "--hours", "0", "--user", "minister",
                                 "--json"])
    assert result.exit_code == 1 and json.loads(result.stderr)["error"]["code"] == "no_window", result.stderr
    assert maintenance_records(other.node_id) == []


def test_cli_status_lists_every_polled_node_a_node_never_polled_as_unknown(app, node, runner, make_user):
    """`health status` listed only nodes with a health row (polled, or given a maintenance window), where the
    README says "each node's last known state": a node admitted since the last round was missing, and a node
    suspended since kept showing its old verdict, though nobody polls it."""
    from app.admission import nodes

    service.apply_round([Result(node.node_id, True)])
    minister = db.session.scalars(select(User).where(User.username == "minister")).one()
    jx_admin = db.session.scalars(select(User).where(User.username == "jx-admin")).one()
    newcomer = admit(jx_admin, minister)
    suspended = admit(jx_admin, minister)
    service.apply_round([Result(suspended.node_id, True)])
    nodes.suspend(db.session.merge(suspended), "audit", by=minister)
    db.session.commit()
    result = runner.invoke(args=["health", "status", "--json"])
    assert result.exit_code == 0, result.output
    lines = {item["node_id"]: item for item in map(json.loads, result.output.splitlines())}
    assert sorted(lines) == sorted([node.node_id, newcomer.node_id])
    assert lines[newcomer.node_id] == {"node_id": newcomer.node_id, "status": "unknown", "last_checked_at": None,
                                       "last_latency_ms": None, "last_failure": None, "maintenance": False}
    assert newcomer.node_id in runner.invoke(args=["health", "status"]).output


def test_the_window_is_named_by_its_newest_setter_as_the_chain_orders_records(app, node, console, make_user):
    """SQLite only (PostgreSQL's integer column refuses text): "set by" read the newest record by number, and SQLite
    sorts a number edited into text above every number, so an older window's setter was named for the current one.
    The chain's order is read instead (`holds_a_number`)."""
    from app.audit.models import AuditRecord
    from tests.test_audit import number_edited_into_text

    make_user("jx-admin-2", "provincial_admin", ("360000",))
    page_url = f"/nodes/{node.node_id}"
    console.login("jx-admin-2")
    console.post_form(page_url, {"hours": "4", "note": "first"}, action=f"/health/{node.node_id}/maintenance")
    first = db.session.scalar(db.select(AuditRecord.seq).where(AuditRecord.action == "health.maintenance"))
    other = Console(app.test_client())
    other.login("jx-admin")
    other.post_form(page_url, {"hours": "keep", "note": "second"}, action=f"/health/{node.node_id}/maintenance")
    if not number_edited_into_text(first):
        return
    page = other.client.get(page_url).get_data(as_text=True)
    assert "由 jx-admin 设置" in page and "由 jx-admin-2 设置" not in page
