"""Groups on the reference node (docs/protocol.md §8.9): who can be a member, what an operation that changes
nothing does, and how a group message reaches member nodes that lack a capability (§6)."""

from __future__ import annotations

import json
import sqlite3
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from datetime import timedelta

import pytest
from sqlalchemy import event, select

from app.appnode import group_confirmation, groups, outbox, protocol
from app.appnode.config import CAPABILITIES
from app.appnode.protocol import Conflict, NotAParticipant, NotFound, PermissionDenied
from app.appnode.store import Group, Outbox
from app.appnode.store_schema import SCHEMA_VERSION, open_database
from tests.appnode_harness import raw_post
from tests.test_appnode import GIF, _as_schema_6, _as_schema_7, adts, history, network, settle  # noqa: F401 (fixture)
from tests.test_appnode_page import page
from tests.test_appnode_renewal import node_cli
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


def test_a_group_is_joined_by_invitation_unless_its_home_node_opens_its_groups(network):  # noqa: F811
    """Any node could add its user to any group with a `join`, and a kicked user could rejoin at once: the home
    node let every non-member join. By default (`open_groups` false) only members may `join` (which changes
    nothing); a node that opens its groups lets anyone who knows the address join, a kicked user too."""
    a, b = network["a"], network["b"]
    assert a.node.config.open_groups is False
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    a.node.group_operation("zhangsan", group.address, "kick", [b.user("lisi")])
    settle(a, b)
    announced = len(group_ops(a))
    with pytest.raises(PermissionDenied, match=f"joined by invitation only.*home node {a.id}") as refused:
        b.node.group_operation("lisi", group.address, "join")  # kicked, and back at once
    assert refused.value.code == "forbidden"
    with pytest.raises(PermissionDenied, match="joined by invitation only: ask a member") as refused:
        a.node.group_operation("wangwu", group.address, "join")  # a user of the home node is no exception
    assert refused.value.code == "forbidden" and refused.value.field == "payload.operator"
    assert a.node.group_operation("zhangsan", group.address, "join") == "unchanged"  # a member: nothing to do
    settle(a, b)
    assert [(g.seq, g.members) for g in a.node.groups()] == [(2, [a.user("zhangsan")])]
    assert len(group_ops(a)) == announced and b.node.groups("lisi") == []

    a.node.config.open_groups = True  # the home node's operator opens its groups (config.json)
    assert b.node.group_operation("lisi", group.address, "join") == "accepted"
    assert a.node.group_operation("wangwu", group.address, "join") == "applied"
    settle(a, b)
    members = [a.user("zhangsan"), b.user("lisi"), a.user("wangwu")]
    assert [(g.seq, g.members) for g in a.node.groups()] == [(4, members)]
    assert [(g.seq, g.members) for g in b.node.groups("lisi")] == [(4, members)]


def replicas(served) -> list[tuple[str, int, list[str]]]:
    """The groups a node shows; one that lists no user of the node is kept hidden, for its seq alone."""
    with served.node.db() as session:
        return [(group.owner, group.seq, list(group.members))
                for group in session.scalars(select(Group).where(Group.dismissed.is_(False)))]


def test_a_user_another_node_does_not_have_is_never_made_a_member(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    before = (replicas(a), replicas(b), len(group_ops(a)))

    done = node_cli(a, "group", "invite", "--as", "zhangsan", group.address, b.user("ghost"))
    assert done.returncode == 2 and "not_found" in done.stderr and b.user("ghost") in done.stderr
    done = node_cli(a, "group", "create", "--as", "zhangsan", "--member", b.user("lisi"), "--member",
                    b.user("ghost"), "幽灵")
    assert done.returncode == 2 and "not_found" in done.stderr and b.user("ghost") in done.stderr
    settle(a, b)
    assert (replicas(a), replicas(b), len(group_ops(a))) == before

    # a phantom let in before this check existed: B's replica already lists it, and it never becomes owner
    with a.node.db.begin() as session:
        row = session.scalar(select(Group))
        row.members = [*row.members, b.user("ghost")]
    with pytest.raises(NotFound, match="ghost"):
        a.node.group_operation("zhangsan", group.address, "transfer_owner", [b.user("ghost")])
    assert a.node.groups()[0].owner == a.user("zhangsan") and a.node.groups()[0].seq == 1

    # a real user of B still joins, and B takes the announcement
    assert a.node.group_operation("zhangsan", group.address, "invite", [b.user("zhaoliu")]) == "applied"
    settle(a, b)
    assert b.node.groups()[0].seq == 2 and b.user("zhaoliu") in b.node.groups()[0].members


def announce(home, member, seq: int, op: str, members: list[str], owner: str | None = None, **fields):
    """A hand-made announcement of group "专班" sent by `home` (its home node, so never `sender_mismatch`)."""
    owner = owner or home.user("zhangsan")
    payload = {"op": op, "group_id": "zhuanban", "home_node_id": home.id, "operator": owner, "seq": seq,
               "group_info": {"name": "专班", "owner": owner, "members": members}, **fields}
    return raw_post(home.node, member, "group_op", protocol.make_envelope(
        from_node=home.id, to_node=member.id, type="group_op", payload=payload))


def test_a_hostile_home_node_cannot_make_a_member_node_list_users_it_does_not_have(network, caplog):  # noqa: F811
    """The member node checked only the users `target_user_ids` named, and applied `group_info.members` whole:
    a create without `target_user_ids` (which the schema allows), a join, an update_info, or an invite naming
    one real user had it list users of its own that do not exist. A user of the node that the state adds
    without naming it is left out; one it names, or makes owner, refuses the announcement."""
    a, b = network["a"], network["b"]
    owner, lisi, zhaoliu, ghost = a.user("zhangsan"), b.user("lisi"), b.user("zhaoliu"), b.user("ghost")
    assert announce(a, b, 1, "create", [owner, ghost], group_id="youling")[0] == 200
    assert replicas(b) == []  # no user of B is a member: no replica shown
    assert announce(a, b, 1, "create", [owner, lisi, ghost])[0] == 200
    assert replicas(b) == [(owner, 1, [owner, lisi])]
    for seq, (op, fields) in enumerate((("join", {}), ("update_info", {}),
                                        ("invite", {"target_user_ids": [zhaoliu]})), start=2):
        assert announce(a, b, seq, op, [owner, lisi, zhaoliu, ghost], **fields)[0] == 200
        assert b.node.groups()[0].members == [owner, lisi, zhaoliu], op
        assert f"{op} (seq {seq}) lists {ghost}, a user this node does not have" in caplog.text
        assert b.node.groups("lisi")[0].seq == seq

    status, body = announce(a, b, 5, "invite", [owner, lisi, zhaoliu, ghost], target_user_ids=[ghost])
    assert status == 404 and ghost in body["error"]["message"] and body["error"]["field"] == "payload.target_user_ids"
    status, body = announce(a, b, 5, "update_info", [owner, lisi, zhaoliu, ghost], owner=ghost)
    assert status == 404 and ghost in body["error"]["message"] and body["error"]["field"] == "payload.group_info.owner"
    assert replicas(b) == [(owner, 4, [owner, lisi, zhaoliu])]


def test_an_announcement_whose_owner_is_not_among_its_members_is_refused(network):  # noqa: F811
    """§8.9: members, owner included. A home node's transfer to a non-member, or a create naming a made-up owner
    of a third node, was taken: the replica showed as owner a user who was not in the group."""
    a, b = network["a"], network["b"]
    owner, lisi, zhaoliu = a.user("zhangsan"), b.user("lisi"), b.user("zhaoliu")
    assert announce(a, b, 1, "create", [owner, lisi])[0] == 200
    status, body = announce(a, b, 2, "transfer_owner", [owner, lisi], owner=zhaoliu, target_user_ids=[zhaoliu])
    assert (status, body["error"]["code"]) == (422, "schema_violation"), body
    assert body["error"]["field"] == "payload.group_info.owner" and zhaoliu in body["error"]["message"]
    status, body = announce(a, b, 1, "create", [owner, lisi], owner=f"ghost@{'4' * 20}", group_id="youling")
    assert (status, body["error"]["code"]) == (422, "schema_violation"), body
    assert replicas(b) == [(owner, 1, [owner, lisi])]
    assert announce(a, b, 2, "dismiss", [])[0] == 200  # a dismiss lists no members, its owner included


def held_groups(served, home) -> int:
    """Every replica a node keeps of groups homed at `home`, hidden ones too."""
    with served.node.db() as session:
        return len(session.scalars(select(Group).where(Group.home_node_id == home.id)).all())


def test_a_peer_cannot_fill_a_node_with_groups_it_has_no_member_of(network):  # noqa: F811
    """A listed peer's announcements of groups homed at it that listed no user of the receiving node were each
    kept as a hidden replica, for good: 100 of them, 100 rows. Only a kick, quit or dismiss (a home node tells
    the nodes of those it removed) or a withdrawal (an update_info to a node that may have taken a refused
    state) makes a new hidden replica, which keeps an older announcement from bringing the group back; any other
    is acknowledged and nothing is kept. Past `max_hidden_groups_per_peer`, a new one is refused
    (quota_exceeded); a replica already kept still takes later states."""
    a, b = network["a"], network["b"]
    owner, other, lisi = a.user("zhangsan"), a.user("wangwu"), b.user("lisi")
    for op, fields in (("create", {}), ("invite", {"target_user_ids": [other]}), ("join", {}),
                       ("transfer_owner", {"target_user_ids": [other]})):
        status, body = announce(a, b, 1 if op == "create" else 2, op, [owner, other],
                                group_id=f"junk-{op.replace('_', '-')}", **fields)
        assert status == 200 and body["status"] == "accepted", (op, body)
    assert held_groups(b, a) == 0

    for op in ("kick", "quit", "dismiss", "update_info"):
        group_id = f"gone-{op.replace('_', '-')}"
        fields = {"target_user_ids": [lisi]} if op == "kick" else {}
        assert announce(a, b, 3, op, [] if op == "dismiss" else [owner], group_id=group_id, **fields)[0] == 200
        # the older state that listed lisi, landing late, does not bring the group back
        assert announce(a, b, 2, "invite", [owner, lisi], group_id=group_id, target_user_ids=[lisi])[0] == 200
    assert replicas(b) == [] and held_groups(b, a) == 4

    c = network["join"]("110000", max_hidden_groups_per_peer=2)
    for node in (a, b, c):
        node.node.sync_routes()
    for index in (1, 2):
        assert announce(a, c, 3, "dismiss", [], group_id=f"gone-{index}")[0] == 200
    status, body = announce(a, c, 3, "dismiss", [], group_id="gone-3")
    assert status == 403 and body["error"]["code"] == "quota_exceeded", body
    assert held_groups(c, a) == 2
    assert announce(a, b, 3, "dismiss", [], group_id="gone-3")[0] == 200  # the cap is the receiving node's
    assert announce(a, c, 4, "dismiss", [], group_id="gone-1")[0] == 200  # kept already: not a new one
    assert announce(a, c, 1, "create", [owner, c.user("sunqi")], group_id="gone-3",
                    target_user_ids=[c.user("sunqi")])[0] == 200  # a member: shown, whatever the cap
    assert replicas(c) == [(owner, 1, [owner, c.user("sunqi")])] and held_groups(c, a) == 3


def test_groups_a_nodes_users_left_leave_room_for_a_kick_that_comes_before_its_invite(network):  # noqa: F811
    """The cap on hidden replicas counted every replica not shown, the real groups this node's users had left
    among them: past it, an honest kick that came before its invite (the outbox sends in parallel) was refused
    for good, and the late invite brought the kicked user back. Only replicas made hidden by an announcement
    listing no user of the node count; one that later lists a user of the node is a real group, and no longer
    counts."""
    a = network["a"]
    owner = a.user("zhangsan")
    c = network["join"]("110000", max_hidden_groups_per_peer=2)
    for node in (a, network["b"], c):
        node.node.sync_routes()
    sunqi = c.user("sunqi")
    for index, leave in enumerate(("kick", "quit", "kick")):
        group = a.node.create_group("zhangsan", f"专班{index}", [sunqi])
        settle(a, c)
        if leave == "kick":
            a.node.group_operation("zhangsan", group.address, "kick", [sunqi])
        else:
            assert c.node.group_operation("sunqi", group.address, "quit") == "accepted"
        settle(a, c)
    assert c.node.groups() == [] and held_groups(c, a) == 3  # more groups left than the cap

    # a kick landing before the invite it follows: kept hidden, and the late invite does not bring sunqi back
    assert announce(a, c, 3, "kick", [owner], group_id="late", target_user_ids=[sunqi])[0] == 200
    assert announce(a, c, 2, "invite", [owner, sunqi], group_id="late", target_user_ids=[sunqi])[0] == 200
    assert c.node.groups("sunqi") == [] and held_groups(c, a) == 4

    # made up, past the cap: still refused
    assert announce(a, c, 3, "dismiss", [], group_id="made-up-1")[0] == 200
    status, body = announce(a, c, 3, "dismiss", [], group_id="made-up-2")
    assert status == 403 and body["error"]["code"] == "quota_exceeded", body
    assert "made hidden here" in body["error"]["message"]

    # a hidden replica that a later state gives a member here is a real group, and no longer counts
    assert announce(a, c, 4, "invite", [owner, sunqi], group_id="late", target_user_ids=[sunqi])[0] == 200
    assert [g.address for g in c.node.groups("sunqi")] == [f"late@{a.id}"]
    assert announce(a, c, 3, "dismiss", [], group_id="made-up-2")[0] == 200
    assert announce(a, c, 5, "kick", [owner], group_id="late", target_user_ids=[sunqi])[0] == 200
    assert c.node.groups("sunqi") == []
    status, body = announce(a, c, 3, "dismiss", [], group_id="made-up-3")
    assert status == 403 and body["error"]["code"] == "quota_exceeded", body


def test_hidden_replicas_kept_before_schema_8_count_against_no_cap_after_the_upgrade(network):  # noqa: F811
    """Schema 8 marks the replicas created hidden (`created_hidden`), which alone count against
    `max_hidden_groups_per_peer`. Which of the hidden replicas kept before were created so was never recorded, so
    none is marked: marking all would leave an upgraded node refusing honest kicks, as before the fix."""
    a = network["a"]
    c = network["join"]("110000", max_hidden_groups_per_peer=2)
    for node in (a, network["b"], c):
        node.node.sync_routes()
    group = a.node.create_group("zhangsan", "专班", [c.user("sunqi")])
    a.node.group_operation("zhangsan", group.address, "kick", [c.user("sunqi")])
    settle(a, c)
    for index in (1, 2):
        assert announce(a, c, 3, "dismiss", [], group_id=f"made-up-{index}")[0] == 200
    assert announce(a, c, 3, "dismiss", [], group_id="made-up-3")[0] == 403

    _as_schema_7(c.dir / "node.db")  # the node's database as schema 7 left it, under the idle node
    open_database(c.dir / "node.db").kw["bind"].dispose()  # what the next start of the node does
    with sqlite3.connect(c.dir / "node.db") as connection:
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
        rows = connection.execute("SELECT group_id, dismissed, created_hidden FROM groups ORDER BY group_id")
        rows = rows.fetchall()
    connection.close()
    assert version == SCHEMA_VERSION == "8"
    assert rows == [(group.group_id, 1, 0), ("made-up-1", 1, 0), ("made-up-2", 1, 0)]
    for index in (3, 4):  # the cap's worth again, once
        assert announce(a, c, 3, "dismiss", [], group_id=f"made-up-{index}")[0] == 200
    status, body = announce(a, c, 3, "dismiss", [], group_id="made-up-5")
    assert status == 403 and body["error"]["code"] == "quota_exceeded", body
    assert held_groups(c, a) == 5


def test_a_node_that_confirmed_members_is_told_the_operation_was_refused_elsewhere(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    for node in (a, b, c):
        node.node.sync_routes()
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu")])
    assert c.id < b.id  # C is asked first and takes the new state before B refuses
    with pytest.raises(NotFound, match="ghost"):
        a.node.group_operation("zhangsan", group.address, "invite", [c.user("sunqi"), b.user("ghost")])
    settle(a, b, c)
    assert a.node.groups()[0].members == [a.user("zhangsan"), a.user("wangwu")] and replicas(b) == []
    assert replicas(c) == []  # the withdrawal (seq 3) lists no user of C, so C dropped its replica
    assert a.node.group_operation("zhangsan", group.address, "invite", [c.user("sunqi")]) == "applied"
    settle(a, b, c)
    assert c.node.groups()[0].seq == 4 and c.node.groups()[0].members[-1] == c.user("sunqi")

    with pytest.raises(NotFound, match="ghost"):  # a refused create leaves no replica behind either
        a.node.create_group("zhangsan", "幽灵", [c.user("sunqi"), b.user("ghost")])
    settle(a, b, c)
    assert [g.address for g in c.node.groups()] == [group.address] and len(a.node.groups()) == 1

    # a member node's request: the home node asks C, and B's user hears C's refusal
    a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")])
    settle(a, b, c)
    with pytest.raises(NotFound, match=f"ghost@{c.id}"):
        b.node.group_operation("lisi", group.address, "invite", [c.user("ghost")])
    settle(a, b, c)
    assert all(c.user("ghost") not in node.node.groups()[0].members for node in (a, b, c))


def test_a_member_whose_node_does_not_answer_cannot_be_confirmed_and_nothing_changes(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu")])
    b.stop()
    with pytest.raises(Conflict, match="cannot confirm"):
        a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")])
    with pytest.raises(Conflict, match="cannot confirm"):
        a.node.create_group("zhangsan", "专班二", [b.user("lisi")])
    assert [(g.seq, g.members) for g in a.node.groups()] == [(1, [a.user("zhangsan"), a.user("wangwu")])]
    assert group_ops(a) == []


def test_ownership_never_goes_to_a_member_who_does_not_exist(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    with a.node.db.begin() as session:  # a phantom let in before members were checked
        row = session.scalar(select(Group))
        row.members = [*row.members, a.user("ghost")]
    with pytest.raises(NotFound, match="ghost"):
        a.node.group_operation("zhangsan", group.address, "transfer_owner", [a.user("ghost")])
    assert a.node.groups()[0].owner == a.user("zhangsan") and a.node.groups()[0].seq == 1


def test_a_group_message_reaches_a_member_node_only_as_its_capabilities_allow(network):  # noqa: F811
    a, b = network["a"], network["b"]
    c = network["join"]("110000", capabilities=[cap for cap in CAPABILITIES if cap not in ("sticker", "voice")])
    for node in (a, b, c):
        node.node.sync_routes()
    group = a.node.create_group("zhangsan", "三地", [b.user("lisi"), c.user("sunqi")])
    settle(a, b, c)
    conversation = f"g:{group.address}"
    sticker = {"package_id": "jingwu", "sticker_id": "ok", "alt_text": "[好的]"}

    from_home = a.node.send_file("zhangsan", group.address, GIF, "sticker", file_name="ok.gif", sticker=sticker)
    from_member = b.node.send_file("lisi", group.address, GIF, "sticker", file_name="ok.gif", sticker=sticker)
    settle(a, b, c)
    shown = {m["message_id"]: (m["msg_type"], m["content"].get("text")) for m in history(c, "sunqi", conversation)}
    assert shown == {from_home.message_id: ("text", "[好的]"), from_member.message_id: ("text", "[好的]")}
    assert {m["msg_type"] for m in history(b, "lisi", conversation)} == {"sticker"}

    voice_home = a.node.send_file("zhangsan", group.address, adts(900), "voice", duration_ms=900)
    voice_member = b.node.send_file("lisi", group.address, adts(900), "voice", duration_ms=900)
    settle(a, b, c)
    assert [m["msg_type"] for m in history(c, "sunqi", conversation)] == ["text", "text"]
    for sender, message in ((a, voice_home), (b, voice_member)):  # each sender is told which node it misses
        assert list(sender.node.undelivered(message.message_id)) == [c.id]
        assert "voice" in sender.node.undelivered(message.message_id)[c.id]
        delivery = {e["message"].message_id: e["delivery"] for e in sender.node.history("zhangsan" if sender is a
                                                                                         else "lisi", conversation)}
        assert delivery[message.message_id] == "partial"
    assert [m["message_id"] for m in history(b, "lisi", conversation)][-2:] == [voice_home.message_id,
                                                                                voice_member.message_id]
    # nothing to C was queued to fail: the home node never attempted a voice for C
    to_c = [row for row in a.node.outbox() if row.peer_node == c.id and row.kind == "message"]
    assert {row.state for row in to_c} == {"delivered", "skipped"} and all(row.attempts <= 1 for row in to_c)
    assert not [row for row in to_c if row.state == "skipped" and row.attempts]
    listed = node_cli(a, "--json", "outbox", "list", "--state", "skipped")  # was a usage error
    assert listed.returncode == 0, listed.stderr
    assert sorted(row["id"] for row in json.loads(listed.stdout)) == sorted(
        row.id for row in a.node.outbox() if row.state == "skipped") != []


def test_an_operation_that_changes_nothing_takes_no_seq_and_is_not_announced(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    announced = len(group_ops(a))
    a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")])  # a member already
    assert b.node.group_operation("lisi", group.address, "invite", [a.user("zhangsan")]) == "accepted"
    a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "专班"})
    a.node.group_operation("zhangsan", group.address, "transfer_owner", [a.user("zhangsan")])
    with pytest.raises(NotAParticipant, match="wangwu"):
        a.node.group_operation("zhangsan", group.address, "kick", [a.user("wangwu")])
    settle(a, b)
    assert a.node.groups()[0].seq == 1 and b.node.groups()[0].seq == 1
    assert len(group_ops(a)) == announced  # no announcement to B
    a.node.group_operation("zhangsan", group.address, "invite", [a.user("wangwu"), b.user("lisi")])
    settle(a, b)
    assert b.node.groups()[0].seq == 2 and b.node.groups()[0].members == [a.user("zhangsan"), b.user("lisi"),
                                                                          a.user("wangwu")]


class HeldAnnouncement:
    """A member node slow to answer: the next group announcement it receives (a home node's confirmation among
    them) waits, on its real TLS connection, until the test releases it; announcements after it pass."""

    def __init__(self, served, monkeypatch):
        self.arrived, self.release, self.answered = threading.Event(), threading.Event(), threading.Event()
        self._waiting = threading.Lock()
        receive = served.node.receive

        def held(kind: str, body: bytes, content_type, certificate):
            if kind == "group_op" and "seq" in json.loads(body)["payload"] and self._waiting.acquire(blocking=False):
                self.arrived.set()
                self.release.wait(60)  # bounded only so that a failing test cannot hang the run
                try:
                    return receive(kind, body, content_type, certificate)
                finally:
                    self.answered.set()
            return receive(kind, body, content_type, certificate)

        monkeypatch.setattr(served.node, "receive", held)
        # The held confirmation must not time out while the test works; only the events decide what happens.
        monkeypatch.setattr(group_confirmation, "CONFIRM_TIMEOUT", 20.0)


def test_a_member_node_slow_to_confirm_holds_up_no_other_write_of_the_home_node(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    other = a.node.create_group("zhangsan", "另一个", [a.user("wangwu")])
    settle(a, b)
    held = HeldAnnouncement(b, monkeypatch)

    def write_meanwhile() -> str:
        a.node.send_text("zhangsan", a.user("wangwu"), "开会")
        return a.node.group_operation("zhangsan", other.address, "update_info", info={"name": "改名"})

    with ThreadPoolExecutor(2) as pool:
        try:  # B's user asks home A to invite zhaoliu; A asks B to confirm him, and B is slow to answer
            asking = pool.submit(b.node.group_operation, "lisi", group.address, "invite", [b.user("zhaoliu")])
            assert held.arrived.wait(30)
            writing = pool.submit(write_meanwhile)
            done, _ = wait([asking, writing], return_when=FIRST_COMPLETED)
            assert writing in done and not asking.done()  # written while the confirmation is in flight
        finally:
            held.release.set()
        assert writing.result() == "applied" and asking.result() == "accepted"
    settle(a, b)
    chat = protocol.single_chat_conversation_id(a.user("zhangsan"), a.user("wangwu"))
    assert [m["content"]["text"] for m in history(a, "wangwu", chat)] == ["开会"]
    by_address = {g.address: g for g in a.node.groups()}
    assert by_address[other.address].name == "改名"
    assert by_address[group.address].members == [a.user("zhangsan"), b.user("lisi"), b.user("zhaoliu")]
    assert b.node.groups("zhaoliu")[0].seq == by_address[group.address].seq


def test_a_confirmation_taken_after_the_home_node_gave_up_is_withdrawn_and_its_seq_never_reused(
        network, monkeypatch):  # noqa: F811
    """A confirmation that timed out counted as not taken: the home node gave its seq back and numbered another
    state under it, while the slow node, answering late, had taken the refused one (sunqi a member there, whom
    the home node never added) and ignored the other as already applied. A node whose answer is unknown may
    have taken the state: it is sent the withdrawal, and the seq the state took is never given back."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    for node in (a, b, c):
        node.node.sync_routes()
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b, c)
    held = HeldAnnouncement(c, monkeypatch)
    monkeypatch.setattr(group_confirmation, "CONFIRM_TIMEOUT", 0.5)  # A stops waiting while C holds the state
    try:
        with pytest.raises(Conflict, match=f"cannot confirm members {c.user('sunqi')}.*did not answer"):
            a.node.group_operation("zhangsan", group.address, "invite", [c.user("sunqi")])
        assert held.arrived.wait(30)
    finally:
        held.release.set()
    assert held.answered.wait(30)  # C took the refused state after all
    members = [a.user("zhangsan"), b.user("lisi")]
    assert a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "改名"}) == "applied"
    settle(a, b, c)
    home = a.node.groups()[0]
    assert (home.name, home.members, home.seq) == ("改名", members, 4)  # 2 refused, 3 its withdrawal, 4 the rename
    assert [(g.name, g.members, g.seq) for g in b.node.groups()] == [("改名", members, 4)]
    assert c.node.groups("sunqi") == [] and replicas(c) == []
    with c.node.db() as session:  # the withdrawal (seq 3) lists no user of C: kept hidden, for its seq
        replica = session.get(Group, (group.group_id, a.id))
        assert (replica.seq, replica.members, replica.dismissed) == (3, members, True)


def test_a_confirmation_answered_with_a_server_error_after_it_was_taken_is_withdrawn(network, monkeypatch):  # noqa: F811
    """A 500 says the node failed while handling the request, which may be after it committed the state."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [a.user("wangwu")])
    receive = b.node.receive

    def failing_after_commit(kind: str, *args):
        reply = receive(kind, *args)
        if kind == "group_op":
            raise RuntimeError("the node failed after taking the state")
        return reply

    monkeypatch.setattr(b.node, "receive", failing_after_commit)
    with pytest.raises(Conflict, match="answered HTTP 500"):
        a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")])
    assert b.node.groups("lisi")[0].seq == 2  # B took it
    monkeypatch.setattr(b.node, "receive", receive)
    settle(a, b)
    members = [a.user("zhangsan"), a.user("wangwu")]
    assert [(g.members, g.seq) for g in a.node.groups()] == [(members, 3)]
    assert b.node.groups("lisi") == [] and replicas(b) == []


def test_an_operation_on_a_group_changed_during_its_confirmation_is_refused(network, monkeypatch):  # noqa: F811
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    settle(a, b)
    held = HeldAnnouncement(b, monkeypatch)
    with ThreadPoolExecutor(1) as pool:
        try:  # B is asked to confirm zhaoliu; meanwhile the owner renames the group
            inviting = pool.submit(a.node.group_operation, "zhangsan", group.address, "invite", [b.user("zhaoliu")])
            assert held.arrived.wait(30)
            assert a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "改名"}) == "applied"
        finally:
            held.release.set()  # B confirms zhaoliu, but the state it confirmed is no longer the next one
        with pytest.raises(Conflict, match="changed while"):
            inviting.result()
    settle(a, b)
    members = [a.user("zhangsan"), b.user("lisi")]
    home = a.node.groups()[0]
    assert (home.name, home.members) == ("改名", members)
    assert [(g.name, g.members, g.seq) for g in b.node.groups()] == [("改名", members, home.seq)]  # withdrawn
    assert not [row for row in group_ops(a) if b.user("zhaoliu") in row.envelope["payload"]["group_info"]["members"]]


def test_a_refused_create_leaves_nothing_behind_and_a_new_attempt_is_created(network, monkeypatch):  # noqa: F811
    """The new attempt has a new id (`new_group_id`): C keeps the refused one's dismissal (seq 2) hidden, so an
    announcement of the old id, seq 1, would be ignored there."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    for node in (a, b, c):
        node.node.sync_routes()
    assert c.id < b.id  # C confirms sunqi before B refuses ghost
    ids = iter(("zhian-2025", "zhian-2026"))
    monkeypatch.setattr(groups, "new_group_id", lambda: next(ids))
    with pytest.raises(NotFound, match="ghost"):
        a.node.create_group("zhangsan", "专班", [c.user("sunqi"), b.user("ghost")])
    settle(a, b, c)
    assert replicas(a) == [] and replicas(c) == []  # C took the group, then its dismissal
    with a.node.db() as session:
        assert session.scalars(select(Group)).all() == []  # the home node keeps nothing of it

    group = a.node.create_group("zhangsan", "专班", [c.user("sunqi"), b.user("lisi")])  # the member list fixed
    settle(a, b, c)
    members = [a.user("zhangsan"), c.user("sunqi"), b.user("lisi")]
    assert group.address == f"zhian-2026@{a.id}"
    for node in (a, b, c):
        assert [(g.address, g.seq, g.members) for g in node.node.groups()] == [(group.address, 1, members)]


def test_two_home_nodes_confirming_with_each_other_at_once_both_succeed(network, monkeypatch):  # noqa: F811
    """A asks B to confirm a member while B asks A to confirm one. Each confirmation arrives while the other
    node is handling a member node's request; when that handling held the write lock (before §10's two
    transactions), each waited for the other until the timeout and both operations were refused."""
    a, b = network["a"], network["b"]
    homed_on_a = a.node.create_group("zhangsan", "甲组", [b.user("lisi")])
    homed_on_b = b.node.create_group("lisi", "乙组", [a.user("zhangsan")])
    settle(a, b)
    held_at_a, held_at_b = HeldAnnouncement(a, monkeypatch), HeldAnnouncement(b, monkeypatch)
    with ThreadPoolExecutor(2) as pool:
        try:  # B's lisi asks home A to invite zhaoliu (A asks B); A's zhangsan asks home B to invite wangwu
            asked_a = pool.submit(b.node.group_operation, "lisi", homed_on_a.address, "invite", [b.user("zhaoliu")])
            asked_b = pool.submit(a.node.group_operation, "zhangsan", homed_on_b.address, "invite",
                                  [a.user("wangwu")])
            assert held_at_b.arrived.wait(30) and held_at_a.arrived.wait(30)  # both confirmations under way
        finally:
            held_at_a.release.set()
            held_at_b.release.set()
        assert asked_a.result() == "accepted" and asked_b.result() == "accepted"
    settle(a, b)
    by_address = {g.address: g.members for g in a.node.groups()} | {g.address: g.members for g in b.node.groups()}
    assert by_address[homed_on_a.address] == [a.user("zhangsan"), b.user("lisi"), b.user("zhaoliu")]
    assert by_address[homed_on_b.address] == [b.user("lisi"), a.user("zhangsan"), a.user("wangwu")]


def test_a_group_the_user_left_leaves_their_inbox_and_page_and_stays_for_its_members(network):  # noqa: F811
    """A user's own messages kept a group they had quit, been removed from or seen dismissed in their inbox
    and on the page, where opening it was refused (not_a_participant): a group is listed while the user is in
    it, a single chat while they are one of its two."""
    a, b = network["a"], network["b"]
    left = a.node.create_group("zhangsan", "专班", [a.user("wangwu"), b.user("lisi"), b.user("zhaoliu")])
    ended = a.node.create_group("zhangsan", "临时组", [b.user("lisi")])
    settle(a, b)
    for served, user in ((b, "lisi"), (b, "zhaoliu"), (a, "wangwu"), (a, "zhangsan")):
        served.node.send_text(user, left.address, f"{user} 收到")
    for served, user in ((b, "lisi"), (a, "zhangsan")):
        served.node.send_text(user, ended.address, f"{user} 好")
    single = b.node.send_text("lisi", a.user("zhangsan"), "单聊")
    settle(a, b)
    b.node.group_operation("lisi", left.address, "quit")
    a.node.group_operation("zhangsan", left.address, "kick", [a.user("wangwu")])
    a.node.group_operation("zhangsan", ended.address, "dismiss")
    settle(a, b)

    def listed(served, user: str) -> set[str]:
        return {row["conversation_id"] for row in served.node.conversations(user)}

    assert listed(b, "lisi") == {single.conversation_id}  # quit: both groups gone, the single chat stays
    assert listed(a, "wangwu") == set()  # removed
    assert listed(a, "zhangsan") == {single.conversation_id, f"g:{left.address}"}  # dismissed: gone
    assert listed(b, "zhaoliu") == {f"g:{left.address}"}
    for served, user in ((b, "lisi"), (b, "zhaoliu"), (a, "zhangsan")):
        for conversation in listed(served, user):
            assert served.node.history(user, conversation)  # every conversation listed opens
    assert f"g:{left.address}" not in page(b, "/?user=lisi") and f"g:{ended.address}" not in page(b, "/?user=lisi")
    assert f"g:{left.address}" in page(b, "/?user=zhaoliu")


def test_a_group_operation_at_home_delivers_its_own_announcements_not_the_nodes_whole_backlog(network):  # noqa: F811
    """`group create` and every operation at the home node delivered everything the outbox held before returning:
    8 messages queued for a node that accepts connections and never answers made a one-member `group create`
    take 20 s. The operation sends what it queued; the rest is the node loop's."""
    a, b = network["a"], network["b"]
    c = network["join"]("110000")
    c.node.sync_routes()
    a.node.sync_routes()
    c.stop()
    backlog = [a.node.send_text("zhangsan", c.user("sunqi"), f"排队 {n}", deliver=False).message_id for n in range(2)]

    def untouched() -> list[tuple[str, int]]:
        return [(row.state, row.attempts) for row in a.node.outbox() if row.message_id in backlog]

    group = a.node.create_group("zhangsan", "本地组", [])
    assert untouched() == [("pending", 0), ("pending", 0)]
    assert a.node.group_operation("zhangsan", group.address, "invite", [b.user("lisi")]) == "applied"
    assert a.node.group_operation("zhangsan", group.address, "update_info", info={"name": "改名"}) == "applied"
    assert untouched() == [("pending", 0), ("pending", 0)]
    assert {row.state for row in a.node.outbox() if row.peer_node == b.id} == {"delivered"}  # its own, at once
    assert b.node.groups("lisi")[0].name == "改名"


def _group_lisi_owns_homed_on(a, b) -> Group:
    """A group homed on `a` whose owner (lisi) is a user of `b`, with wangwu of `a` a member."""
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), a.user("wangwu")])
    a.node.group_operation("zhangsan", group.address, "transfer_owner", [b.user("lisi")])
    settle(a, b)
    return group


def _requests(served, group) -> list[tuple[str, str, int]]:
    """(op, state, attempts) of each request `served` queued to the group's home node, oldest first."""
    return [(row.envelope["payload"]["op"], row.state, row.attempts) for row in group_ops(served)
            if row.peer_node == group.home_node_id and row.envelope["payload"]["group_id"] == group.group_id]


def test_a_request_made_while_an_earlier_one_waits_for_the_home_node_goes_behind_it(network):  # noqa: F811
    """A request to a home node that was down was an outbox row like any other: the owner kicked wangwu while
    the home node was down ("queued"), invited him back once it was up ("accepted", sent at once), and then the
    older kick arrived and removed him again. A node's requests for one group reach its home node in the order
    they were made (§6): a later one waits behind the earlier one, which holds up no other group nor a chat."""
    a, b = network["a"], network["b"]
    group = _group_lisi_owns_homed_on(a, b)
    other = a.node.create_group("zhangsan", "另一个", [b.user("lisi")])
    settle(a, b)
    a.stop()
    assert b.node.group_operation("lisi", group.address, "kick", [a.user("wangwu")]) == "queued"
    # Its first retry comes 2 s later; starting a node and a CLI process can take longer on a busy machine, and
    # the kick then went at the `deliver` below. An hour away, it waits for the nudge (`retry_now`) as meant.
    with b.node.db.begin() as session:
        [kick] = [row for row in group_ops(b) if row.peer_node == group.home_node_id and row.state == "pending"]
        session.get(Outbox, kick.id).next_attempt_at = outbox.utcnow() + timedelta(hours=1)
    a.start()
    done = node_cli(b, "group", "invite", "--as", "lisi", group.address, a.user("wangwu"))
    assert (done.returncode, done.stdout) == (0, "queued behind an earlier request for this group that the home "
                                                 "node has not taken yet: sent after it\n")
    assert _requests(b, group) == [("kick", "pending", 1), ("invite", "pending", 0)]
    __import__("time").sleep(3)
    assert b.node.deliver() == {"delivered": 0, "retry": 0, "failed": 0}  # the kick's retry is not due yet
    # the queue of one group holds up neither another group of the same home node nor a single chat
    assert b.node.group_operation("lisi", other.address, "quit") == "accepted"
    sent = b.node.send_text("lisi", a.user("zhangsan"), "在吗")
    assert [row.state for row in b.node.outbox() if row.message_id == sent.message_id] == ["delivered"]

    b.node.retry_now()
    settle(a, b)
    assert _requests(b, group) == [("kick", "delivered", 2), ("invite", "delivered", 1)]
    [home] = [g for g in a.node.groups() if g.group_id == group.group_id]
    assert home.members == [a.user("zhangsan"), b.user("lisi"), a.user("wangwu")]
    assert [g.members for g in b.node.groups("lisi") if g.group_id == group.group_id] == [home.members]


def test_requests_queued_during_an_outage_are_applied_in_the_order_they_were_made(network):  # noqa: F811
    """Each queued request had its own backoff and up to 4 went to the home node at once: two renames during
    an outage left the group with the first name. A request the home node refuses for good (a second kick of
    someone no longer a member) or one given up holds up the later ones no longer."""
    a, b = network["a"], network["b"]
    group = _group_lisi_owns_homed_on(a, b)
    a.stop()
    typed = [("kick", [a.user("wangwu")], None), ("update_info", [], {"name": "第一"}),
             ("kick", [a.user("wangwu")], None), ("invite", [a.user("wangwu")], None),
             ("update_info", [], {"name": "第二"})]
    outcomes = [b.node.group_operation("lisi", group.address, op, targets, info) for op, targets, info in typed]
    assert outcomes == ["queued"] + ["queued_behind"] * 4
    for _ in range(3):  # the node loop's rounds while the home node stays down: only the first is tried
        b.node.retry_now()
        b.node.deliver()
    assert [attempts for _, _, attempts in _requests(b, group)] == [4, 0, 0, 0, 0]

    a.start()
    with b.node.db.begin() as session:  # the last one's retry comes due first, as one tried fewer times would
        session.get(Outbox, max(row.id for row in group_ops(b))).next_attempt_at = outbox.utcnow()
    b.node.deliver()
    b.node.retry_now()
    settle(a, b)
    assert [state for _, state, _ in _requests(b, group)] == ["delivered", "delivered", "failed", "delivered",
                                                              "delivered"]
    [home] = [g for g in a.node.groups() if g.group_id == group.group_id]
    assert (home.name, home.members) == ("第二", [a.user("zhangsan"), b.user("lisi"), a.user("wangwu")])


def test_a_request_given_up_on_lets_the_one_behind_it_go(network):  # noqa: F811
    a, b = network["a"], network["b"]
    group = _group_lisi_owns_homed_on(a, b)
    a.stop()
    assert b.node.group_operation("lisi", group.address, "update_info", (), {"name": "第一"}) == "queued"
    assert b.node.group_operation("lisi", group.address, "update_info", (), {"name": "第二"}) == "queued_behind"
    with b.node.db.begin() as session:  # the first was tried for longer than the outbox retries an envelope
        first = min(row.id for row in group_ops(b))
        session.get(Outbox, first).first_attempt_at = outbox.utcnow() - outbox.GIVE_UP_AFTER - timedelta(minutes=1)
    b.node.retry_now()
    b.node.deliver()
    assert [(op, state) for op, state, _ in _requests(b, group)] == [("update_info", "failed"),
                                                                     ("update_info", "pending")]
    a.start()
    b.node.retry_now()
    settle(a, b)
    assert [g.name for g in a.node.groups() if g.group_id == group.group_id] == ["第二"]


def due_rows_plan(served) -> list[str]:
    """SQLite's plan (EXPLAIN QUERY PLAN details) for the statement by which `deliver` picks the due rows, as it
    runs it."""
    seen = []

    def keep(_connection, _cursor, statement, parameters, _context, _many):
        if statement.startswith("SELECT outbox.id") and "EXISTS" in statement:
            seen.append((statement, parameters))

    event.listen(served.node.engine, "before_cursor_execute", keep)
    try:
        served.node.deliver()
    finally:
        event.remove(served.node.engine, "before_cursor_execute", keep)
    statement, parameters = seen[0]
    with sqlite3.connect(served.dir / "node.db") as connection:
        plan = [row[3] for row in connection.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    connection.close()
    return plan


EARLIER_BY_INDEX = ("SEARCH earlier USING INDEX ix_outbox_group_requests "
                    "(peer_node=? AND group_key=? AND state=? AND id<?)")


def test_a_request_finds_the_earlier_one_it_waits_behind_by_index_also_after_an_upgrade_from_schema_6(network):  # noqa: F811
    """Each due row looked for an earlier request of its group by reading the peer's earlier pending rows, the
    group's id read out of each envelope: with 40,000 messages and 500 groups waiting, a delivery round took 2 s.
    Schema 7 stores a request's group (`group_key`) and searches it by index; a database of schema 6 takes it in
    place on its next start, its queued requests still sent in order."""
    a, b = network["a"], network["b"]
    group = _group_lisi_owns_homed_on(a, b)
    a.stop()
    assert b.node.group_operation("lisi", group.address, "kick", [a.user("wangwu")]) == "queued"
    assert b.node.group_operation("lisi", group.address, "invite", [a.user("wangwu")]) == "queued_behind"
    b.node.send_text("lisi", a.user("zhangsan"), "在吗")
    assert EARLIER_BY_INDEX in due_rows_plan(b)

    _as_schema_6(b.dir / "node.db")  # the node's database as schema 6 left it, under the idle node
    open_database(b.dir / "node.db").kw["bind"].dispose()  # what the next start of the node does
    with sqlite3.connect(b.dir / "node.db") as connection:
        version = connection.execute("SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
        keys = connection.execute("SELECT kind, group_key FROM outbox WHERE state = 'pending' ORDER BY id").fetchall()
    connection.close()
    assert version == SCHEMA_VERSION == "8"
    assert keys == [("group_op", group.group_id), ("group_op", group.group_id), ("message", None)]
    assert EARLIER_BY_INDEX in due_rows_plan(b)
    assert _requests(b, group) == [("kick", "pending", 1), ("invite", "pending", 0)]

    a.start()
    b.node.retry_now()
    settle(a, b)
    assert _requests(b, group) == [("kick", "delivered", 2), ("invite", "delivered", 1)]
    [home] = [g for g in a.node.groups() if g.group_id == group.group_id]
    assert home.members == [a.user("zhangsan"), b.user("lisi"), a.user("wangwu")]


def test_an_operation_that_takes_no_targets_announces_none(network):  # noqa: F811
    """A quit (join, update_info, dismiss) names no users (§8.9), yet the home node copied whatever
    `target_user_ids` the request carried, up to 3000 addresses, into the announcement to every member node.
    They are ignored, as the schema lets a request carry them."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi"), b.user("zhaoliu")])
    settle(a, b)
    junk = [f"u{n}@{a.id}" for n in range(2000)]
    request = {"op": "quit", "group_id": group.group_id, "home_node_id": a.id, "operator": b.user("zhaoliu"),
               "target_user_ids": junk}
    status, _ = raw_post(b.node, a, "group_op", protocol.make_envelope(
        from_node=b.id, to_node=a.id, type="group_op", payload=request))
    assert status == 200
    assert a.node.group_operation("zhangsan", group.address, "update_info", [b.user("lisi")], {"name": "改名"}) \
        == "applied"
    assert a.node.group_operation("zhangsan", group.address, "dismiss", [b.user("lisi")]) == "applied"
    announced = [row.envelope["payload"] for row in group_ops(a)][-3:]
    assert [(op["op"], op.get("target_user_ids")) for op in announced] == [("quit", None), ("update_info", None),
                                                                           ("dismiss", None)]


def test_a_user_and_a_group_of_one_node_never_share_an_id(network, monkeypatch):  # noqa: F811
    """A node holding a group's replica reads an address of it as the group (protocol.md §3): a user of the home
    node with the group's id could no longer be written to there. A user is refused a group's id, and a new group
    is never given a user's."""
    a, b = network["a"], network["b"]
    group = a.node.create_group("zhangsan", "专班", [b.user("lisi")])
    with pytest.raises(Conflict, match="is the id of a group of this node"):
        a.node.add_user(group.group_id, "撞名")
    b.node.add_user(group.group_id, "另一个节点的用户")  # another node's user: another address
    a.node.add_user("g0123456789ab", "王五")
    ids = iter(["g0123456789ab", "g0123456789ac"])
    monkeypatch.setattr(groups, "new_group_id", lambda: next(ids))  # the random id meets the user's first
    made = a.node.create_group("zhangsan", "二组", [b.user("lisi")])
    assert made.group_id == "g0123456789ac"
