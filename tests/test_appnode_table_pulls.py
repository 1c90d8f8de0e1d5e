"""A node missing from the reference node's routing table (docs/protocol.md §2.2-§2.3): approved or resumed since
the last scheduled pull, or unknown to the management node. Before refusing it, the node pulls the table once (at
most once per 30 s) when sending to it, asking its home node for a group operation, taking a member on it into a
group homed here (and having it confirm them), downloading from it and receiving from it, each over real mutual
TLS against a real management node."""

from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from html import unescape

import flask
import pytest
from click.testing import CliRunner
from sqlalchemy import update

from app.admission import nodes
from app.appnode import protocol
from app.appnode.cli import cli
from app.appnode.groups import new_group_id
from app.appnode.protocol import NotFound, UnknownPeer
from app.appnode.store import Group, Outbox, utcnow
from app.extensions import db
from app.routing.client import RouteClient
from tests.appnode_harness import ServedNode, raw_post
from tests.test_appnode import (  # noqa: F401 (fixture)
    PDF,
    network,
    settle,
    stored_messages,
    sync_until,
    text_envelope,
)
from tests.test_sessions import people  # noqa: F401 (fixture)


@contextmanager
def route_pulls(app):
    """The status of every `GET /api/v1/routes` the management node answers meanwhile, in order."""
    pulls = []

    def count_pulls(sender, response, **extra):
        if flask.request.path == "/api/v1/routes":
            pulls.append(response.status_code)

    flask.request_finished.connect(count_pulls, app)
    try:
        yield pulls
    finally:
        flask.request_finished.disconnect(count_pulls, app)


def together(count: int, action) -> list:
    """`action()` from `count` threads released at once by a barrier; their results, in thread order."""
    barrier = threading.Barrier(count)

    def released(_):
        barrier.wait(timeout=30)
        return action()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(released, range(count)))


def resumed_since_the_last_pull(served: dict, node: ServedNode, reader: ServedNode) -> None:
    """`node` suspended until `reader`'s table drops it, then resumed: the management node lists it again and
    `reader`'s next scheduled pull is an hour off, as for a node approved since that pull."""
    nodes.suspend(nodes.get(node.id), "drill", by=served["minister"])
    db.session.commit()
    sync_until(reader, lambda: reader.node.routes.peek(node.id) is None, "the table to drop the suspended node")
    nodes.resume(nodes.get(node.id), "drill over", by=served["minister"])
    db.session.commit()
    probe = served["join"]("110000")
    sync_until(probe, lambda: probe.node.routes.peek(node.id) is not None, "the management node to list it again")
    assert reader.node.routes.peek(node.id) is None


# ---- sending ----------------------------------------------------------------------------------------------------

def test_a_node_approved_after_the_last_pull_is_sent_to_at_once(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync_until(b, lambda: b.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None  # A pulled before C was approved, and its next pull is an hour off
    message = a.node.send_text("zhangsan", c.user("sunqi"), "你好")
    assert [row.state for row in a.node.outbox()] == ["delivered"]
    assert [stored.message_id for stored in stored_messages(c)] == [message.message_id]


def test_sending_to_a_node_nobody_approved_pulls_once_and_says_the_table_is_fresh(network, app):  # noqa: F811
    a = network["a"]
    with route_pulls(app) as pulls:
        for _ in range(2):  # the second within the refresh interval: no second pull
            with pytest.raises(UnknownPeer, match=r"node 44000000002025000999 is not in this node's routing table "
                                                  r"as pulled from the management node (just now|\d+ s ago)"):
                a.node.send_text("zhangsan", "lisi@44000000002025000999", "谁")
    assert len(pulls) == 1
    assert a.node.outbox() == []


def test_a_group_request_to_a_home_node_resumed_since_the_last_pull_is_sent_at_once(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    resumed_since_the_last_pull(network, a, b)
    assert b.node.group_operation("lisi", group.address, "invite", [b.user("zhaoliu")]) == "accepted"
    settle(a, b)
    assert b.user("zhaoliu") in b.node.groups("zhaoliu")[0].members


def test_a_file_from_a_node_resumed_since_the_last_pull_is_downloaded_at_once(network):  # noqa: F811
    a, b = network["a"], network["b"]
    message = a.node.send_file("zhangsan", b.user("lisi"), PDF, "file", file_name="协查通报.pdf")
    resumed_since_the_last_pull(network, a, b)
    assert b.node.file_bytes(b.node.download("lisi", message.message_id)) == PDF


def test_sends_at_once_to_a_node_approved_after_the_last_pull_make_one_pull_and_all_arrive(network, app):  # noqa: F811
    a = network["a"]
    c = network["join"]("110000")
    sync_until(c, lambda: c.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None
    with route_pulls(app) as pulls:
        sent = together(6, lambda: a.node.send_text("zhangsan", c.user("sunqi"), "并发").message_id)
    assert len(pulls) == 1  # the others waited for that pull, and its table lists C
    assert [row.state for row in a.node.outbox()] == ["delivered"] * 6
    assert sorted(stored.message_id for stored in stored_messages(c)) == sorted(sent)


# ---- a group's home node --------------------------------------------------------------------------------------

def test_a_group_with_a_member_on_a_node_approved_after_the_home_nodes_last_pull_is_created_at_once(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync_until(b, lambda: b.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None  # A pulled before C was approved, and its next pull is an hour off
    group = a.node.create_group("zhangsan", "专班", [c.user("sunqi")])
    assert group.members == [a.user("zhangsan"), c.user("sunqi")]
    assert [replica.address for replica in c.node.groups("sunqi")] == [group.address]  # C confirmed it


def test_a_member_on_a_node_resumed_since_the_home_nodes_last_pull_is_invited_at_once(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班")
    resumed_since_the_last_pull(network, b, a)
    assert a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")]) == "applied"
    assert b.user("lisi") in a.node.groups("zhangsan")[0].members
    assert [replica.address for replica in b.node.groups("lisi")] == [group.address]


def test_a_member_nodes_invite_of_a_user_on_a_node_neither_table_lists_yet_is_applied_at_once(network):  # noqa: F811
    """B asks home A to invite a user of C, approved after both pulled: each pulls once before it would refuse."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    c = network["join"]("110000")
    probe = network["join"]("110000")
    sync_until(probe, lambda: probe.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None and b.node.routes.peek(c.id) is None
    assert b.node.group_operation("lisi", group.address, "invite", [c.user("sunqi")]) == "accepted"
    settle(a, b, c)
    assert c.user("sunqi") in a.node.groups("zhangsan")[0].members
    assert [replica.address for replica in c.node.groups("sunqi")] == [group.address]


def test_a_member_on_a_node_nobody_approved_is_refused_as_not_found_after_one_pull(network, app):  # noqa: F811
    a = network["a"]
    group = a.node.create_group("zhangsan", "专班")
    nobody = "sunqi@44000000002025000999"
    refused = (r"sunqi@44000000002025000999: node 44000000002025000999 is not in the routing table as pulled from "
               r"the management node (just now|\d+ s ago)")
    with route_pulls(app) as pulls:
        with pytest.raises(NotFound, match=refused):
            a.node.create_group("zhangsan", "幻影", [nobody])
        with pytest.raises(NotFound, match=refused):  # within the refresh interval: no second pull
            a.node.group_operation("zhangsan", group.address, "invite", [nobody])
    assert len(pulls) == 1
    assert [listed.members for listed in a.node.groups("zhangsan")] == [[a.user("zhangsan")]]


def test_the_confirmation_pulls_for_a_node_approved_since_the_last_pull(network):  # noqa: F811
    """The home node asks a node gaining members to confirm them (§8.9): one missing from the table (dropped
    by a pull between the members' check and the confirmation) is pulled for, not refused at once."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    sync_until(b, lambda: b.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None
    draft = Group(group_id=new_group_id(), home_node_id=a.id, name="专班", notice="", owner=a.user("zhangsan"),
                  members=[a.user("zhangsan"), c.user("sunqi")], seq=1)
    envelope = protocol.make_envelope(from_node=a.id, to_node=c.id, type="group_op",
                                      payload=a.node._announcement(draft, "create", draft.owner, [c.user("sunqi")]))
    assert a.node._deliver_now(c.id, envelope, [c.user("sunqi")]) == (None, False)  # accepted
    assert [replica.address for replica in c.node.groups("sunqi")] == [draft.address]


# ---- receiving --------------------------------------------------------------------------------------------------

def test_a_node_approved_after_the_receivers_last_pull_is_received_from_at_its_first_try(network):  # noqa: F811
    a, b = network["a"], network["b"]
    a.node.sync_routes()  # A's scheduled pull, a moment before C is approved
    c = network["join"]("110000")
    sync_until(b, lambda: b.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None
    message = c.node.send_text("sunqi", a.user("zhangsan"), "你好")
    assert [(row.state, row.attempts) for row in c.node.outbox()] == [("delivered", 1)]
    assert [stored.message_id for stored in stored_messages(a)] == [message.message_id]


def test_first_messages_at_once_from_a_node_approved_after_the_last_pull_make_one_pull_and_all_land(
        network, app):  # noqa: F811
    a = network["a"]
    c = network["join"]("110000")
    sync_until(c, lambda: c.node.routes.peek(c.id) is not None, "the management node to publish node C")
    assert a.node.routes.peek(c.id) is None
    envelopes = [text_envelope(c, a, f"并发 {n}", message={"to": a.user("zhangsan")}) for n in range(6)]
    with route_pulls(app) as pulls:
        answers = together(6, lambda: raw_post(c.node, a, "message", envelopes.pop()))
    assert [status for status, _ in answers] == [200] * 6  # none refused while another thread pulled
    assert len(pulls) == 1
    assert len(stored_messages(a)) == 6


def test_a_caller_outside_the_table_makes_the_receiver_pull_once_within_the_interval(network, app):  # noqa: F811
    a, b = network["a"], network["b"]
    nodes.suspend(nodes.get(a.id), "drill", by=network["minister"])
    db.session.commit()
    sync_until(b, lambda: b.node.routes.peek(a.id) is None, "B's table to drop the suspended A")  # pulled just now
    with route_pulls(app) as pulls:
        for _ in range(2):  # the second within the refresh interval: no second pull
            status, body = raw_post(a.node, b, "message", text_envelope(a, b))
            assert status == 403 and body["error"]["code"] == "unknown_peer"
    assert len(pulls) == 1
    assert stored_messages(b) == []


# ---- an envelope waiting in the outbox --------------------------------------------------------------------------

def waited_two_hours(served: ServedNode) -> None:
    """Every outbox row of `served` first tried two hours ago (past the 1-hour window of a table disagreement),
    due now."""
    with served.node.db.begin() as session:
        session.execute(update(Outbox).values(first_attempt_at=utcnow() - timedelta(hours=2), next_attempt_at=utcnow()))


def test_an_envelope_that_waited_hours_for_a_peer_whose_certificate_was_renewed_meanwhile_is_delivered(network):  # noqa: F811
    from tests.test_appnode_renewal import admin_renews, await_listed

    a, b = network["a"], network["b"]
    b.stop()
    message = a.node.send_text("zhangsan", b.user("lisi"), "等你回来")
    assert [row.state for row in a.node.outbox()] == ["pending"]
    waited_two_hours(a)
    request, _key, _reused = b.node.certificate_request(new_key=False)
    renewed = admin_renews(network, b, request)
    await_listed(b, b.id, renewed.sha256)  # B installs its renewed certificate; A's table still lists the old one
    b.start()

    assert a.node.deliver() == {"delivered": 1, "retry": 0, "failed": 0}

    assert a.node.routes.peek(b.id)["cert_sha256"] == renewed.sha256
    assert [stored.message_id for stored in stored_messages(b)] == [message.message_id]


def test_an_envelope_that_waited_hours_for_a_peer_resumed_since_the_last_pull_is_delivered(network):  # noqa: F811
    a, b = network["a"], network["b"]
    message = a.node.send_text("zhangsan", b.user("lisi"), "停用期间", deliver=False)
    resumed_since_the_last_pull(network, b, a)
    waited_two_hours(a)

    assert a.node.deliver() == {"delivered": 1, "retry": 0, "failed": 0}

    assert [stored.message_id for stored in stored_messages(b)] == [message.message_id]


class SilentRegistry:
    """A management node that accepts connections and never answers (hung), counting them; `release` closes
    them, so a pull waiting on one ends at once."""

    def __init__(self):
        import socket
        self.server = socket.create_server(("127.0.0.1", 0))
        self.accepted, self.connections = threading.Event(), []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            self.connections.append(connection)
            self.accepted.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}"

    def release(self):
        self.server.close()
        for connection in self.connections:
            connection.close()


GONE = "11000000002025000099"  # a node no table lists (revoked or suspended since its rows were queued)


def queue_to_gone(a):
    with a.node.db.begin() as session:
        a.node._enqueue(session, GONE, "message", protocol.make_envelope(
            from_node=a.id, to_node=GONE, type="message", payload={"message_id": protocol.new_message_id()}))


def test_delivery_does_not_pull_again_within_30_s_of_a_failed_pull(network):  # noqa: F811
    """A hung management node held every delivery the table pull's timeout (15 s) each time a row's peer was
    missing and the last pull for a recipient had started 30 s ago, even when it had just failed."""
    a = network["a"]
    silent = SilentRegistry()
    a.node.registry.base_url, a.node.registry.timeout = silent.url, 1
    try:
        with pytest.raises(Exception, match="unreachable"):
            a.node.sync_routes()  # the scheduled pull fails
        tried = len(silent.connections)
        queue_to_gone(a)
        a.node.deliver()
        assert len(silent.connections) == tried  # not asked again
        [row] = [row for row in a.node.outbox() if row.peer_node == GONE]
        assert row.state == "pending" and "not in the routing table" in row.last_error
    finally:
        silent.release()


def test_delivery_does_not_wait_behind_a_table_pull_in_another_thread(network):  # noqa: F811
    """A row whose peer is missing waited for another thread's pull from a hung management node, and the
    batch's outcomes with it: it goes on with the table as it is, and the healthy row is written in the same call."""
    a, b = network["a"], network["b"]
    silent = SilentRegistry()
    a.node.registry.base_url, a.node.registry.timeout = silent.url, 60
    puller = threading.Thread(target=a.node._pull_for_recipient, args=("11000000002025000098",), daemon=True)
    try:
        puller.start()
        assert silent.accepted.wait(30)  # the other thread's pull is under way, holding the lock
        queue_to_gone(a)
        healthy = a.node.send_text("zhangsan", b.user("lisi"), "正常", deliver=False)
        outcome = a.node.deliver()
        assert puller.is_alive()  # deliver() did not wait for it
        assert outcome == {"delivered": 1, "retry": 1, "failed": 0}
        states = {row.message_id: row.state for row in a.node.outbox()}
        assert states[healthy.message_id] == "delivered"
    finally:
        silent.release()
        puller.join(30)


# ---- a table the management node no longer re-signs --------------------------------------------------------------

def a_day_on(monkeypatch, *served: ServedNode) -> None:
    """The route clients' clock 25 h on, past the 24 h a table lasts: the table each node holds has expired, as
    when the management node's scheduler stopped re-signing it; the management node still serves that version, so
    a pull answers 304. Route clients opened from now on (the CLI's) read the same clock."""
    def later():
        return datetime.now(UTC) + timedelta(hours=25)

    monkeypatch.setitem(RouteClient.__init__.__kwdefaults__, "now", later)
    for node in served:
        node.node.routes.now = later


def expired_account(served: ServedNode) -> str:
    routes = served.node.routes
    return (f"this node's routing table v{routes.version} expired at {routes.expires_at} and the management node "
            f"has not re-signed it (or this machine's clock is ahead): ask its operators")


def test_routes_pull_on_an_expired_table_says_it_expired_and_exits_3(network, monkeypatch):  # noqa: F811
    """A 304 for an expired table read "routing table v75 unchanged", exit 0: as if all were well."""
    a = network["a"]
    a_day_on(monkeypatch, a)
    version, expires_at = a.node.routes.version, a.node.routes.expires_at
    result = CliRunner().invoke(cli, ["--data", str(a.dir), "routes", "pull"])
    assert result.exit_code == 3, result.output
    assert result.stdout == (f"routing table v{version} unchanged, and it expired at {expires_at}: the management "
                             f"node has not re-signed it (or this machine's clock is ahead); ask its operators\n")
    result = CliRunner().invoke(cli, ["--data", str(a.dir), "--json", "routes", "pull"])
    assert result.exit_code == 3, result.output
    assert json.loads(result.stdout) == {"outcome": "unchanged", "version": version, "changes": [],
                                         "expired_at": expires_at}


def test_sending_on_an_expired_table_blames_the_table_not_the_node_id(network, monkeypatch):  # noqa: F811
    """The node is listed; its table expired. The refusal said "check the node id, and that the management node
    has approved it"."""
    a, b = network["a"], network["b"]
    a_day_on(monkeypatch, a)
    with pytest.raises(UnknownPeer) as refusal:
        a.node.send_text("zhangsan", b.user("lisi"), "在吗")
    assert str(refusal.value.message) == f"node {b.id} cannot be looked up: {expired_account(a)}"
    assert a.node.outbox() == []


def test_a_group_member_on_an_expired_table_is_refused_naming_the_table(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    a_day_on(monkeypatch, a)
    with pytest.raises(NotFound) as refusal:
        a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    assert refusal.value.message.endswith(f"node {b.id} is not in the routing table; no node is: "
                                          f"{expired_account(a)}")


def test_a_caller_on_an_expired_table_is_told_the_receivers_table_expired(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    a_day_on(monkeypatch, b)
    status, body = raw_post(a.node, b, "message", text_envelope(a, b))
    assert status == 403 and body["error"]["code"] == "unknown_peer"
    assert body["error"]["message"] == f"node {a.id} cannot be checked: {expired_account(b)}"
    assert stored_messages(b) == []


def test_status_and_the_page_say_the_table_expired_and_why(network, monkeypatch):  # noqa: F811
    from tests.test_appnode_page import page

    a = network["a"]
    a_day_on(monkeypatch, a)
    result = CliRunner().invoke(cli, ["--data", str(a.dir), "status"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1] == (f"routing table v{a.node.routes.version} (expired at "
                                             f"{a.node.routes.expires_at}: the management node has not re-signed "
                                             f"it (or this machine's clock is ahead); ask its operators)")
    document = json.loads(CliRunner().invoke(cli, ["--data", str(a.dir), "--json", "status"]).stdout)
    assert document["routes_expired"] and document["routes_expires_at"] == a.node.routes.expires_at
    assert f"Routing table problem: {expired_account(a)}" in unescape(page(a, "/?user=zhangsan&lang=en"))
    assert "路由表问题" in page(a, "/?user=zhangsan&lang=zh_CN")


def test_the_node_logs_once_that_it_is_left_on_an_expired_table(network, monkeypatch, caplog):  # noqa: F811
    a = network["a"]
    a_day_on(monkeypatch, a)
    with caplog.at_level(logging.INFO, logger="mpim.appnode"):
        for _ in range(3):
            assert a.node.sync_routes().expired_at == a.node.routes.expires_at
    lines = [record.getMessage() for record in caplog.records if record.name == "mpim.appnode"]
    assert lines == [f"left on an expired table: {expired_account(a)}"]


def test_an_envelope_waiting_on_an_expired_table_says_the_table_expired(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    a.node.send_text("zhangsan", b.user("lisi"), "稍后", deliver=False)
    a_day_on(monkeypatch, a)
    assert a.node.deliver() == {"delivered": 0, "retry": 1, "failed": 0}
    [row] = a.node.outbox()
    assert row.state == "pending" and row.last_error == f"the peer is not in the routing table; no node is: " \
                                                        f"{expired_account(a)}"
