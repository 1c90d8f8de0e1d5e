"""Health polling over real HTTP and mutual TLS on 127.0.0.1, into the damped state."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select, text

from app.database import utcnow
from app.extensions import db
from app.health import maintenance, poller, rounds, service
from app.health.models import HealthEvent, NodeHealth
from app.pki import own_keys
from app.pki import service as pki
from tests.health_servers import HealthServer, raw_receiver, stop_listening
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)

NODE = "36000000002025000001"


@pytest.fixture
def servers():
    started = []

    def start(*args, **kwargs):
        server = HealthServer(*args, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def poll(targets, **options):
    """A generous timeout: every server here answers at once except "slow", which passes its own.

    A short one made answering servers time out on a loaded CI machine (TLS handshakes included)."""
    return poller.poll_once(targets, **{"timeout": 10.0, **options})


@pytest.mark.parametrize(("behaviour", "failure"), [
    ("ok", None), ("slow", "timeout"), ("error", "http_status"), ("invalid_json", "bad_body"),
    ("nested_json", "bad_body"), ("not_ok", "bad_body"), ("wrong_node", "wrong_node"), ("huge", "bad_body"),
    ("redirect", "http_status")])
def test_plain_http_outcomes(servers, behaviour, failure):
    server = servers(NODE, behaviour)
    [result] = poll([poller.PollTarget(NODE, server.url)], **({"timeout": 0.5} if behaviour == "slow" else {}))
    assert result.failure == failure and result.ok is (failure is None)
    assert (result.latency_ms is not None) is (failure is None)


@pytest.mark.parametrize(("behaviour", "english", "chinese"), [
    ("duplicate_key", "the answer is not strict JSON: the key 'status' appears twice",
     "应答不是严格的 JSON：键 'status' 出现了两次"),
    ("nan", "the answer is not strict JSON: NaN is no JSON value (RFC 8259 §6)",
     "应答不是严格的 JSON：NaN 不是 JSON 值（RFC 8259 §6）"),
    ("infinite_number", "the answer is not strict JSON: 1e999 is beyond the range of a number (RFC 8259 §6)",
     "应答不是严格的 JSON：1e999 超出了数值的范围（RFC 8259 §6）")])
def test_an_answer_that_is_not_strict_json_is_no_usable_answer(app, servers, behaviour, english, chinese):
    from flask_babel import force_locale

    from app.labels import health_detail_label

    server = servers(NODE, behaviour)
    [result] = poll([poller.PollTarget(NODE, server.url)])
    assert result.failure == "bad_body" and not result.ok and result.latency_ms is None
    with app.test_request_context("/"):
        with force_locale("en"):
            assert health_detail_label(result.detail) == english
        with force_locale("zh_CN"):
            assert health_detail_label(result.detail) == chinese


@pytest.mark.parametrize(("behaviour", "english", "chinese"), [
    ("without_version", "version is not 1 to 64 characters", "version 不是 1 到 64 个字符"),
    ("long_version", "version is not 1 to 64 characters", "version 不是 1 到 64 个字符"),
    ("local_time", "time is not a UTC timestamp", "time 不是 UTC 时间戳"),
    ("huge", "the answer is longer than 64 KiB", "应答超过 64 KiB")])
def test_an_answer_short_of_the_health_schema_or_too_long_is_said_so(app, servers, behaviour, english, chinese):
    """protocol §7.1 and SPEC: a node answers `{status, node_id, version, time}`, and any other answer means it is not
    healthy; `status` and `node_id` alone were taken. An answer over 64 KiB was "not a JSON object"."""
    from flask_babel import force_locale

    from app.labels import health_detail_label

    server = servers(NODE, behaviour)
    [result] = poll([poller.PollTarget(NODE, server.url)])
    assert result.failure == "bad_body" and not result.ok, result
    with app.test_request_context("/"):
        with force_locale("en"):
            assert health_detail_label(result.detail) == english
        with force_locale("zh_CN"):
            assert health_detail_label(result.detail) == chinese


def test_an_answer_that_arrives_in_parts_is_read_whole(servers):
    """The body was read with one `read(n)`, which returns what has arrived so far: a healthy node whose
    answer crossed the network in two pieces read as unparsable, and a slow link marked it down."""
    server = servers(NODE, "two_parts")
    [result] = poll([poller.PollTarget(NODE, server.url)])
    assert result.ok, result.detail


def test_connection_refused():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    [result] = poll([poller.PollTarget(NODE, f"http://127.0.0.1:{port}")])
    assert result.failure == "refused"


def test_concurrency_bound_and_offsets(servers):
    server = servers(NODE, "ok")
    results = poll([poller.PollTarget(NODE, server.url)] * 50, concurrency=5)
    assert all(r.ok for r in results) and server.requests == 50
    offsets = [poller.stable_offset(f"3600000000202500{i:04d}", 30) for i in range(1000)]
    assert all(0 <= o < 30 for o in offsets) and len({int(o) for o in offsets}) == 30
    assert poller.stable_offset(NODE, 30) == poller.stable_offset(NODE, 30)


@pytest.mark.parametrize("interval, timeout", [(30, 5), (2.035, 1), (60, 10), (10, 5)])
def test_spread_round_whose_last_node_times_out_leaves_a_fifth_of_the_interval(interval, timeout):
    """The node polled last in a spread round, timing out, must leave the round time for `targets()`, the apply
    and the webhook: a round past its interval makes the scheduler skip the next one (one instance of a job at a
    time), and every node is then polled half as often. The polls are still spread, not all sent at once."""
    window = poller.spread_window(interval, timeout)
    offsets = [poller.stable_offset(f"3600000000202500{i:04d}", window) for i in range(1000)]
    assert max(offsets) + timeout <= 0.8 * interval
    assert max(offsets) - min(offsets) >= 0.95 * window > 0


def node_server_context(app, node, keys) -> ssl.SSLContext:
    """The node's side: its certificate from our CA, and it demands the management node's."""
    directory = pki.ca_directory()
    cert_path, key_path = directory.parent / f"{node.node_id}.pem", directory.parent / f"{node.node_id}.key"
    cert_path.write_text(pki.current_certificate(node.node_id).pem)
    key_path.write_bytes(keys.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_path, key_path)
    context.load_verify_locations(cadata=pki.authority().chain_pem().decode())
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def admit_local(people, endpoint_port=None):  # noqa: F811
    from app.admission import applications
    from tests.factories import NodeKeys, node_document

    minister, jx = people
    keys = NodeKeys()
    document = node_document("360000", csr=keys.csr, endpoint=f"https://127.0.0.1:{endpoint_port or 9}")
    node = applications.approve(applications.submit_by_user(document, by=jx), by=minister)
    db.session.commit()
    return node, keys


def test_mutual_tls_poll_checks_chain_name_and_fingerprint(app, servers, people):  # noqa: F811
    node, keys = admit_local(people)
    server = servers(node.node_id, "ok", ssl_context=node_server_context(app, node, keys))
    context = own_keys.management_client_ssl_context()
    fingerprint = pki.current_certificate(node.node_id).sha256
    [good] = poll([poller.PollTarget(node.node_id, server.url, fingerprint)], ssl_context=context)
    assert good.ok and good.cert_matches is True
    [stale] = poll([poller.PollTarget(node.node_id, server.url, "0" * 64)], ssl_context=context)
    assert stale.ok and stale.cert_matches is False
    [other] = poll([poller.PollTarget("36000000002025000099", server.url)], ssl_context=context)
    assert other.failure == "certificate_mismatch"


def test_a_node_answering_connection_close_is_polled_by_its_certificate(app, servers, people):  # noqa: F811
    """aiohttp closes a connection whose answer says `Connection: close` as soon as a small answer is read, before
    the poller reads the certificate from it: a healthy node behind gunicorn's sync worker (or nginx without
    keep-alive) was down for `certificate_mismatch`, "the server certificate does not name this node". The
    certificate is read when the connection is made."""
    node, keys = admit_local(people)
    context = own_keys.management_client_ssl_context()
    fingerprint = pki.current_certificate(node.node_id).sha256
    closing = servers(node.node_id, "close", ssl_context=node_server_context(app, node, keys))
    results = poll([poller.PollTarget(node.node_id, closing.url, fingerprint)] * 3, ssl_context=context)
    assert [(r.failure, r.cert_matches) for r in results] == [(None, True)] * 3, results
    [other] = poll([poller.PollTarget("36000000002025000099", closing.url)], ssl_context=context)
    assert other.failure == "certificate_mismatch"
    busy = servers(node.node_id, "busy_close", ssl_context=node_server_context(app, node, keys))
    [refused] = poll([poller.PollTarget(node.node_id, busy.url, fingerprint)], ssl_context=context)
    assert (refused.failure, refused.detail, refused.cert_matches) == ("http_status", "HTTP 503", True)


def test_a_foreign_tls_certificate_fails(app, servers, tmp_path):
    context, _ = self_signed_server_context(tmp_path)
    server = servers(NODE, "ok", ssl_context=context)
    [result] = poll([poller.PollTarget(NODE, server.url)], ssl_context=own_keys.management_client_ssl_context())
    assert result.failure == "tls"


def test_rounds_damp_state_and_publish_one_route_version_per_round(app, servers, people, runner):  # noqa: F811
    from app.routing import service as routing

    first, keys_a = admit_local(people)
    up = servers(first.node_id, "ok", ssl_context=node_server_context(app, first, keys_a))
    first.endpoint = up.url
    second, keys_b = admit_local(people)
    down = servers(second.node_id, "error", ssl_context=node_server_context(app, second, keys_b))
    second.endpoint = down.url
    db.session.commit()
    app.config["MPIM_HEALTH_TIMEOUT"] = 10.0  # both servers answer at once; 1 s timed out under CI load
    version = routing.head_version()
    rounds.run_round(spread=False)
    assert db.session.get(NodeHealth, first.node_id).status == "unknown"  # one success is not enough
    report = rounds.run_round(spread=False)
    assert {(c.node_id, c.new) for c in report.changes} == {(first.node_id, "up")}
    assert routing.head_version() == version + 1
    result = runner.invoke(args=["health", "poll", "--once"])
    assert result.exit_code == 0 and "2 polled, 1 ok" in result.output and f"{second.node_id} unknown→down" \
        in result.output
    assert routing.head_version() == version + 2
    statuses = {e["node_id"]: e["status"] for e in routing.entries_of(routing.head()).values()}
    assert statuses == {first.node_id: "up", second.node_id: "down"}


def test_maintenance_suppresses_the_banner(app, servers, people, admin_console):  # noqa: F811
    node, keys = admit_local(people)
    server = servers(node.node_id, "error", ssl_context=node_server_context(app, node, keys))
    node.endpoint = server.url
    db.session.commit()
    for _ in range(3):
        rounds.run_round(spread=False)
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"1 个节点故障：{node.org_name}（{node.node_id}）" in page
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/").get_data(as_text=True)
    assert f"1 node is down: {node.org_name} ({node.node_id})" in page  # one, and English punctuation
    admin_console.client.get("/lang/zh_CN")
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade",
                            by=db.session.merge(people[0]))
    db.session.commit()
    assert "个节点故障" not in admin_console.client.get("/").get_data(as_text=True)
    detail = admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert "维护至" in detail and "<svg" in detail
    events = db.session.scalars(select(HealthEvent)).all()
    assert [(e.old_status, e.new_status) for e in events] == [("unknown", "down")]


def samples_of(node_id: str) -> int:
    from sqlalchemy import func

    from app.health.models import HealthSample
    return db.session.scalar(select(func.count()).select_from(HealthSample).where(HealthSample.node_id == node_id))


@pytest.mark.parametrize(("action", "reason"), [("suspend", "node_suspended"), ("revoke", "node_revoked")])
def test_a_round_that_polled_a_node_before_its_suspension_leaves_it_unknown(app, servers, people, action,  # noqa: F811
                                                                             reason):
    """A round polls, then applies what it found. A node suspended (revoked) in between was reset to unknown by the
    admin's action, and the round's poll of it then counted again: a streak, a sample, in time an "up", for a node
    nobody polls any more. Its result is skipped, and the round's report says so."""
    from app.admission import nodes

    minister, _ = people
    node, keys = admit_local(people)
    server = servers(node.node_id, "ok", ssl_context=node_server_context(app, node, keys))
    node.endpoint = server.url
    db.session.commit()
    app.config["MPIM_HEALTH_TIMEOUT"] = 10.0
    for _ in range(2):
        rounds.run_round(spread=False)
    assert db.session.get(NodeHealth, node.node_id).status == "up"
    polled = poll(rounds.targets(), ssl_context=own_keys.management_client_ssl_context())
    db.session.rollback()
    getattr(nodes, action)(node, "drill", by=minister)
    db.session.commit()
    report = service.apply_round(polled)
    health = db.session.get(NodeHealth, node.node_id)
    assert (health.status, health.consecutive_successes, health.consecutive_failures) == ("unknown", 0, 0)
    assert samples_of(node.node_id) == 2
    last = db.session.scalars(select(HealthEvent).order_by(HealthEvent.id.desc())).first()
    assert (last.old_status, last.new_status, last.reason) == ("up", "unknown", reason)
    assert (report.polled, report.ok, report.skipped, report.failures) == (1, 0, 1, {})
    assert report.summary() == "1 polled, 0 ok; skipped 1 no longer active or moved since polled"


def test_a_poll_of_the_endpoint_a_node_moved_from_is_skipped(app, servers, people):  # noqa: F811
    """A round that polled the old endpoint, applied after the move was approved, counted its answer toward the new
    endpoint's verdict, which the reset had just made unknown until the new one is polled."""
    from app.admission import applications
    from tests.factories import change_document

    minister, jx = people
    node, keys = admit_local(people)
    context = node_server_context(app, node, keys)
    old, new = servers(node.node_id, "ok", ssl_context=context), servers(node.node_id, "error", ssl_context=context)
    node.endpoint = old.url
    db.session.commit()
    app.config["MPIM_HEALTH_TIMEOUT"] = 10.0
    polled = poll(rounds.targets(), ssl_context=own_keys.management_client_ssl_context())
    assert [(r.endpoint, r.ok) for r in polled] == [(old.url, True)]
    db.session.rollback()
    change = applications.submit_change(node, change_document("360000", endpoint=new.url), by=jx)
    db.session.commit()
    applications.approve(change, by=minister)
    db.session.commit()
    report = service.apply_round(polled)
    assert db.session.get(NodeHealth, node.node_id) is None and samples_of(node.node_id) == 0
    assert (report.ok, report.skipped) == (0, 1)
    report = rounds.run_round(spread=False)  # the new endpoint's answers count
    assert (report.ok, report.skipped, report.failures) == (0, 0, {"http_status": 1})
    assert samples_of(node.node_id) == 1 and old.requests == 1


def test_a_node_presenting_a_certificate_we_revoked_fails_its_poll(app, servers, people, admin_console):  # noqa: F811
    """Chain verification does not consult revocation: a node still serving its old certificate after we revoked
    it (a compromised key, say) answered healthy beside a newer valid one, flagged only as a mismatch."""
    from app.pki import revocation
    from tests.factories import NodeKeys

    minister, _ = people
    node, keys = admit_local(people)
    server = servers(node.node_id, "ok", ssl_context=node_server_context(app, node, keys))  # the first certificate
    node.endpoint = server.url
    db.session.commit()
    first = pki.current_certificate(node.node_id)
    pki.renew(node, NodeKeys().csr, by=minister)
    db.session.commit()
    revocation.revoke(db.session.merge(first), "key_compromise", by=minister)
    db.session.commit()
    [target] = rounds.targets()
    assert target.revoked_sha256 == frozenset({first.sha256})
    [result] = poll([target], ssl_context=own_keys.management_client_ssl_context())
    assert (result.ok, result.failure, result.cert_matches) == (False, "certificate_revoked", False)
    assert result.latency_ms is None
    app.config["MPIM_HEALTH_TIMEOUT"] = 10.0
    report = rounds.run_round(spread=False)
    assert report.failures == {"certificate_revoked": 1}
    page = admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    # the failure alone: its detail only repeated it (71d0f4c)
    assert "证书已吊销" in page and "服务器证书已被吊销" not in page
    admin_console.client.get("/lang/en")
    page = admin_console.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert "certificate revoked" in page and "the server certificate is revoked" not in page


def test_a_host_name_that_does_not_resolve_is_said_so_in_the_readers_language(app):
    """aiohttp's "Cannot connect to host x:8443 ssl:default [Name or service not known]" was stored and shown
    as it was, in English on the Chinese health pages and as a bare "error" by the review page's probe."""
    from flask_babel import force_locale

    from app.labels import health_detail_label

    [result] = poll([poller.PollTarget(NODE, "https://no-such-node.invalid:8443")])
    assert result.failure == "error" and not result.ok
    assert result.detail == "the host name no-such-node.invalid does not resolve", result.detail
    with app.test_request_context("/"):
        with force_locale("zh_CN"):
            assert health_detail_label(result.detail) == "主机名 no-such-node.invalid 无法解析"


def test_a_node_closing_the_connection_unanswered_is_said_so_in_the_readers_language(app):
    """From a review: a node that accepts, reads the request and closes without answering was stored as
    aiohttp's "ServerDisconnectedError: Server disconnected", shown as it was on the Chinese health pages."""
    from flask_babel import force_locale

    from app.labels import health_detail_label

    with raw_receiver(lambda _connection, _stop: None, path="") as url:  # reads the request, hangs up
        [result] = poll([poller.PollTarget(NODE, url)])
    assert (result.ok, result.failure) == (False, "error"), result
    assert result.detail == "the node closed the connection without answering", result.detail
    with app.test_request_context("/"):
        with force_locale("en"):
            assert health_detail_label(result.detail) == "the node closed the connection without answering"
        with force_locale("zh_CN"):
            assert health_detail_label(result.detail) == "节点未作应答即关闭了连接"


def test_a_poll_once_beside_the_scheduled_round_counts_each_real_failure_once(app, servers, people, runner):  # noqa: F811
    """From a review: `flask health poll --once` run while the leader's scheduled round runs might count one
    failure twice toward "down". Both poll the node; its server answers neither before both requests arrived, so
    both rounds then apply at once. Each failed request is counted once (the rounds apply one after the other,
    under the health.round lock, each reading what the other committed): two requests, two failures, the node
    still up with MPIM_HEALTH_FAILURES_BEFORE_DOWN 3, and down at the third, alerted once."""
    import threading

    from app.scheduler import registry
    from app.scheduler.runner import run_job

    node, keys = admit_local(people)
    server = servers(node.node_id, "ok", ssl_context=node_server_context(app, node, keys))
    node.endpoint = server.url
    db.session.commit()
    # Interval = timeout: the scheduled round's spread window is empty, so it polls at once, as --once does.
    app.config["MPIM_HEALTH_TIMEOUT"] = app.config["MPIM_HEALTH_INTERVAL"] = 10.0
    for _ in range(2):
        rounds.run_round(spread=False)
    assert db.session.get(NodeHealth, node.node_id).status == "up"
    server.behaviour, server.requests, server.gather = "error", 0, 2
    job = next(j for j in registry.jobs if j.name == "health.poll")
    scheduled: list = []

    def leader_round() -> None:
        with app.app_context():
            run = run_job(job, "leader-test")
            scheduled.append((run.ok, run.message))

    thread = threading.Thread(target=leader_round)
    thread.start()
    once = runner.invoke(args=["health", "poll", "--once"])
    thread.join(60)
    assert not thread.is_alive()
    assert once.exit_code == 0 and "1 polled, 0 ok; failed: http_status 1" in once.output, once.output
    assert scheduled == [(True, "1 polled, 0 ok; failed: http_status 1")]
    db.session.expire_all()
    health = db.session.get(NodeHealth, node.node_id)
    assert server.requests == 2
    assert (health.status, health.consecutive_failures, health.consecutive_successes) == ("up", 2, 0)
    server.gather = 0
    report = rounds.run_round(spread=False)
    assert [(c.old, c.new) for c in report.changes] == [("up", "down")] and server.requests == 3
    events = db.session.scalars(select(HealthEvent).where(HealthEvent.node_id == node.node_id)).all()
    assert [(e.old_status, e.new_status) for e in events] == [("unknown", "up"), ("up", "down")]


class SilentNode:
    """A node that accepts connections and never answers: a round's poll of it lasts the whole timeout."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = threading.Event()
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(connection)
            self.accepted.set()

    def close(self) -> None:
        stop_listening(self.listener)
        for connection in self.held:
            connection.close()
        self.thread.join(10)


def test_a_round_holds_no_transaction_open_while_it_polls(app, people):  # noqa: F811
    """From a review: the round read its targets in a transaction it kept open ("idle in transaction", holding
    locks on nodes and certificates) until after the polls, so `flask db upgrade` waited behind every round, and a
    PostgreSQL idle_in_transaction_session_timeout shorter than the polls killed every round. While the round
    waits on a node that never answers, no session of ours is idle in a transaction."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("sessions seen from another connection: PostgreSQL (pg_stat_activity)")
    silent = SilentNode()
    node, _ = admit_local(people, silent.port)
    node_id = node.node_id
    db.session.close()  # the test's own session holds nothing either
    app.config["MPIM_HEALTH_TIMEOUT"] = 3.0
    reports: list[str] = []

    def round_in_thread() -> None:
        with app.app_context():
            reports.append(rounds.run_round(spread=False).summary())

    thread = threading.Thread(target=round_in_thread)
    thread.start()
    try:
        assert silent.accepted.wait(30), "the round never polled the node"
        with db.engine.connect() as other:
            idle = other.execute(text(
                "SELECT pid, left(query, 200) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state = 'idle in transaction'")).all()
            other.rollback()
        thread.join(60)
    finally:
        silent.close()
    assert not thread.is_alive()
    assert idle == [], idle
    assert reports == ["1 polled, 0 ok; failed: timeout 1"], reports
    assert samples_of(node_id) == 1


def test_a_host_name_lookup_that_hangs_neither_holds_the_round_nor_starves_the_other_lookups():
    """aiohttp looks host names up with getaddrinfo on the loop's default executor, which the node's timeout cannot
    stop. asyncio.run then waited for the hung lookup at its end, however long (a zone whose servers do not answer:
    10 s and more per name, past the round's headroom), and its default pool (6 threads on 2 cores) let six such
    names starve every other node's lookup into a timeout. Here lookups hang until the test lets them go (real
    blocking calls on the executor the lookups use): the run must end while they still hang, and a lookup queued
    behind a dozen hung ones must still be answered."""
    import asyncio

    release = threading.Event()
    finished = threading.Event()
    outcome = {}

    async def round_with_hung_lookups():
        loop = asyncio.get_running_loop()
        hung = [loop.run_in_executor(None, release.wait) for _ in range(12)]
        async with asyncio.timeout(30):  # a guard against a hung test, not a measurement
            answered = await loop.run_in_executor(None, lambda: "answered")
        for lookup in hung:
            lookup.cancel()  # as the node's timeout does: the await ends, the thread does not
        return answered

    def run_round():
        outcome["result"] = poller.run(round_with_hung_lookups())
        finished.set()

    runner = threading.Thread(target=run_round, daemon=True)
    runner.start()
    try:
        assert finished.wait(60), "the round waited for the hung lookups"
        assert outcome["result"] == "answered" and not release.is_set()
    finally:
        release.set()


def self_signed_server_context(tmp_path, *, days_valid: int = 1, expired: bool = False) -> tuple[ssl.SSLContext, str]:
    """A server context with a self-signed certificate for 127.0.0.1 naming NODE, and the certificate's PEM path."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, NODE)])
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=10 if expired else 0)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=days_valid))
                   .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                  False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .sign(key, hashes.SHA256()))
    (tmp_path / "c.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    return context, str(tmp_path / "c.pem")


def said(app, detail: str) -> tuple[str, str]:
    from flask_babel import force_locale

    from app.labels import health_detail_label

    with app.test_request_context("/"):
        with force_locale("en"):
            english = health_detail_label(detail)
        with force_locale("zh_CN"):
            return english, health_detail_label(detail)


def test_tls_failures_are_said_in_the_readers_language(app, servers, people, tmp_path):  # noqa: F811
    """A certificate that failed verification was stored and shown as aiohttp's text ("Cannot connect to host
    127.0.0.1:33073 ssl:True [SSLCertVerificationError: (1, '[SSL: CERTIFICATE_VERIFY_FAILED] ... (_ssl.c:1006)')]"),
    in English on the Chinese console. The common cases are said in words both languages have."""
    foreign, _ = self_signed_server_context(tmp_path)
    [untrusted] = poll([poller.PollTarget(NODE, servers(NODE, "ok", ssl_context=foreign).url)],
                       ssl_context=own_keys.management_client_ssl_context())
    assert untrusted.failure == "tls" and said(app, untrusted.detail) == (
        "the server certificate does not chain to the CA", "服务器证书不能链接到本 CA")

    (tmp_path / "old").mkdir()
    old, old_pem = self_signed_server_context(tmp_path / "old", expired=True)
    trusting_it = ssl.create_default_context(cafile=old_pem)
    [expired] = poll([poller.PollTarget(NODE, servers(NODE, "ok", ssl_context=old).url)], ssl_context=trusting_it)
    assert expired.failure == "tls" and said(app, expired.detail) == (
        "the server certificate has expired", "服务器证书已过期")

    node, keys = admit_local(people)  # its certificate names 127.0.0.1, polled here as localhost
    named = servers(node.node_id, "ok", ssl_context=node_server_context(app, node, keys))
    [elsewhere] = poll([poller.PollTarget(node.node_id, named.url.replace("127.0.0.1", "localhost"))],
                       ssl_context=own_keys.management_client_ssl_context())
    assert elsewhere.failure == "tls" and said(app, elsewhere.detail) == (
        "the server certificate is not valid for this host", "服务器证书对该主机无效")


def test_an_answer_that_is_no_valid_http_is_said_so_without_its_bytes(app):
    """A malformed answer was stored as aiohttp's parser message, the node's bytes and the polled URL in it
    ("ClientResponseError: 400, message='Invalid header token: b'X-<script>...'"), shown in English."""
    def garbage(connection, _stop):
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-<script>\x01: \xe2\x80\xae\r\nContent-Length: 2\r\n\r\n{}")

    with raw_receiver(garbage, path="") as url:
        [result] = poll([poller.PollTarget(NODE, url)])
    assert (result.ok, result.failure) == (False, "error"), result
    assert said(app, result.detail) == ("the answer is not valid HTTP", "应答不是有效的 HTTP"), result.detail


def test_a_poll_once_ends_its_process_while_a_host_name_lookup_still_hangs(tmp_path):
    """The round ended without waiting for a hung lookup, but its thread was a pool's, which Python joins when the
    process exits: `flask health poll --once` and a scheduler's stop still waited as long as the resolver did. The
    lookup here never ends (getaddrinfo blocks for one name: what a zone whose servers never answer does, outside
    this machine); the process must end anyway."""
    import subprocess
    import sys

    script = tmp_path / "hung_lookup.py"
    script.write_text(
        "import socket, threading\n"
        "real = socket.getaddrinfo\n"
        "def lookup(host, *args, **kwargs):\n"
        "    if host == 'hang.invalid':\n"
        "        threading.Event().wait()  # no answer, ever\n"
        "    return real(host, *args, **kwargs)\n"
        "socket.getaddrinfo = lookup\n"
        "from app.health import poller\n"
        "[result] = poller.poll_once([poller.PollTarget('36000000002025000001', 'http://hang.invalid:8080')],"
        " timeout=1.0)\n"
        "print(result.failure)\n")
    project = str(Path(__file__).resolve().parent.parent)
    try:
        ended = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                               cwd=project, env={**os.environ, "PYTHONPATH": project})
    except subprocess.TimeoutExpired:
        pytest.fail("the process waited for the hung lookup")
    assert ended.returncode == 0 and ended.stdout.strip() == "timeout", ended.stdout + ended.stderr


def test_a_node_closing_the_connection_during_the_tls_handshake_is_said_so(app):
    """A server that reads the TLS hello and hangs up was stored as aiohttp's "Cannot connect to host
    127.0.0.1:53229 ssl:default [None]", in English on the Chinese console."""
    with raw_receiver(lambda _connection, _stop: None, path="") as url:  # reads the hello, hangs up
        [result] = poll([poller.PollTarget(NODE, url.replace("http://", "https://"))],
                        ssl_context=own_keys.management_client_ssl_context())
    assert (result.ok, result.failure) == (False, "tls"), result
    assert said(app, result.detail) == ("the node closed the connection during the TLS handshake",
                                        "节点在 TLS 握手中关闭了连接"), result.detail


def test_a_node_resetting_the_connection_after_the_tls_handshake_is_said_so(app, tmp_path):
    """A node that takes the handshake, then resets the connection (as one refusing the management node's client
    certificate under TLS 1.3 does) was stored as aiohttp's "ClientOSError: [Errno 104] Connection reset by peer",
    in English on the Chinese console."""
    import struct

    server_context, pem = self_signed_server_context(tmp_path)
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def accept_and_reset():  # each connection: aiohttp tries a request again once on a reset
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            wrapped = server_context.wrap_socket(connection, server_side=True)
            wrapped.recv(65536)  # the request
            wrapped.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            wrapped.close()  # with a zero linger: a reset, not an orderly close
            done.set()

    thread = threading.Thread(target=accept_and_reset, daemon=True)
    thread.start()
    try:
        [result] = poll([poller.PollTarget(NODE, f"https://127.0.0.1:{listener.getsockname()[1]}")],
                        ssl_context=ssl.create_default_context(cafile=pem))
    finally:
        stop_listening(listener)
        thread.join(30)
    assert done.is_set() and (result.ok, result.failure) == (False, "error"), result
    assert said(app, result.detail) == ("the node reset the connection", "节点重置了连接"), result.detail
