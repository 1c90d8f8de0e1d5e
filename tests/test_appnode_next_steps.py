"""What the reference node says when it stops the operator: each refusal names the next step (docs/operations.md,
"A node enrolled again"; README, the application node). A real management node over HTTP, real nodes
(`network`), and a closed port on 127.0.0.1 for a management node that does not answer."""

from __future__ import annotations

import json
import socket

from click.testing import CliRunner

from app.appnode.cli import cli
from tests.appnode_harness import enroll
from tests.test_appnode import network  # noqa: F401 (fixture)
from tests.test_appnode_join_again import revoke, run
from tests.test_appnode_trust_root import refusal
from tests.test_sessions import people  # noqa: F401 (fixture)

ENROL_AGAIN = "get a new enrollment token and run `join --again --token TOKEN`"


def test_a_revoked_node_is_told_to_enrol_again_by_status_and_by_a_plain_join(network):  # noqa: F811
    a, minister = network["a"], network["minister"]
    revoke(a, minister)
    pulled = run(a.dir, "routes", "pull")
    assert pulled.exit_code == 2 and refusal(pulled)["code"] == "node_revoked", pulled.output
    status = run(a.dir, "status")
    problem = json.loads(status.stdout)["certificate_problem"]
    assert "a revocation is final" in problem and ENROL_AGAIN in problem, problem

    joined = run(a.dir, "join", "--token", "mpet_unused")
    assert joined.exit_code == 1 and refusal(joined)["code"] == "already_joined", joined.output
    message = refusal(joined)["message"]
    assert message.startswith(f"already joined as {a.id}") and ENROL_AGAIN in message, message
    assert "`trust-root FILE`" in message  # after a new root, as before


def test_a_message_sent_by_a_revoked_node_is_not_reported_as_sent(network):  # noqa: F811
    """A revoked node's `send` exited 0: the envelope waited as pending, which a peer holding the routing table
    that left the node out refuses. It stays queued (a renewal may mend a certificate's revocation), but the
    command names the nodes it is queued for and the problem, and exits 3 as for a partial delivery, so a script
    does not count it delivered. A peer that has not pulled the new table yet still takes it: that is no failure."""
    a, b, minister = network["a"], network["b"], network["minister"]
    sent = run(a.dir, "send", "--as", "zhangsan", b.user("lisi"), "撤销前")
    assert sent.exit_code == 0 and json.loads(sent.stdout)["certificate_problem"] is None, sent.output
    revoke(a, minister)
    assert run(a.dir, "routes", "pull").exit_code == 2  # how the node learns it: the registry refuses its session
    early = run(a.dir, "send", "--as", "zhangsan", b.user("lisi"), "对方尚未更新路由")
    assert early.exit_code == 0 and json.loads(early.stdout)["queued_behind_problem"] == [], early.output

    assert b.node.sync_routes().outcome == "accepted"  # b's table no longer lists a
    sent = run(a.dir, "send", "--as", "zhangsan", b.user("lisi"), "撤销后")
    assert sent.exit_code == 3, sent.output
    said = json.loads(sent.stdout)
    assert "a revocation is final" in said["certificate_problem"] and said["queued_behind_problem"] == [b.id], said
    assert f"queued for node {b.id}, which refuses it until this node's certificate is mended: certificate" \
        in sent.stderr and ENROL_AGAIN in sent.stderr, sent.stderr
    assert [row.peer_node for row in a.node.outbox("pending") if row.message_id == said["message_id"]] == [b.id]


def test_an_application_still_pending_names_itself_who_approves_it_and_that_the_same_command_waits_on(
        network):  # noqa: F811
    a, minister = network["a"], network["minister"]
    revoke(a, minister)
    waiting = run(a.dir, "join", "--again", "--token", enroll("360000", minister), "--wait", "0")
    assert waiting.exit_code == 2 and refusal(waiting)["code"] == "application_pending", waiting.output
    application_id = a.node.setting("application_id")
    message = refusal(waiting)["message"]
    assert message.startswith(f"application {application_id} still pending"), message
    assert "接入申请 / Applications" in message and f"`flask applications approve {application_id}" in message
    assert "run the same command again" in message


def test_json_after_the_command_is_refused_saying_where_it_goes(tmp_path):
    text = CliRunner().invoke(cli, ["--data", str(tmp_path), "status", "--json"])
    assert text.exit_code == 2 and "No such option '--json'. (put --json before the command" in text.stderr
    both = CliRunner().invoke(cli, ["--data", str(tmp_path), "--json", "status", "--json"])
    assert both.exit_code == 2, both.output
    assert json.loads(both.stderr)["error"] == {"code": "usage_error",
                                                "message": "No such option '--json'. (put --json before the command)"}
    other = CliRunner().invoke(cli, ["--data", str(tmp_path), "--json", "status", "--jsn"])
    assert "before the command" not in json.loads(other.stderr)["error"]["message"]


def test_an_unreachable_management_node_is_named_with_how_to_correct_its_address(tmp_path):
    with socket.socket() as closed:  # a port nothing listens on once closed
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    registry = f"http://127.0.0.1:{port}"
    made = CliRunner().invoke(cli, ["--data", str(tmp_path / "n"), "init", "--registry", registry, "--division",
                                    "360000", "--endpoint", "https://127.0.0.1:8643", "--listen", "127.0.0.1:8643"])
    assert made.exit_code == 0, made.output
    joined = run(tmp_path / "n", "join", "--token", "mpet_x", "--wait", "0")
    assert refusal(joined)["code"] == "registry_unreachable", joined.output
    message = refusal(joined)["message"]
    assert message.startswith(f"the management node at {registry} is unreachable: "), message
    assert "is the management node running? correct its address with `init --if-missing --registry URL`" in message

