"""Review, approval, node ids, lifecycle, scope and resolution (SPEC §2-§3)."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import select

from app.admission import applications, nodes, tokens
from app.admission.models import Application, Node
from app.audit.models import AuditRecord
from app.divisions.models import Division
from app.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from app.extensions import db
from tests.factories import NodeKeys, change_document, node_document


@pytest.fixture
def minister(make_user):
    return make_user("minister")


@pytest.fixture
def jx_admin(make_user):
    return make_user("jx-admin", "provincial_admin", ("360000",))


def apply(user, division="360000", **overrides):
    document = node_document(division, **overrides)
    application = applications.submit_by_user(document, by=user)
    db.session.commit()
    return application


def admit(user, minister, division="360000", **overrides) -> Node:
    node = applications.approve(apply(user, division, **overrides), by=minister)
    db.session.commit()
    return node


def test_approval_assigns_the_spec_node_id_and_serials_per_division(jx_admin, minister, make_user):
    first = admit(jx_admin, minister)
    second = admit(jx_admin, minister)
    nanchang = admit(jx_admin, minister, "360100")
    assert first.node_id == "36000000002025000001"  # SPEC §2's own example
    assert second.node_id == "36000000002025000002"
    assert nanchang.node_id == "36010000002025000001"
    assert nodes.management_node_id() == "10000000002015000001"


def test_ids_are_never_reused_after_revocation(jx_admin, minister):
    first = admit(jx_admin, minister)
    nodes.revoke(first, "decommissioned", by=minister)
    db.session.commit()
    assert admit(jx_admin, minister).node_id.endswith("000002")


def test_node_records_its_token_and_who_issued_it(client, jx_admin, minister):
    _, raw = tokens.create_token("360000", by=jx_admin)
    db.session.commit()
    response = client.post("/api/v1/applications", json=node_document(), headers={"Authorization": f"Bearer {raw}"})
    node = applications.approve(applications.get(response.get_json()["application_id"]), by=minister)
    db.session.commit()
    assert node.enrolled_by_token.issued_by.username == "jx-admin"
    status = client.get(f"/api/v1/applications/{node.application_id}", headers={"Authorization": f"Bearer {raw}"})
    assert status.get_json()["node_id"] == node.node_id and status.get_json()["status"] == "approved"


def test_only_ministry_admins_approve_and_rejection_needs_a_reason(jx_admin, minister):
    application = apply(jx_admin)
    with pytest.raises(PermissionDenied):
        applications.approve(application, by=jx_admin)
    with pytest.raises(ValidationFailed):
        applications.reject(application, "  ", by=minister)
    applications.reject(application, "endpoint unreachable", by=minister)
    db.session.commit()
    with pytest.raises(Conflict):
        applications.approve(application, by=minister)
    assert application.status == "rejected" and application.reason == "endpoint unreachable"


def test_lifecycle_transitions_need_reasons_and_are_audited(jx_admin, minister):
    node = admit(jx_admin, minister)
    with pytest.raises(PermissionDenied):
        nodes.suspend(node, "maintenance", by=jx_admin)
    with pytest.raises(ValidationFailed):
        nodes.suspend(node, "", by=minister)
    nodes.suspend(node, "maintenance", by=minister)
    nodes.resume(node, "back", by=minister)
    nodes.suspend(node, "again", by=minister)
    nodes.revoke(node, "compromised key", by=minister)
    db.session.commit()
    with pytest.raises(Conflict):
        nodes.resume(node, "undo", by=minister)
    actions = list(db.session.scalars(select(AuditRecord.action).where(AuditRecord.target == node.node_id)))
    assert actions == ["node.suspend", "node.resume", "node.suspend", "node.revoke"]


def test_provincial_admin_may_ask_for_a_suspension_inside_its_scope_only(jx_admin, minister, make_user):
    node = admit(jx_admin, minister)
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    with pytest.raises(PermissionDenied):
        nodes.request_suspension(node, "looks hacked", by=gd_admin)
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    assert node.suspension_requested and node.status == "active"
    with pytest.raises(NotFound):
        nodes.get_visible(node.node_id, gd_admin)


def test_a_ministry_admin_suspends_and_does_not_ask(runner, jx_admin, minister):
    """The request is a province's way to reach the ministry, which decides; a ministry admin's own request (the
    CLI took one) waited on the dashboard for the ministry, and only a decline of its own could end it."""
    node = admit(jx_admin, minister)
    before = audit_count()
    with pytest.raises(PermissionDenied) as refused:
        nodes.request_suspension(node, "looks hacked", by=minister)
    db.session.rollback()
    assert refused.value.code == "ministry_suspends"
    asked = runner.invoke(args=["nodes", "request-suspension", node.node_id, "--reason", "x", "--user", "minister"])
    assert asked.exit_code == 1 and "suspends a node itself" in asked.output
    db.session.expire_all()
    assert not node.suspension_requested and audit_count() == before


def test_a_second_request_for_a_suspension_leaves_the_first_standing(jx_admin, minister, make_user):
    """A second provincial admin's request (another tab, an older page) replaced the first one's reason and name
    without a word: the ministry decided on a request its author never made."""
    node = admit(jx_admin, minister)
    other = make_user("jx-admin-2", "provincial_admin", ("360000",))
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    before = audit_count()
    with pytest.raises(Conflict) as refused:
        nodes.request_suspension(node, "just in case", by=other)
    db.session.rollback()
    assert refused.value.code == "suspension_already_requested" and "jx-admin" in str(refused.value.message)
    assert (node.suspension_request_reason, node.suspension_requested_by) == ("looks hacked", "jx-admin")
    assert audit_count() == before


def test_cli_asks_for_a_suspension_as_the_console_does(runner, jx_admin, minister, make_user):
    """SPEC §4: every console action has a CLI twin; a provincial admin's request for a suspension had none."""
    import json

    node = admit(jx_admin, minister)
    make_user("gd-admin", "provincial_admin", ("440000",))
    command = ["nodes", "request-suspension", node.node_id, "--reason", "looks hacked"]
    outside = runner.invoke(args=[*command, "--user", "gd-admin", "--json"])  # as the console: no such node
    assert outside.exit_code == 1 and json.loads(outside.output)["error"]["code"] == "node_not_found"
    asked = runner.invoke(args=[*command, "--user", "jx-admin", "--json"])
    assert asked.exit_code == 0, asked.output
    item = json.loads(asked.output)
    assert (item["node_id"], item["status"], item["suspension_requested"], item["suspension_requested_by"],
            item["suspension_request_reason"]) == (node.node_id, "active", True, "jx-admin", "looks hacked")
    [record] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "node.request_suspension"))
    assert (record.actor, record.target, record.detail) == ("jx-admin", node.node_id, {"reason": "looks hacked"})
    make_user("jx-admin-2", "provincial_admin", ("360000",))
    again = runner.invoke(args=[*command, "--user", "jx-admin-2"])
    assert again.exit_code == 1
    assert again.output == "error: jx-admin has already asked for this node's suspension; a ministry admin decides.\n"
    listed = runner.invoke(args=["nodes", "list", "--user", "minister", "--status", "suspension_requested", "--json"])
    assert [json.loads(line)["node_id"] for line in listed.output.splitlines()] == [node.node_id]
    suspended = runner.invoke(args=["nodes", "suspend", node.node_id, "--reason", "confirmed", "--user", "minister"])
    assert suspended.exit_code == 0, suspended.output
    plain = runner.invoke(args=[*command, "--user", "jx-admin"])
    assert plain.output == "error: Only an active node can be suspended.\n"
    assert "request-suspension" in runner.invoke(args=["nodes", "--help"]).output


def test_a_ministry_admin_declines_a_suspension_request_and_the_node_stays_active(jx_admin, minister):
    """The ministry could only suspend or revoke: a request it disagreed with waited on the dashboard for good,
    or the node left the routing table (suspend, then resume) to clear it."""
    node = admit(jx_admin, minister)
    with pytest.raises(Conflict) as none_yet:
        nodes.decline_suspension(node, "no evidence", by=minister)
    db.session.rollback()
    assert none_yet.value.code == "no_suspension_request"
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    with pytest.raises(PermissionDenied) as refused:
        nodes.decline_suspension(node, "no evidence", by=jx_admin)
    db.session.rollback()
    assert refused.value.code == "ministry_only" and node.suspension_requested
    with pytest.raises(ValidationFailed):
        nodes.decline_suspension(node, "  ", by=minister)
    db.session.rollback()
    assert nodes.suspension_requests_count(minister) == 1
    nodes.decline_suspension(node, "no evidence", by=minister)
    db.session.commit()
    assert not node.suspension_requested and node.status == "active"
    assert nodes.suspension_requests_count(minister) == 0
    [record] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "node.decline_suspension"))
    assert (record.actor, record.target, record.detail) == (
        "minister", node.node_id,
        {"reason": "no evidence", "requested_by": "jx-admin", "request_reason": "looks hacked"})
    assert nodes.declined_suspension(node).detail["reason"] == "no evidence"
    with pytest.raises(Conflict) as twice:
        nodes.decline_suspension(node, "again", by=minister)
    db.session.rollback()
    assert twice.value.code == "no_suspension_request"
    nodes.request_suspension(node, "still looks hacked", by=jx_admin)  # a new request may follow
    db.session.commit()
    assert node.suspension_requested and nodes.declined_suspension(node) is None


def test_an_admin_of_the_nodes_province_withdraws_a_suspension_request_and_no_other(jx_admin, minister, make_user):
    node = admit(jx_admin, minister)
    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    colleague = make_user("jx-admin-2", "provincial_admin", ("360000",))
    auditor = make_user("auditor", "auditor")
    with pytest.raises(Conflict) as none_yet:
        nodes.withdraw_suspension(node, "", by=jx_admin)
    db.session.rollback()
    assert none_yet.value.code == "no_suspension_request"
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    before = audit_count()
    for outsider, code in ((gd_admin, "out_of_scope"), (auditor, "role_forbidden")):
        with pytest.raises(PermissionDenied) as refused:
            nodes.withdraw_suspension(node, "", by=outsider)
        db.session.rollback()
        assert refused.value.code == code and node.suspension_requested
    assert audit_count() == before
    nodes.withdraw_suspension(node, "false alarm", by=colleague)  # the province's request, not one person's
    db.session.commit()
    assert not node.suspension_requested and node.status == "active"
    assert nodes.declined_suspension(node) is None  # withdrawn, not declined
    [record] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "node.withdraw_suspension"))
    assert (record.actor, record.target, record.detail) == (
        "jx-admin-2", node.node_id, {"reason": "false alarm", "requested_by": "jx-admin",
                                     "request_reason": "looks hacked"})


def test_a_ministry_admin_declines_a_suspension_request_and_cannot_withdraw_it(runner, jx_admin, minister):
    """Withdrawing is the requesting province's; the ministry's answer is a decline, whose reason the requester
    sees on the node's page. A ministry admin's withdrawal ended the request with no reason and no word to them."""
    import json

    node = admit(jx_admin, minister)
    nodes.request_suspension(node, "looks hacked", by=jx_admin)
    db.session.commit()
    before = audit_count()
    with pytest.raises(PermissionDenied) as refused:
        nodes.withdraw_suspension(node, "", by=minister)
    db.session.rollback()
    assert refused.value.code == "province_only" and "decline" in refused.value.message
    cli = runner.invoke(args=["nodes", "withdraw-suspension", node.node_id, "--user", "minister", "--json"])
    assert cli.exit_code == 1 and json.loads(cli.output)["error"]["code"] == "province_only"
    db.session.expire_all()
    assert node.suspension_requested and audit_count() == before


def test_cli_declines_and_withdraws_a_suspension_request_as_the_console_does(runner, jx_admin, minister, make_user):
    import json

    node = admit(jx_admin, minister)
    make_user("gd-admin", "provincial_admin", ("440000",))
    ask = ["nodes", "request-suspension", node.node_id, "--reason", "looks hacked", "--user", "jx-admin"]
    withdraw = ["nodes", "withdraw-suspension", node.node_id]
    decline = ["nodes", "decline-suspension", node.node_id, "--reason", "no evidence"]
    nothing = runner.invoke(args=[*decline, "--user", "minister", "--json"])
    assert nothing.exit_code == 1 and json.loads(nothing.output)["error"]["code"] == "no_suspension_request"
    assert runner.invoke(args=ask).exit_code == 0
    outside = runner.invoke(args=[*withdraw, "--user", "gd-admin", "--json"])  # as the console: no such node
    assert outside.exit_code == 1 and json.loads(outside.output)["error"]["code"] == "node_not_found"
    provincial = runner.invoke(args=[*decline, "--user", "jx-admin", "--json"])
    assert provincial.exit_code == 1 and json.loads(provincial.output)["error"]["code"] == "ministry_only"
    withdrawn = runner.invoke(args=[*withdraw, "--user", "jx-admin", "--json"])
    assert withdrawn.exit_code == 0, withdrawn.output
    item = json.loads(withdrawn.output)
    assert (item["node_id"], item["status"], item["suspension_requested"]) == (node.node_id, "active", False)
    again = runner.invoke(args=[*withdraw, "--user", "jx-admin"])
    assert again.exit_code == 1 and again.output == "error: No suspension request is waiting for this node.\n"
    assert runner.invoke(args=ask).exit_code == 0
    declined = runner.invoke(args=[*decline, "--user", "minister"])
    assert declined.exit_code == 0, declined.output
    assert declined.output == f"suspension request for {node.node_id} declined; it stays active\n"
    without_reason = runner.invoke(args=["nodes", "decline-suspension", node.node_id, "--user", "minister"])
    assert without_reason.exit_code == 2  # click: --reason is required
    actions = list(db.session.scalars(select(AuditRecord.action).where(AuditRecord.target == node.node_id,
                                                                      AuditRecord.action.like("%suspension"))))
    assert actions == ["node.request_suspension", "node.withdraw_suspension", "node.request_suspension",
                       "node.decline_suspension"]
    help_text = runner.invoke(args=["nodes", "--help"]).output
    assert "decline-suspension" in help_text and "withdraw-suspension" in help_text


def test_provincial_admin_cannot_apply_outside_its_scope(jx_admin):
    with pytest.raises(PermissionDenied):
        apply(jx_admin, "440300")


def test_change_request_goes_through_review(jx_admin, minister):
    node = admit(jx_admin, minister, endpoint="https://old.jx.example")
    document = change_document(endpoint="https://old.jx.example/v2", contact={
        "name": "李四", "phone": "0791-7654321", "email": "li@jx.example"})
    change = applications.submit_change(node, document, by=jx_admin)
    db.session.commit()
    assert node.endpoint == "https://old.jx.example"  # nothing changes before approval
    applications.approve(change, by=minister)
    db.session.commit()
    assert (node.endpoint, node.contact_name) == ("https://old.jx.example/v2", "李四")
    moved = change_document(endpoint="https://new-host.jx.example")
    with pytest.raises(ValidationFailed) as caught:
        applications.submit_change(node, moved, by=jx_admin)
    assert caught.value.code == "missing_csr"


def test_the_approve_confirmation_says_what_approving_does(client, jx_admin, minister):
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    contact_only = applications.submit_change(node, change_document(endpoint=node.endpoint, contact={
        "name": "李四", "phone": "0791-7654321", "email": "li@jx.example"}), by=jx_admin)
    admission = apply(jx_admin)
    db.session.commit()
    console = Console(client)
    console.login("minister")
    assert "证书保持不变" in client.get(f"/applications/{contact_only.id}").get_data(as_text=True)
    applications.reject(contact_only, "test", by=minister)
    keys = NodeKeys()
    with_csr = applications.submit_change(node, node_document(endpoint=node.endpoint, csr=keys.csr), by=jx_admin)
    db.session.commit()
    assert "按申请中的 CSR 签发证书" in client.get(f"/applications/{with_csr.id}").get_data(as_text=True)
    assert "将分配节点编号并签发证书" in client.get(f"/applications/{admission.id}").get_data(as_text=True)


def test_resolve_by_longest_prefix(client, jx_admin, minister):
    province = admit(jx_admin, minister, "360000")
    nanchang = admit(jx_admin, minister, "360100")
    assert nodes.resolve("360102") == (nanchang, "prefecture")
    assert nodes.resolve("360202") == (province, "province")
    donghu = admit(jx_admin, minister, "360102")
    assert nodes.resolve("360102") == (donghu, "county")
    nodes.suspend(donghu, "maintenance", by=minister)
    db.session.commit()
    body = client.get("/api/v1/resolve?division=360102").get_json()
    assert body["node"]["node_id"] == nanchang.node_id and body["matched_level"] == "prefecture"
    assert body["division_retired"] is False and body["retired_in"] is None
    retired = db.session.get(Division, "360104")
    retired.retired, retired.retired_in = True, "2099"
    db.session.commit()
    body = client.get("/api/v1/resolve?division=360104").get_json()  # old addresses still resolve, flagged
    assert body["node"]["node_id"] == nanchang.node_id and (body["division_retired"], body["retired_in"]) == \
        (True, "2099")
    from tests.conftest import Console

    console = Console(client)
    console.login("minister")
    page = client.get("/nodes/resolve?division=360104").get_data(as_text=True)
    assert "360104 已在 GB/T 2260 2099 版中撤销" in page and nanchang.node_id in page
    assert "江西：启用 2，暂停 1，故障 0" in client.get("/").get_data(as_text=True)  # the province tile's tooltip
    assert client.get("/api/v1/resolve?division=440300").get_json()["error"]["code"] == "no_serving_node"
    nation = client.get("/api/v1/resolve?division=100000")
    assert nation.status_code == 404 and nation.get_json()["error"]["code"] == "no_serving_node"
    assert "no node of its own" in nation.get_json()["error"]["message"]
    assert client.get("/api/v1/resolve?division=12").status_code == 400


@pytest.mark.parametrize(("query", "status", "code"), [("", 400, "invalid_division_code"),
                                                       ("?division=", 400, "invalid_division_code"),
                                                       ("?division=abc", 400, "invalid_division_code"),
                                                       ("?division_code=360000", 400, "invalid_division_code"),
                                                       ("?division=999999", 404, "division_not_found")])
def test_a_resolve_refusal_names_the_query_parameter_it_reads(client, query, status, code):
    """The parameter is `division`; the refusal said "field": "division_code", a name the request never had."""
    response = client.get(f"/api/v1/resolve{query}")
    error = response.get_json()["error"]
    assert (response.status_code, error["code"], error["field"]) == (status, code, "division")


def test_resolve_passes_over_a_node_the_routing_table_leaves_out(jx_admin, minister):
    """An active node whose certificates are all revoked or expired is not in the routing table: nobody could
    reach it, so resolve names the node above it, as the table's readers would."""
    from app.pki import revocation
    from app.pki import service as pki
    from app.routing import service as routing

    province = admit(jx_admin, minister, "360000")
    nanchang = admit(jx_admin, minister, "360100")
    revocation.revoke(pki.current_certificate(nanchang.node_id), "key_compromise", by=minister)
    db.session.commit()
    assert nanchang.status == "active" and nanchang.node_id not in routing.current_entries()
    assert nodes.resolve("360102") == (province, "province")
    pki.renew(nanchang, NodeKeys().csr, by=minister)
    db.session.commit()
    assert nodes.resolve("360102") == (nanchang, "prefecture")


def test_resuming_a_node_without_a_valid_certificate_says_it_stays_out_of_the_routing_table(client, runner, jx_admin,
                                                                                           minister):
    """A certificate may expire, or be revoked, while its node is suspended: resumed, the node is still out of the
    routing table (it lists only nodes with a valid certificate). The confirmation, the result and the CLI say so,
    instead of promising that it returns."""
    import json
    from datetime import timedelta

    from app.database import utcnow
    from app.pki import revocation
    from app.pki import service as pki
    from app.routing import service as routing
    from tests.conftest import Console

    expired, revoked, fine = (admit(jx_admin, minister) for _ in range(3))
    for node in (expired, revoked, fine):
        nodes.suspend(node, "drill", by=minister)
    db.session.commit()
    console = Console(client)
    console.login("minister")
    page = client.get(f"/nodes/{expired.node_id}").get_data(as_text=True)
    assert "确定恢复此节点？它将重新进入路由表。" in page and "已过期或已被吊销" not in page
    pki.current_certificate(expired.node_id).not_after = utcnow() - timedelta(seconds=1)
    db.session.commit()
    page = client.get(f"/nodes/{expired.node_id}").get_data(as_text=True)
    assert "它将重新进入路由表" not in page
    assert "确定恢复此节点？其证书已过期或已被吊销：在签发新证书之前，它不会回到路由表" in page
    done = console.post_form(f"/nodes/{expired.node_id}", {"reason": "drill over"},
                             action=f"/nodes/{expired.node_id}/resume")
    page = client.get(done.location).get_data(as_text=True)
    assert f"完成：节点 {expired.node_id} 现为“启用”状态。" in page
    assert f"{expired.node_id} 没有有效证书（已过期或已被吊销）：在签发新证书之前，它不会回到路由表" in page
    assert expired.node_id not in routing.current_entries()

    revocation.revoke(pki.current_certificate(revoked.node_id), "superseded", by=minister)
    db.session.commit()
    result = runner.invoke(args=["nodes", "resume", revoked.node_id, "--reason", "back", "--user", "minister",
                                 "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)["status"] == "active"
    assert f"warning: {revoked.node_id} has no valid certificate (they expired or were revoked): it will not " \
           "return to the routing table" in result.stderr
    result = runner.invoke(args=["nodes", "resume", fine.node_id, "--reason", "back", "--user", "minister"])
    assert (result.exit_code, result.output) == (0, f"{fine.node_id} is now active\n")
    db.session.expire_all()
    assert set(routing.current_entries()) == {fine.node_id}


def test_importing_a_revision_that_retires_a_code_in_use_flags_the_node(jx_admin, minister, runner, tmp_path):
    from app.divisions import service as divisions

    node = admit(jx_admin, minister, "360102")
    lines = divisions.DEFAULT_FILE.read_text(encoding="utf-8").splitlines()
    revision = tmp_path / "next.csv"
    revision.write_text("\n".join(line for line in lines if not line.startswith("360102")), encoding="utf-8")
    result = runner.invoke(args=["divisions", "import", str(revision), "--revision", "2099"])
    assert result.exit_code == 0
    assert f"node {node.node_id}" in result.output and "retired code 360102" in result.output
    assert nodes.nodes_in_retired_divisions() == [node]


def test_cli_approve_and_lifecycle(runner, jx_admin, minister):
    import json

    application = apply(jx_admin)
    listing = runner.invoke(args=["applications", "list", "--user", "minister", "--json"])
    assert application.id in listing.output
    denied = runner.invoke(args=["applications", "approve", application.id, "--user", "jx-admin", "--json"])
    assert denied.exit_code == 1 and "ministry_only" in denied.output
    approved = runner.invoke(args=["applications", "approve", application.id, "--user", "minister", "--json"])
    node_id = json.loads(approved.output)["node_id"]
    suspended = runner.invoke(args=["nodes", "suspend", node_id, "--reason", "drill", "--user", "minister", "--json"])
    assert json.loads(suspended.output)["status"] == "suspended"
    shown = json.loads(runner.invoke(args=["nodes", "show", node_id, "--json"]).output)
    assert shown["token_issued_by"] is None and shown["status_reason"] == "drill"
    plain = runner.invoke(args=["nodes", "show", node_id]).output  # README: --json is for machine output
    assert "node_id" in plain and node_id in plain and "status_reason" in plain and not plain.startswith("{")
    listed = runner.invoke(args=["nodes", "list", "--user", "minister", "--status", "suspended", "--json"])
    assert node_id in listed.output
    for command in ("nodes", "applications"):  # a typo is refused, not answered with an empty list
        typo = runner.invoke(args=[command, "list", "--user", "minister", "--status", "suspend"])
        assert typo.exit_code == 2 and "Invalid value for '--status'" in typo.output
    outside = runner.invoke(args=["nodes", "list", "--user", "jx-admin", "--province", "44"])
    assert (outside.exit_code, outside.output) == (0, "no nodes\n")  # said, not a silence that reads as a fault
    assert runner.invoke(args=["nodes", "list", "--user", "jx-admin", "--province", "44", "--json"]).output == ""
    # a province that names none (a prefecture's code, a typo) is refused as the console's box says so: it printed
    # "no nodes", as for a province with none; the lists the dashboard links to are the console's too
    for province in ("360100", "440000x", "4"):
        refused = runner.invoke(args=["nodes", "list", "--user", "minister", "--province", province])
        assert refused.exit_code == 2 and "Invalid value for '--province'" in refused.output, province
    assert runner.invoke(args=["nodes", "list", "--user", "minister", "--province", "360000"]).exit_code == 0
    retired = runner.invoke(args=["nodes", "list", "--user", "minister", "--status", "retired_division"])
    assert retired.exit_code == 0, retired.output
    assert runner.invoke(args=["applications", "list", "--user", "jx-admin"]).output == "no applications\n"
    assert runner.invoke(args=["tokens", "list", "--user", "jx-admin"]).output == "no tokens\n"


def test_cli_show_with_a_user_shows_only_what_that_users_console_shows(client, runner, jx_admin, minister,
                                                                        make_user):
    """`show --user NAME` reads as that console user: a provincial admin asking for an application or a node outside
    its divisions is told there is none, the console's answer. Without --user it is the operator on the server."""
    import json

    from tests.conftest import Console

    make_user("gd-admin", "provincial_admin", ("440000",))
    application, node = apply(jx_admin), admit(jx_admin, minister)
    console = Console(client)
    console.login("gd-admin")
    for args, page, code, message in (
            (["applications", "show", application.id], f"/applications/{application.id}", "application_not_found",
             f"No application {application.id}."),
            (["nodes", "show", node.node_id], f"/nodes/{node.node_id}", "node_not_found", f"No node {node.node_id}.")):
        assert client.get(page).status_code == 404
        refused = runner.invoke(args=[*args, "--user", "gd-admin", "--json"])
        assert (refused.exit_code, refused.stdout) == (1, "")
        assert json.loads(refused.stderr) == {"error": {"code": code, "message": message}}
        plain = runner.invoke(args=[*args, "--user", "gd-admin"])
        assert (plain.exit_code, plain.stdout, plain.stderr) == (1, "", f"error: {message}\n")
        for viewer in (["--user", "jx-admin"], ["--user", "minister"], []):
            shown = runner.invoke(args=[*args, *viewer, "--json"])
            assert shown.exit_code == 0 and json.loads(shown.stdout)["division_code"] == "360000", shown.output
        unknown = runner.invoke(args=[*args, "--user", "nobody", "--json"])
        assert unknown.exit_code == 1 and json.loads(unknown.stderr)["error"]["code"] == "user_not_found"


def change_form(node, **overrides) -> dict:
    """The change page's form as a browser posts it unchanged: the node's own values."""
    form = {"org_name": node.org_name, "system_name": node.system_name, "vendor": node.vendor,
            "endpoint": node.endpoint, "contact_name": node.contact_name, "contact_phone": node.contact_phone,
            "contact_email": node.contact_email, "capabilities": list(node.capabilities)}
    form.update(overrides)
    return form


def test_a_change_request_that_changes_nothing_is_refused(app, jx_admin, minister):
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    with pytest.raises(ValidationFailed) as caught:
        applications.submit_change(node, change_document(**{
            "org_name": node.org_name, "endpoint": node.endpoint,
            "contact": {"name": node.contact_name, "phone": node.contact_phone, "email": node.contact_email},
            "capabilities": list(reversed(node.capabilities))}), by=jx_admin)
    assert caught.value.code == "no_change"
    db.session.rollback()  # as a request ends a refused transaction: it held the node's row lock (PostgreSQL)
    console = Console(app.test_client())
    console.login("jx-admin")
    html = console.post_form(f"/nodes/{node.node_id}/change", change_form(node)).get_data(as_text=True)
    assert "changes nothing" in html or "没有任何变化" in html
    assert db.session.scalar(select(db.func.count()).select_from(Application).where(Application.kind == "change")) == 0


def test_a_second_change_request_waits_for_the_first_and_cannot_revert_it(app, jx_admin, minister):
    """The walk's case: contact changed and presence removed, then the unchanged form sent again."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(app.test_client())
    console.login("jx-admin")
    first = console.post_form(f"/nodes/{node.node_id}/change", change_form(
        node, contact_name="李四", capabilities=[c for c in node.capabilities if c != "presence"]))
    assert first.status_code == 302
    pending = db.session.scalars(select(Application).where(Application.kind == "change")).one()
    page = console.client.get(f"/nodes/{node.node_id}/change").get_data(as_text=True)
    assert 'id="pending-change"' in page and f"/applications/{pending.id}" in page
    again = console.post_form(f"/nodes/{node.node_id}/change", change_form(node, contact_phone="0791-7654321"))
    assert again.status_code == 422 and pending.id in again.get_data(as_text=True)
    with pytest.raises(Conflict) as caught:
        applications.submit_change(node, change_document(endpoint=node.endpoint, vendor="Vendor B"), by=jx_admin)
    assert caught.value.code == "change_pending" and pending.id in caught.value.message
    assert db.session.scalar(select(db.func.count()).select_from(Application).where(Application.kind == "change")) == 1
    applications.approve(pending, by=minister)
    db.session.commit()
    assert node.contact_name == "李四" and "presence" not in node.capabilities


def test_a_stale_change_request_is_refused_at_approval_instead_of_undoing_a_newer_one(jx_admin, minister):
    """Two requests pending at once (as before one-at-a-time was enforced): approving the older after
    the newer must not put the old contact and capabilities back."""
    node = admit(jx_admin, minister)
    old_values = {name: getattr(node, name) for name in applications.CHANGEABLE}
    first = applications.submit_change(node, change_document(
        endpoint=node.endpoint, contact={"name": "李四", "phone": node.contact_phone, "email": node.contact_email},
        capabilities=[c for c in node.capabilities if c != "presence"]), by=jx_admin)
    unchanged = Application(id="0" * 32, kind="change", node_id=node.node_id, division_code=node.division_code,
                            submitted_by_id=jx_admin.id, created_at=first.created_at, **old_values)
    unchanged.contact_phone = "0791-7654321"  # it changes something, or approval would refuse it as empty
    db.session.add(unchanged)
    db.session.commit()
    applications.approve(first, by=minister)
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        applications.approve(unchanged, by=minister)
    assert caught.value.code == "change_stale" and first.id in caught.value.message
    db.session.rollback()
    assert node.contact_name == "李四" and "presence" not in node.capabilities and unchanged.status == "pending"


def test_review_page_shows_every_requested_change_against_the_current_value(app, jx_admin, minister, admin_console):
    node = admit(jx_admin, minister)
    change = applications.submit_change(node, change_document(
        endpoint=node.endpoint, org_name="江西省公安厅科信处", system_name="赣警通二期", vendor="Vendor B",
        capabilities=["text", "image"]), by=jx_admin)
    db.session.commit()
    html = admin_console.client.get(f"/applications/{change.id}").get_data(as_text=True)
    table = html[html.index('id="requested-changes"'):html.index("</table>", html.index('id="requested-changes"'))]
    for field in ("org_name", "system_name", "vendor", "capabilities"):
        assert f'data-field="{field}"' in table
    assert 'data-field="endpoint"' not in table and 'data-field="contact_name"' not in table
    assert "江西省公安厅科信处" in table and "Vendor A" in table and "Vendor B" in table
    assert "<del>" in table  # the capabilities the request drops are marked


def test_approval_rechecks_that_the_key_is_not_certified_for_another_node_since(jx_admin, minister):
    """Issuance checks the key again when it certifies it. No door certifies a key a pending application carries
    now (a renewal with it is `key_pending`), but one certificate issued so before that rule still would be."""
    from app.pki import service as pki
    from tests.factories import NodeKeys

    keys = NodeKeys()
    waiting = apply(jx_admin, csr=keys.csr)
    other = admit(jx_admin, minister)
    pki.issue_for_node(other, keys.csr, actor="minister")  # as a renewal with the waiting key once could
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        applications.approve(waiting, by=minister)
    assert caught.value.code == "key_in_use" and other.node_id in caught.value.message
    db.session.rollback()
    assert waiting.status == "pending" and db.session.scalar(select(db.func.count()).select_from(Node)) == 1


def test_renewal_keeps_or_replaces_its_own_key_but_cannot_take_another_nodes(jx_admin, minister):
    from app.pki import service as pki
    from tests.factories import NodeKeys

    first_keys, second_keys = NodeKeys(), NodeKeys()
    first = admit(jx_admin, minister, csr=first_keys.csr)
    second = admit(jx_admin, minister, csr=second_keys.csr)
    pki.renew(first, first_keys.csr, by=minister)  # same key again: allowed (a new key is only recommended)
    pki.renew(first, NodeKeys().csr, by=minister)
    with pytest.raises(Conflict) as caught:
        pki.renew(first, second_keys.csr, by=minister)
    assert caught.value.code == "key_in_use"
    db.session.rollback()
    nodes.revoke(second, "decommissioned", by=minister)  # its certificates are revoked: the key is free again
    db.session.commit()
    pki.renew(first, second_keys.csr, by=minister)


def test_a_key_revoked_for_compromise_is_never_certified_again(jx_admin, minister):
    """Before, a revoked certificate freed its key whatever the reason: renewing the node from a CSR with
    the stolen key, or admitting another node with it, gave the thief a valid certificate again."""
    from app.pki import revocation
    from app.pki import service as pki
    from tests.factories import NodeKeys

    keys = NodeKeys()
    node = admit(jx_admin, minister, csr=keys.csr)
    stolen = pki.current_certificate(node.node_id)
    revocation.revoke(stolen, "key_compromise", by=minister)
    db.session.commit()
    with pytest.raises(Conflict) as caught:
        pki.renew(node, keys.csr, by=minister)
    assert caught.value.code == "key_compromised" and stolen.serial in caught.value.message
    db.session.rollback()
    for submit in (lambda: apply(jx_admin, csr=keys.csr),  # another node, new application
                   lambda: applications.submit_change(node, node_document("360000", csr=keys.csr), by=jx_admin)):
        with pytest.raises(Conflict) as caught:
            submit()
        assert (caught.value.code, caught.value.field) == ("key_compromised", "csr")
        db.session.rollback()
    pki.renew(node, NodeKeys().csr, by=minister)  # a new key is certified
    db.session.commit()
    assert pki.current_certificate(node.node_id).key_sha256 != stolen.key_sha256


def test_console_application_with_a_key_in_use_is_refused_in_the_csr_field(app, jx_admin, minister):
    from tests.conftest import Console
    from tests.factories import NodeKeys

    keys = NodeKeys()
    node = admit(jx_admin, minister, csr=keys.csr)
    console = Console(app.test_client())
    console.login("jx-admin")
    form = {**change_form(node, endpoint="https://another.jx.example"), "division_code": "360000", "csr": keys.csr}
    html = console.post_form("/applications/new", form).get_data(as_text=True)
    assert node.node_id in html and "has-error" in html
    assert db.session.scalar(select(db.func.count()).select_from(Application)) == 1


def test_a_key_refusal_names_the_holder_only_to_an_admin_whose_scope_covers_it(jx_admin, minister, make_user):
    """As for endpoints (docs/protocol.md §4): key_in_use named the other node and its certificate's serial, and
    key_pending the waiting application, to anyone who sent the key, another province's admin too."""
    from app.pki import service as pki

    gd_admin = make_user("gd-admin", "provincial_admin", ("440000",))
    held, waiting_keys = NodeKeys(), NodeKeys()
    node = admit(jx_admin, minister, csr=held.csr)
    serial = pki.current_certificate(node.node_id).serial
    waiting = apply(jx_admin, csr=waiting_keys.csr)
    other = admit(gd_admin, minister, "440000")

    def refusal(submit) -> Conflict:
        with pytest.raises(Conflict) as caught:
            submit()
        db.session.rollback()
        return caught.value

    for by, division in ((gd_admin, "440000"), (jx_admin, "360000")):
        shown = by is jx_admin
        in_use = refusal(lambda by=by, division=division: applications.submit_by_user(
            node_document(division, csr=held.csr), by=by))
        pending = refusal(lambda by=by, division=division: applications.submit_by_user(
            node_document(division, csr=waiting_keys.csr), by=by))
        assert (in_use.code, pending.code) == ("key_in_use", "key_pending")
        assert (node.node_id in str(in_use.message), serial in str(in_use.message)) == (shown, shown)
        assert (waiting.id in str(pending.message)) == shown
    # a change request of a node in the admin's scope, and an admin's renewal, follow the same rule
    change = refusal(lambda: applications.submit_change(other, node_document("440000", endpoint=other.endpoint,
                                                                             csr=held.csr), by=gd_admin))
    assert change.code == "key_in_use" and node.node_id not in str(change.message)
    renewal = refusal(lambda: pki.renew(other, waiting_keys.csr, by=minister))
    assert renewal.code == "key_pending" and waiting.id in str(renewal.message)


def test_a_disabled_account_acts_through_no_cli_command(runner, make_user):
    """`--user NAME` is the console user acting (README): a disabled account signs in nowhere, so the CLI must
    not approve, suspend or issue in its name either, leaving the audit log naming someone who left."""
    import json

    from app.auth import service as users

    minister, _ = make_user("minister"), make_user("old-minister")
    document = node_document("360000")
    application = applications.submit_by_user(document, by=minister)
    users.update_user(users.get_user("old-minister"), role="ministry_admin", scopes=[], active=False,
                      display_name="")
    db.session.commit()
    for args in (["applications", "approve", application.id], ["tokens", "create", "--division", "360000"]):
        result = runner.invoke(args=[*args, "--user", "old-minister", "--json"])
        assert result.exit_code == 1, result.output
        assert json.loads(result.output)["error"]["code"] == "account_disabled"
    db.session.expire_all()
    assert applications.get(application.id).status == "pending"


def test_every_record_a_cli_node_revocation_writes_names_the_admin_as_the_console_does(runner, make_user):
    """Revoking a node also revokes its certificates and publishes a route version. From the console every record
    of it names the admin; from `flask nodes revoke --user NAME` the certificate and route records said "system"."""
    minister = make_user("minister")
    document = node_document("360000")
    node = applications.approve(applications.submit_by_user(document, by=minister),
                                by=minister)
    db.session.commit()
    before = db.session.scalar(select(db.func.max(AuditRecord.seq)))
    result = runner.invoke(args=["nodes", "revoke", node.node_id, "--reason", "retired", "--user", "minister"])
    assert result.exit_code == 0, result.output
    records = db.session.execute(select(AuditRecord.action, AuditRecord.actor).where(AuditRecord.seq > before)
                                 .order_by(AuditRecord.seq)).all()
    assert {"node.revoke", "certificate.revoke", "routes.publish"} <= {action for action, _ in records}
    assert {actor for _, actor in records} == {"minister"}, records


def test_revoking_a_node_closes_its_pending_change_request_and_frees_its_endpoint_and_key(jx_admin, minister):
    """A revoked node cannot change, so its change request can never be approved; left pending it held its new
    endpoint and key (endpoint_pending, key_pending) against the node that replaces it, and waited in the queue."""
    node = admit(jx_admin, minister, endpoint="https://old.jx.example")
    keys = NodeKeys()
    change = applications.submit_change(node, node_document(endpoint="https://new.jx.example", csr=keys.csr),
                                        by=jx_admin)
    db.session.commit()
    nodes.revoke(node, "replaced by a new system", by=minister)
    db.session.commit()
    db.session.refresh(change)
    assert (change.status, change.reviewed_by) == ("rejected", "minister")
    assert applications.pending_count() == 0
    successor = apply(jx_admin, endpoint="https://new.jx.example", csr=keys.csr)
    assert successor.status == "pending"


def audit_count() -> int:
    return db.session.scalar(select(db.func.count()).select_from(AuditRecord))


@pytest.mark.parametrize(("status", "action", "who"), [("active", "suspend", "minister"),
                                                       ("suspended", "resume", "minister"),
                                                       ("active", "revoke", "minister"),
                                                       ("active", "request-suspension", "jx-admin")])
def test_a_refused_lifecycle_reason_comes_back_in_its_field_with_the_refusal_beside_it(client, jx_admin, minister,
                                                                                       status, action, who):
    """A reason the service refused (here a pasted escape character) redirected to the node page, and what the
    admin had typed was gone: the page now comes back, the reason as typed in the action's field, nothing done."""
    import re

    from markupsafe import escape

    from tests.conftest import Console

    node = admit(jx_admin, minister)
    if status == "suspended":
        nodes.suspend(node, "drill", by=minister)
        db.session.commit()
    console = Console(client)
    console.login(who)
    before = audit_count()
    typed = "机房\x1b[2J搬迁"

    response = console.post_form(f"/nodes/{node.node_id}", {"reason": typed}, action=f"/nodes/{node.node_id}/{action}")

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    form = re.search(rf'<form [^>]*action="/nodes/{node.node_id}/{action}"[^>]*>.*?</form>', page, re.S).group(0)
    assert f'value="{escape(typed)}"' in form and 'aria-invalid="true"' in form
    assert re.search(rf'<div class="error" id="reason-{action}-error-1">理由：含有控制字符。</div>', form)
    assert page.count(f'value="{escape(typed)}"') == 1  # the other actions' fields stay empty
    db.session.expire_all()
    node = db.session.get(Node, node.node_id)
    assert node.status == status and not node.suspension_requested and audit_count() == before


def test_a_refused_rejection_reason_comes_back_in_its_field_with_the_refusal_beside_it(client, jx_admin, minister):
    import re

    from markupsafe import escape

    from tests.conftest import Console

    application = apply(jx_admin)
    console = Console(client)
    console.login("minister")
    before = audit_count()
    typed = "证书不符\r\n请\x07重新申请"

    response = console.post_form(f"/applications/{application.id}", {"reason": typed},
                                 action=f"/applications/{application.id}/reject")

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert re.search(r'<textarea [^>]*aria-invalid="true"[^>]*name="reason"[^>]*>\r\n' + re.escape(str(escape(typed)))
                     + "</textarea>", page)
    assert '<div class="error" id="reject-reason-error-1">理由：含有控制字符。</div>' in page
    empty = console.post_form(f"/applications/{application.id}", {"reason": "  "},
                              action=f"/applications/{application.id}/reject")
    assert empty.status_code == 422 and "驳回需要填写理由。" in empty.get_data(as_text=True)
    db.session.expire_all()
    assert db.session.get(Application, application.id).status == "pending" and audit_count() == before


def _revoked_in_another_tab(client, jx_admin, minister):
    """A minister signed in to the console, and an admitted node revoked since its page was drawn: (console, page)."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("minister")
    nodes.revoke(node, "decommissioned", by=minister)
    db.session.commit()
    return console, f"/nodes/{node.node_id}"


def test_a_refused_reason_for_an_action_the_node_no_longer_offers_is_still_said(client, jx_admin, minister):
    """Revoked in another tab meanwhile, the node page offers no action: the refusal of the reason is not lost
    with the field it would have been shown at, which comes back as it was sent, its button disabled."""
    import re

    console, page_url = _revoked_in_another_tab(client, jx_admin, minister)
    response = console.post_form(page_url, {"reason": "a\x00b"}, action=f"{page_url}/suspend")
    assert response.status_code == 422
    form = re.search(rf'<form [^>]*action="{page_url}/suspend"[^>]*>.*?</form>', response.get_data(as_text=True),
                     re.S).group(0)
    assert 'aria-invalid="true"' in form and re.search(r"<button [^>]*disabled", form)
    assert '<div class="error" id="reason-suspend-error-1">理由：含有控制字符。</div>' in form


def test_a_transition_the_node_no_longer_allows_names_both_states_in_the_console_language(client, jx_admin, minister):
    """Suspended in another tab after it was revoked: the refusal names the states in words, not in codes
    ("状态为 revoked 的节点" read as a leak of the database into the page)."""
    console, page_url = _revoked_in_another_tab(client, jx_admin, minister)
    response = console.post_form(page_url, {"reason": "drill"}, action=f"{page_url}/suspend")
    page = response.get_data(as_text=True)
    assert "状态为“已注销”的节点不能变为“已暂停”。" in page, [line for line in page.splitlines() if "不能变为" in line]


def test_an_action_no_lifecycle_names_is_not_found_and_changes_nothing(client, jx_admin, minister, make_user):
    """It flashed "Unknown action." and redirected (302) as if something had happened. The node is looked up first:
    another province's node answers as a node that does not exist does, whatever the action."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    elsewhere = admit(make_user("gd-admin", "provincial_admin", ("440000",)), minister, "440000")
    console = Console(client)
    console.login("jx-admin")
    before = audit_count()

    response = console.post_form(f"/nodes/{node.node_id}", {"reason": "drill"}, action=f"/nodes/{node.node_id}/explode")

    assert response.status_code == 404
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).status == "active" and audit_count() == before
    missing = "36000000002025999999"
    answers = [console.post_form("/nodes/", {"reason": "drill"}, action=f"/nodes/{node_id}/{action}")
               for node_id in (elsewhere.node_id, missing) for action in ("explode", "suspend")]
    assert {answer.status_code for answer in answers} == {404}
    # The CSRF tokens carry the second they were signed in: the same page a second later differs there only.
    pages = [re.sub(r'(name="csrf_token" value|data-csrf)="[^"]*"', r'\1=""',
                    answer.get_data(as_text=True).replace(elsewhere.node_id, missing)) for answer in answers]
    assert pages[0] == pages[1] == pages[2] == pages[3]


@pytest.mark.parametrize(("meanwhile", "action", "refusal"), [
    ("revoke", "suspend", "状态为“已注销”的节点不能变为“已暂停”。"),
    ("suspend", "suspend", "节点已是“已暂停”状态。"),  # not "a suspended node cannot become suspended"
    ("revoke", "revoke", "节点已是“已注销”状态。")])
def test_an_action_the_node_no_longer_allows_is_refused_at_its_form_the_reason_as_typed(client, jx_admin, minister,
                                                                                         meanwhile, action, refusal):
    """Done in another tab meanwhile: the refusal was a flash at the top of the page and the reason typed was gone
    with the form, which the node no longer offers. The form comes back as it was sent, the reason in its field
    and the refusal under it, its button disabled; nothing is done."""
    import re

    from markupsafe import escape

    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("minister")
    page_url = f"/nodes/{node.node_id}"
    getattr(nodes, meanwhile)(node, "decided in another tab", by=minister)
    db.session.commit()
    before = audit_count()
    typed = "机房搬迁 <停机>"

    response = console.post_form(page_url, {"reason": typed}, action=f"{page_url}/{action}")

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    form = re.search(rf'<form [^>]*action="{page_url}/{action}"[^>]*>.*?</form>', page, re.S).group(0)
    assert f'value="{escape(typed)}"' in form and page.count(f'value="{escape(typed)}"') == 1
    assert f'<div class="error" id="reason-{action}-error-1">{refusal}</div>' in form
    assert re.search(r"<button [^>]*disabled", form) and 'class="flash error"' not in page
    db.session.expire_all()
    assert audit_count() == before


def lifecycle_forms(html: str) -> dict[str, dict[str, str]]:
    """Each lifecycle form of a node page: its hidden fields (CSRF token, the change the page was loaded after) by
    action, as a browser would send them from that page however long ago it was loaded."""
    forms = {}
    for action, body in re.findall(r'<form [^>]*action="/nodes/[0-9]+/([a-z-]+)"[^>]*>(.*?)</form>', html, re.S):
        forms[action] = dict(re.findall(r'<input [^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', body)
                             + re.findall(r'<input [^>]*name="([^"]+)"[^>]*type="hidden"[^>]*value="([^"]*)"', body))
    return forms


def refusal_at(html: str, node: Node, action: str) -> str:
    form = re.search(rf'<form [^>]*action="/nodes/{node.node_id}/{action}"[^>]*>.*?</form>', html, re.S).group(0)
    return " ".join(re.findall(rf'<div class="error" id="reason-{action}-error-[0-9]+">(.*?)</div>', form))


@pytest.mark.parametrize(("language", "told"), [
    ("zh_CN", "此页面打开后节点有变动：minister 于 {when} 恢复了节点，理由为“fixed, verified with the vendor”。"),
    ("en", "The node changed after this page was loaded: minister resumed it at {when}, giving the reason "
           "“fixed, verified with the vendor”.")])
def test_a_suspension_from_a_page_loaded_before_a_suspension_and_resumption_is_refused_naming_the_resumption(
        client, jx_admin, minister, language, told):
    """The node suspended and resumed in another tab since the page was loaded: it is active as the page showed,
    and the page's suspension was taken ("Done: … is suspended") by an admin who never saw the resumption or its
    reason. It is refused at its form, the reason as typed, naming the newest change: who, when, why. Sent again
    from the page that says so, it is taken, once."""
    from markupsafe import escape

    from app.i18n import local_time
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("minister")
    client.get(f"/lang/{language}")
    page_url = f"/nodes/{node.node_id}"
    old_page = lifecycle_forms(client.get(page_url).get_data(as_text=True))
    nodes.suspend(node, "expired certificate", by=minister)
    db.session.commit()
    nodes.resume(node, "fixed, verified with the vendor", by=minister)
    db.session.commit()
    resumed = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "node.resume")).one()
    before = audit_count()
    typed = "expired certificate <second admin>"

    response = client.post(f"{page_url}/suspend", data={**old_page["suspend"], "reason": typed})

    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert refusal_at(page, node, "suspend").startswith(str(escape(told.format(when=local_time(resumed.at)))))
    assert f'value="{escape(typed)}"' in page and 'class="flash error"' not in page
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).status == "active" and audit_count() == before

    again = client.post(f"{page_url}/suspend", data={**lifecycle_forms(page)["suspend"], "reason": typed})

    assert again.status_code == 302
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).status == "suspended"
    assert len(db.session.scalars(select(AuditRecord.id).where(AuditRecord.action == "node.suspend")).all()) == 2


def test_a_decline_from_a_page_loaded_before_the_request_was_withdrawn_and_made_again_is_refused(
        client, jx_admin, minister, make_user):
    """The ministry's page showed jx-admin's request; it was withdrawn and jx-admin2 asked again, for another reason.
    The node is active and asked about, as the page showed: the decline answered a request its admin never read."""
    from tests.conftest import Console

    colleague = make_user("jx-admin2", "provincial_admin", ("360000",))
    node = admit(jx_admin, minister)
    nodes.request_suspension(node, "maintenance", by=jx_admin)
    db.session.commit()
    console = Console(client)
    console.login("minister")
    client.get("/lang/en")
    page_url = f"/nodes/{node.node_id}"
    old_page = lifecycle_forms(client.get(page_url).get_data(as_text=True))
    nodes.withdraw_suspension(node, "", by=jx_admin)
    nodes.request_suspension(node, "leaking data to a third party", by=colleague)
    db.session.commit()
    before = audit_count()

    response = client.post(f"{page_url}/decline-suspension", data={**old_page["decline-suspension"],
                                                                  "reason": "maintenance can wait"})

    assert response.status_code == 422
    refusal = refusal_at(response.get_data(as_text=True), node, "decline-suspension")
    assert "jx-admin2 asked for its suspension at" in refusal and "leaking data to a third party" in refusal
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).suspension_requested and audit_count() == before


def test_a_request_from_a_page_loaded_before_another_request_was_declined_is_refused(client, jx_admin, minister,
                                                                                    make_user):
    """The province's page offered a request; a colleague asked and the ministry declined, saying why. A request
    from the old page would ask again without its admin having read the ministry's answer."""
    from tests.conftest import Console

    colleague = make_user("jx-admin2", "provincial_admin", ("360000",))
    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("jx-admin")
    client.get("/lang/en")
    page_url = f"/nodes/{node.node_id}"
    old_page = lifecycle_forms(client.get(page_url).get_data(as_text=True))
    nodes.request_suspension(node, "maintenance", by=colleague)
    db.session.commit()
    nodes.decline_suspension(node, "the certificate is fine", by=minister)
    db.session.commit()
    before = audit_count()

    response = client.post(f"{page_url}/request-suspension", data={**old_page["request-suspension"],
                                                                  "reason": "maintenance"})

    assert response.status_code == 422
    refusal = refusal_at(response.get_data(as_text=True), node, "request-suspension")
    assert "minister declined the suspension request at" in refusal and "the certificate is fine" in refusal
    db.session.expire_all()
    assert not db.session.get(Node, node.node_id).suspension_requested and audit_count() == before


def test_a_form_refused_for_its_reason_still_carries_the_page_it_was_sent_from(client, jx_admin, minister):
    """Refused for an empty reason, the page comes back showing the node as it is now; its forms still carry the
    change the admin was loaded after, so the change made meanwhile is named at the next try, not passed over."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("minister")
    client.get("/lang/en")
    page_url = f"/nodes/{node.node_id}"
    old_page = lifecycle_forms(client.get(page_url).get_data(as_text=True))
    nodes.suspend(node, "expired certificate", by=minister)
    nodes.resume(node, "fixed", by=minister)
    db.session.commit()

    empty = client.post(f"{page_url}/suspend", data={**old_page["suspend"], "reason": ""})
    assert empty.status_code == 422
    retried = client.post(f"{page_url}/suspend", data={**lifecycle_forms(empty.get_data(as_text=True))["suspend"],
                                                       "reason": "expired certificate"})

    assert retried.status_code == 422
    assert "minister resumed it at" in refusal_at(retried.get_data(as_text=True), node, "suspend")


def test_the_cli_and_api_doors_pass_no_page_and_are_not_checked(jx_admin, minister):
    """Only a page can be older than the node: the domain function checks what it is given, None is no check."""
    node = admit(jx_admin, minister)
    nodes.suspend(node, "a", by=minister)
    nodes.resume(node, "b", by=minister)
    db.session.commit()
    with pytest.raises(Conflict) as refused:
        nodes.suspend(node, "c", by=minister, seen_change=0)
    assert refused.value.code == "invalid_transition"
    db.session.rollback()
    assert nodes.suspend(node, "c", by=minister).status == "suspended"


def test_a_provincial_admins_hand_made_suspension_is_forbidden_not_unprocessable(client, jx_admin, minister):
    """Suspending is the ministry's: the page offers a provincial admin only a request for it. A POST made by hand
    came back 422, as if the reason were wrong; it is a 403 with the refusal, and nothing is done."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    console = Console(client)
    console.login("jx-admin")
    before = audit_count()

    response = console.post_form(f"/nodes/{node.node_id}", {"reason": "drill"}, action=f"/nodes/{node.node_id}/suspend")

    assert response.status_code == 403
    db.session.expire_all()
    assert db.session.get(Node, node.node_id).status == "active" and audit_count() == before


@pytest.mark.parametrize("around", [("Certificate Request:\n    Data:\n        Version: 1 (0x0)\n", ""),
                                    ("", "\x07\u202e")])
def test_an_application_kept_with_text_around_its_csr_is_still_shown_and_approved(jx_admin, minister, around):
    """Applications stored before the CSR check on text around the block kept that text (`openssl req -text`
    output, a stray control character). The review page and approval read it through the tightened check and
    refused it, as invalid_csr in the applicant's words: such an application could only be rejected."""
    application = apply(jx_admin)
    before, after = around
    application.csr_pem = before + application.csr_pem + after  # as the code before the check stored it
    db.session.commit()
    assert applications.inspect_csr(application.csr_pem)["key"]
    node = applications.approve(application, by=minister)
    db.session.commit()
    from app.pki import service as pki

    assert pki.current_certificate(node.node_id) is not None


def test_a_node_admitted_at_the_management_host_is_issued_nothing_more_there(app, jx_admin, minister):
    """A node admitted at the management node's host before that was refused kept getting certificates naming it:
    renewal (an admin's or the node's) and a change request bringing only a new key issue a certificate for the
    endpoint as it is. Each is refused until the node moves to another host (a change request with a new
    endpoint and CSR, which is taken)."""
    from app.pki import service as pki

    node = admit(jx_admin, minister, endpoint="https://registry.mps.example:8443/im")
    waiting = applications.submit_change(node, {**change_document(endpoint=node.endpoint), "csr": NodeKeys().csr},
                                         by=jx_admin)
    db.session.commit()
    app.config["MPIM_BASE_URL"] = "https://registry.mps.example"
    with pytest.raises(Conflict) as approval:  # written before: its approval would issue the certificate
        applications.approve(waiting, by=minister)
    assert approval.value.code == "endpoint_is_management_node"
    db.session.rollback()
    applications.reject(waiting, "moves to another host", by=minister)
    db.session.commit()
    with pytest.raises(Conflict) as renewal:
        pki.renew(node, NodeKeys().csr, by=minister)
    assert renewal.value.code == "endpoint_is_management_node"
    db.session.rollback()
    with pytest.raises(Conflict) as new_key:
        applications.submit_change(node, {**change_document(endpoint=node.endpoint), "csr": NodeKeys().csr},
                                   by=jx_admin)
    assert new_key.value.code == "endpoint_is_management_node"
    db.session.rollback()
    moved = applications.submit_change(node, {**change_document(endpoint="https://im.jx.example"),
                                              "csr": NodeKeys().csr}, by=jx_admin)
    applications.approve(moved, by=minister)
    db.session.commit()
    assert node.endpoint == "https://im.jx.example"


def test_reason_forms_leave_the_refusal_to_the_server_and_name_each_reason_box(client, jx_admin, minister):
    """A `required` box in a form without novalidate was refused by Chromium itself, in its own English bubble on
    the Chinese console, so the server's refusal in the reader's words, tied to the box, was never seen; and the
    node page's reason boxes were all named "理由" by a placeholder, so Suspend's and Revoke's read alike."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    pending = apply(jx_admin, org_name="赣州市公安局")
    console = Console(client)
    console.login("minister")
    page = client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    forms = {action: form for form, action in re.findall(
        r'(<form [^>]*action="/nodes/\d+/([a-z-]+)"[^>]*>.*?</form>)', page, re.S)}
    assert set(forms) == {"suspend", "revoke"}
    labels = {}
    for action, form in forms.items():
        assert re.match(r"<form [^>]*\bnovalidate\b", form), form
        box = re.search(r'<input name="reason"[^>]*>', form).group(0)
        box_id = re.search(r'\bid="([^"]+)"', box).group(1)
        labels[action] = re.search(rf'<label for="{box_id}">([^<]*)</label>', form).group(1)
        assert "aria-label" not in box and "placeholder" not in box  # the visible label is its name
    assert labels == {"suspend": "暂停理由", "revoke": "注销理由"}

    detail = client.get(f"/applications/{pending.id}").get_data(as_text=True)
    reject = re.search(r'<form [^>]*action="/applications/[^"]+/reject"[^>]*>', detail).group(0)
    assert re.search(r"\bnovalidate\b", reject), reject

    asker = Console(client.application.test_client())
    asker.login("jx-admin")
    asked = asker.client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    assert re.search(r'<form [^>]*action="/nodes/\d+/request-suspension"[^>]*\bnovalidate\b', asked)
    assert '<label for="reason-request-suspension">申请暂停理由</label>' in asked


def test_the_node_page_is_titled_by_its_node_and_organisation(client, jx_admin, minister):
    """A title of the id alone told a reader with many tabs open (or a screen reader's window list) nothing."""
    from tests.conftest import Console

    node = admit(jx_admin, minister)
    Console(client).login("minister")
    page = client.get(f"/nodes/{node.node_id}").get_data(as_text=True)
    title = re.search(r"<title>([^<]*)</title>", page).group(1)
    assert title.startswith(f"节点 {node.node_id} · {node.org_name} · "), title
