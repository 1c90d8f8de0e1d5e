"""Groups on the reference node (docs/protocol.md §8.9): who can be a member, what an operation that changes
nothing does, and how a group message reaches member nodes that lack a capability (§6)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from app.appnode import protocol
from app.appnode.protocol import NotFound
from app.appnode.store import Group, Outbox
from tests.appnode_harness import raw_post
from tests.test_appnode import network, settle  # noqa: F401 (fixture)
from tests.test_sessions import people  # noqa: F401 (fixture)

NOWHERE = "99999999999999999999"


def group_ops(served) -> list[Outbox]:
    return [row for row in served.node.outbox() if row.kind == "group_op"]


def test_invite_and_create_refuse_users_who_do_not_exist_and_change_nothing(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    announced = len(group_ops(a))
    for ghost in (a.user("ghost"), f"bad@{NOWHERE}"):
        with pytest.raises(NotFound, match="ghost|routing table"):
            a.node.group_operation("zhangsan", group.address, "invite", [ghost])
        with pytest.raises(NotFound):
            b.node.group_operation("lisi", group.address, "invite", [ghost if "bad" in ghost else b.user("ghost")])
    with pytest.raises(NotFound, match="ghost2"):
        a.node.create_group("zhangsan", "幽灵", [b.user("lisi"), a.user("ghost2")])
    assert [g.seq for g in a.node.groups()] == [1] and len(group_ops(a)) == announced
    assert group_ops(b) == []

    # the home node checks requests too: B asks to invite a user A does not have
    request = {"op": "invite", "group_id": group.group_id, "home_node_id": a.id, "operator": b.user("lisi"),
               "target_user_ids": [a.user("ghost")]}
    status, body = raw_post(b.node, a, "group_op", protocol.make_envelope(
        from_node=b.id, to_node=a.id, type="group_op", payload=request))
    assert status == 404 and body["error"]["code"] == "not_found"
    assert a.node.groups()[0].members == [a.user("zhangsan"), b.user("lisi")]


def test_ownership_never_goes_to_a_member_who_does_not_exist(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    with a.node.db.begin() as session:  # a phantom let in before members were checked
        row = session.scalar(select(Group))
        row.members = [*row.members, a.user("ghost")]
    with pytest.raises(NotFound, match="ghost"):
        a.node.group_operation("zhangsan", group.address, "transfer_owner", [a.user("ghost")])
    assert a.node.groups()[0].owner == a.user("zhangsan") and a.node.groups()[0].seq == 1
