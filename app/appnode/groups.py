"""Groups (A.12): the home node applies each operation and announces the group's whole new state,
numbered by seq; other nodes apply announcements and ask the home node for operations. Only a user's own
node knows whether the user exists, so before a state gives another node new members the home node has that
node confirm it (§8.9), and withdraws a state some nodes took when a later one refuses.

This module holds what the node is asked: a local user's operations and group list, a member node's request
to this home node, and an announcement from a group's home node. The home node's state machine is in
group_home.py, and the confirmations by other nodes in group_confirmation.py.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app.appnode import protocol, validation
from app.appnode.group_home import NewState, joined_now
from app.appnode.messages import Reply, address, local_part
from app.appnode.protocol import Conflict, NotFound, QuotaExceeded, node_of, require_address
from app.appnode.store import Group, Outbox, User, insert_received, raw_cursor
from app.errors import DomainError

log = logging.getLogger("mpim.appnode")


# The operations whose announcement a home node sends to a node with no member left in the group: it removed
# them (kick, quit, dismiss), or withdraws a state the node may have taken (an update_info, group_confirmation).
# Only these make a new replica that lists no user of the node (kept hidden, for its seq); any other is
# acknowledged and not kept, so that a peer cannot fill this node with groups it has no member of.
ANNOUNCED_WITHOUT_MEMBERS = ("kick", "quit", "dismiss", "update_info")


def new_group_id() -> str:
    """A group's id, random: a refused create's dismissal (`_withdraw`) may still be on its way to a node when
    the user tries again, and must not meet a new group of the same id there."""
    return "g" + secrets.token_hex(6)


def _added_by(announcement: dict) -> list[str]:
    """Whom an announced operation added to the group: the users an invite names (a home node names only those
    it adds, `_apply_at_home`), or who joined. No other operation adds anyone but a create's first members."""
    if announcement["op"] == "invite":
        return list(announcement.get("target_user_ids", []))
    return [announcement["operator"]] if announcement["op"] == "join" else []


class GroupsMixin:
    """Group operations for a `Node`. Relies on the node's `db`, `node_id`, `wake`, `peer_entry`,
    `_pull_for_recipient` and `_writing`; on `_require_capability` and `_duplicate` (ReceivingMixin), on
    `_enqueue`, `_queued_behind` and `deliver` (OutboxMixin), on `_operate_at_home`, `_pull_for_members`,
    `_check_new_members` and `_announcement` (GroupHomeMixin), and on `_confirm_and_apply`
    (GroupConfirmationMixin)."""

    def _accept_group_op(self, session: Session, envelope: dict) -> bool:
        """An announcement from a group's home node; requests take `_receive_group_request`."""
        self._require_capability("group")
        self._apply_announcement(session, envelope["payload"])
        return False

    def _receive_group_request(self, envelope: dict, now: datetime) -> Reply:
        """A member node asks this home node for an operation. Not in `_receive_in_transaction`: the operation
        may need confirmations (§8.9), which run between two short transactions; the dedup record (§5.4 step 8)
        is written in the one that applies the operation, so a refused request is not remembered."""
        request = envelope["payload"]

        def first_time(session: Session) -> bool:
            try:
                insert_received(raw_cursor(session), envelope["from_node"], envelope["message_id"], now)
            except sqlite3.IntegrityError:
                return False
            self._require_capability("group")
            if request["op"] == "create":
                raise Conflict("a group is created by its home node, never requested", field="payload.op")
            return True

        group, _ = self._operate_at_home(request["op"], request["group_id"], request["operator"],
                                         request.get("target_user_ids", []), request.get("group_info", {}),
                                         first_time=first_time)
        if group is None:
            return self._duplicate(envelope)
        self.wake.set()  # announcements to deliver: the loop need not wait for its next round
        return Reply(document=protocol.make_ack(envelope["message_id"], now))

    def _apply_announcement(self, session: Session, op: dict) -> None:
        key = (op["group_id"], op["home_node_id"])
        group = session.get(Group, key)
        if group is not None and op["seq"] <= group.seq:
            return  # already applied (or older): acknowledged and ignored
        info = op["group_info"]
        if op["op"] != "dismiss" and info["owner"] not in info["members"]:  # §8.9: members, owner included
            raise validation.SchemaViolation(f"the owner {info['owner']} is not among the group's members",
                                             field="payload.group_info.owner")
        members = self._own_users_checked(session, group, op)
        # A state that lists no user of this node (kick, quit, dismiss) keeps the replica as gone (`dismissed`:
        # shown nowhere, nobody's to speak in) for its seq alone. Deleted, it forgot that seq, and an older
        # announcement still on its way (the outbox sends in parallel, so in any order) brought the group back
        # here with the removed users in it, while the home node no longer sent them anything.
        gone = op["op"] == "dismiss" or not any(node_of(member) == self.node_id for member in members)
        if group is None and gone:
            if op["op"] not in ANNOUNCED_WITHOUT_MEMBERS:
                log.info("group %s@%s: the home node's %s (seq %s) lists no user of this node; not kept",
                         op["group_id"], op["home_node_id"], op["op"], op["seq"])
                return
            self._check_hidden_replica_cap(session, op["home_node_id"])
        # A replica that missed states (a seq skipped) may still list a member removed and added again meanwhile
        # (kicked while this node was unreachable, invited again once it was back: the invite's confirmation
        # comes first, the kick later as an older state): whom the operation adds is added now all the same.
        # With no seq skipped, the replica is the state the operation was applied to, and someone it lists was a
        # member already (an invite may name members too) and keeps their time.
        skipped = group is not None and op["seq"] > group.seq + 1
        if group is None:
            group = Group(group_id=op["group_id"], home_node_id=op["home_node_id"], seq=op["seq"],
                          name=info["name"], owner=info["owner"], members=[], created_hidden=gone)
            session.add(group)
        group.name, group.notice, group.owner = info["name"], info.get("notice", ""), info["owner"]
        # The announcement carries no time (§8.9): a member new to the replica joins when this node learns of
        # it, at its confirmation if this node gained them; a group's first members, from its beginning.
        group.set_members(members, None if op["op"] == "create" else joined_now(),
                          rejoined=_added_by(op) if skipped else ())
        group.seq, group.dismissed = op["seq"], gone
        if not gone:  # a member here: a real group, counted against no cap even once its members leave
            group.created_hidden = False

    def _check_hidden_replica_cap(self, session: Session, home: str) -> None:
        """Refuse a new hidden replica (quota_exceeded) once the home node has `max_hidden_groups_per_peer`
        replicas here that were created hidden (`Group.created_hidden`): a kick, quit or dismiss of groups made
        up by the home node, each kept for good, would otherwise fill this node. Groups this node's users left
        are hidden too but not counted: they were real here, and counting them had an honest kick that came
        before its invite refused for good, and the late invite bring the kicked user back. Replicas kept
        already still take later states."""
        cap = self.config.max_hidden_groups_per_peer
        held = session.scalar(select(func.count()).select_from(Group).where(
            Group.home_node_id == home, Group.created_hidden.is_(True)))
        if held >= cap:
            log.warning("group announcement from %s refused: it has the %d groups made hidden here (announced "
                        "without a member here) that this node keeps for one home node", home, cap)
            raise QuotaExceeded(f"node {home} has the {cap} groups made hidden here (announced without a member "
                                "here) that this node keeps for one home node", field="payload.group_id")

    def _own_users_checked(self, session: Session, replica: Group | None, op: dict) -> list[str]:
        """The members to keep of an announcement's state. Only this node knows its users (§8.9), and the state
        is applied whole, so each user of this node that it adds to the replica, or makes owner, is checked:
        one the operation names (`target_user_ids`), or the new owner, that is not here refuses the
        announcement, as the home node's confirmation relies on; one it does not name (a create without
        `target_user_ids`, a join, an update_info: no honest home node adds a user so) is left out of the
        replica and logged, so that the home node cannot have this node list a user it does not have, and a
        phantom the home node let in before it checked members blocks no operation. Members the replica lists
        already are not checked again, for the same reason."""
        me, info = self.node_id, op["group_info"]
        listed = set(replica.members) if replica is not None else set()
        named = set(op.get("target_user_ids", []))

        def missing(user: str) -> bool:
            return node_of(user) == me and session.get(User, local_part(user)) is None

        owner = info["owner"]
        if (replica is None or owner != replica.owner) and missing(owner):
            raise NotFound(f"no user {owner} here", field="payload.target_user_ids" if owner in named
                           else "payload.group_info.owner")
        members, phantoms = [], []
        for user in info["members"]:
            if user not in listed and missing(user):
                if user in named:
                    raise NotFound(f"no user {user} here", field="payload.target_user_ids")
                phantoms.append(user)
            else:
                members.append(user)
        if phantoms:
            log.warning("group %s@%s: the home node's %s (seq %s) lists %s, a user this node does not have; "
                        "left out of the group here",
                        op["group_id"], op["home_node_id"], op["op"], op["seq"], ", ".join(phantoms))
        return members

    def create_group(self, owner_user_id: str, name: str, members: Iterable[str] = (), notice: str = "") -> Group:
        """A new group homed on this node, announced (seq 1) to every member's node. Nothing is written before
        the nodes of its members have confirmed them."""
        me = self.node_id
        owner = address(owner_user_id, me)
        members = [require_address(member, "members") for member in members]
        initial = [owner] + [member for member in dict.fromkeys(members) if member != owner]
        unknown = self._pull_for_members(initial[1:])  # not inside the session
        with self.db() as session:
            if session.get(User, owner_user_id) is None:
                raise NotFound(f"no local user {owner_user_id}")
            self._check_new_members(session, initial[1:], field="members", unknown=unknown)
            group_id = new_group_id()
            while session.get(User, group_id) is not None:  # §3: a user's id is never a group's of its node
                group_id = new_group_id()
        draft = Group(group_id=group_id, home_node_id=me, name=name, notice=notice, owner=owner,
                      members=initial, seq=1)
        queued: list[int] = []
        group = self._confirm_and_apply(NewState(self._announcement(draft, "create", owner, initial[1:]), [], None),
                                        queued=queued)
        self._deliver_queued(queued)
        return group

    def group_operation(self, user_id: str, group_address: str, op: str, targets: Iterable[str] = (),
                        info: dict | None = None) -> str:
        """A local user's A.12 operation: applied here when this node is home, else requested from home at
        once. Returns "applied" (here), "unchanged" (here, and it changed nothing: inviting members, renaming
        to the same name), "accepted" (by the home node), "queued" (home unreachable, retried) or
        "queued_behind" (not sent: an earlier request of this node for the group still waits, and this one goes
        after it, §6 "Group requests in order"); a refusal by the home node is raised, as one here is, and the
        request is not kept."""
        me = self.node_id
        operator = address(user_id, me)
        group_id, home = local_part(require_address(group_address, "group_id", "group")), node_of(group_address)
        with self.db() as session:  # only this node knows its users (§8.9): a `join` by a typo made it a member
            if session.get(User, user_id) is None:
                raise NotFound(f"no local user {user_id}")
        targets = list(dict.fromkeys(require_address(target, "target_user_ids") for target in targets))
        info = dict(info or {})
        if home == me:
            queued: list[int] = []
            _, changed = self._operate_at_home(op, group_id, operator, targets, info, queued=queued)
            self._deliver_queued(queued)
            return "applied" if changed else "unchanged"
        row_id, behind = self._request_from_home(me, operator, group_id, home, op, targets, info)
        if behind:
            self.wake.set()  # this process's node loop, if it has one, sends it after the earlier one
            return "queued_behind"
        refusals: dict[int, DomainError] = {}
        outcome = self.deliver([row_id], claimed=True, refusals=refusals)
        refusal = refusals.get(row_id)
        if refusal is not None:  # refused for good, as a single message may be: its error is the user's answer,
            with self._writing, self.db.begin() as session:  # and a failed row would read as delivery trouble
                session.execute(delete(Outbox).where(Outbox.id == row_id))
            raise type(refusal)(f"{refusal.message} (home node {home}); the request was not kept",
                                code=refusal.code, status=refusal.status, field=refusal.field)
        return "accepted" if outcome["delivered"] else "queued"

    def _deliver_queued(self, queued: list[int]) -> None:
        """The announcements an operation at home queued, sent at once; only those: the whole backlog sent here
        made a `group create` wait on every slow peer the outbox held (the node loop delivers the rest). Not
        claimed when queued (a member node's request is left to the loop the same way), so one the loop took
        meanwhile is skipped here."""
        if queued:
            self.deliver(queued)

    def _request_from_home(self, me: str, operator: str, group_id: str, home: str, op: str, targets: list[str],
                           info: dict) -> tuple[int, bool]:
        """The request to the home node queued: its outbox row id, and whether it waits behind an earlier
        request for the group (`_queued_behind`); if not, it is claimed, for the caller to send at once."""
        unknown = self._pull_for_recipient(home)  # not inside the transaction
        members_unknown = self._pull_for_members(targets) if op == "invite" else {}  # the same single pull
        with self.db() as session:
            if op == "invite":  # the home node checks too; this says so at once, even while it is unreachable
                self._check_new_members(session, targets, unknown=members_unknown)
            request = {"op": op, "group_id": group_id, "home_node_id": home, "operator": operator}
            if targets:
                request["target_user_ids"] = targets
            if info:
                request["group_info"] = info
            validation.validate("group_op", request)
            self.peer_entry(home, unknown)
            row_id = self._enqueue(session, home, "group_op", protocol.make_envelope(
                from_node=me, to_node=home, type="group_op", payload=request), claim=True)
            behind = self._queued_behind(session, row_id)
            session.commit()
        return row_id, behind

    def groups(self, user_id: str | None = None) -> list[Group]:
        """The groups this node holds, or those `user_id` (a local user: not_found otherwise) is a member of."""
        with self.db() as session:
            if user_id is not None and session.get(User, user_id) is None:
                raise NotFound(f"no local user {user_id}")
            rows = session.scalars(select(Group).where(Group.dismissed.is_(False))).all()
        if user_id is None:
            return list(rows)
        mine = address(user_id, self.node_id)
        return [group for group in rows if mine in group.members]
