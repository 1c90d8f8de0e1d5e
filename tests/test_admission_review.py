"""Review, approval, node ids, lifecycle, scope and resolution (SPEC §2-§3)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.admission import applications, nodes, tokens
from app.admission.information import parse
from app.admission.models import Node
from app.audit.models import AuditRecord
from app.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from app.extensions import db
from tests.factories import node_document


@pytest.fixture
def minister(make_user):
    return make_user("minister")


@pytest.fixture
def jx_admin(make_user):
    return make_user("jx-admin", "provincial_admin", ("360000",))


def apply(user, division="360000", **overrides):
    document = node_document(division, **overrides)
    application = applications.submit_by_user(parse(document), document["csr"], by=user)
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


def test_provincial_admin_cannot_apply_outside_its_scope(jx_admin):
    with pytest.raises(PermissionDenied):
        apply(jx_admin, "440300")


def test_change_request_goes_through_review(jx_admin, minister):
    node = admit(jx_admin, minister, endpoint="https://old.jx.example")
    info = parse(node_document(endpoint="https://old.jx.example/v2", contact={"name": "李四", "phone": "0791-7654321",
                                                                           "email": "li@jx.example"}))
    change = applications.submit_change(node, info, None, by=jx_admin)
    db.session.commit()
    assert node.endpoint == "https://old.jx.example"  # nothing changes before approval
    applications.approve(change, by=minister)
    db.session.commit()
    assert (node.endpoint, node.contact_name) == ("https://old.jx.example/v2", "李四")
    moved = parse(node_document(endpoint="https://new-host.jx.example"))
    with pytest.raises(ValidationFailed) as caught:
        applications.submit_change(node, moved, None, by=jx_admin)
    assert caught.value.code == "missing_csr"


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
    assert client.get("/api/v1/resolve?division=440300").get_json()["error"]["code"] == "no_serving_node"
    assert client.get("/api/v1/resolve?division=12").status_code == 400


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
