"""Groups (A.12) on their home node: the state machine. The home node applies each operation to its record,
numbers the group's whole new state by seq and announces it to every member's node.

A state that gives another node new members must first be confirmed by that node (group_confirmation.py), and
a confirmation is a round trip to another node, so it never runs inside a write transaction: the home node
computes the new state and reserves its seq in one short transaction, asks the nodes, and applies the state
in a second short transaction only if the group still has the reserved seq (§10).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.appnode import protocol, validation
from app.appnode.messages import local_part
from app.appnode.protocol import (
    Conflict,
    NotAParticipant,
    NotFound,
    PermissionDenied,
    UnsupportedCapability,
    node_of,
)
from app.appnode.store import Group, User, utcnow

MAX_GROUP_MEMBERS = 3000
# The operations whose request names users (§8.9); any other's `target_user_ids` is ignored, and its announcement
# names nobody.
NAMING_USERS = ("invite", "kick", "transfer_owner")


def joined_now() -> str:
    """When a member this node learns of now joins (`Group.set_members`), stored as message send times are:
    what a member sees, and is counted for, starts there (§8.9)."""
    return protocol.sortable_time(protocol.format_timestamp(utcnow()))


@dataclass(frozen=True)
class NewState:
    """A state the home node computed for an operation: the announcement carrying it (whole, with its seq),
    the users it removed (their nodes are told too) and the state it was computed from (None for a create)."""

    announcement: dict
    removed: list[str]
    before: dict | None

    @property
    def group_key(self) -> tuple[str, str]:
        return self.announcement["group_id"], self.announcement["home_node_id"]

    @property
    def seq(self) -> int:
        return self.announcement["seq"]

    def gaining(self) -> list[str]:
        """Who becomes a member, or the owner, in this state: what their nodes must confirm (§8.9)."""
        info = self.announcement["group_info"]
        old_members = set(self.before["members"]) if self.before else set()
        gaining = {member for member in info["members"] if member not in old_members}
        if self.before is None or info["owner"] != self.before["owner"]:
            gaining.add(info["owner"])
        return sorted(gaining)


class GroupHomeMixin:
    """The home node's side of a `Node`'s groups. Relies on the node's `db`, `node_id`, `config`, `routes` and
    `_writing`; on `_pull_for_recipient` (RouteTableMixin), on `_enqueue` (OutboxMixin), and on
    `_confirm_and_apply` and `_nodes_to_confirm` (GroupConfirmationMixin)."""

    def _operate_at_home(self, op: str, group_id: str, operator: str, targets: list[str], info: dict, *,
                         first_time: Callable[[Session], bool] | None = None,
                         queued: list[int] | None = None) -> tuple[Group | None, bool]:
        """An operation on a group homed here, by a local user or a member node's request. When its new state
        gives no other node new members, one transaction applies and announces it. Otherwise a first one
        computes the state and reserves its seq, the nodes confirm it with no transaction open, and a second
        one applies it (`_apply_confirmed`). Returns the group and whether the operation changed it (a user
        is told "nothing changed"). `first_time` writes a request's dedup record in each transaction: None is
        returned, and nothing applied, for a request already accepted. The members an invite or a transfer
        names are looked up in the routing table, pulled first if one's node is missing (`_pull_for_members`).
        `queued` collects the ids of the outbox rows it queued (`_announce`), for a caller that sends them.
        A quit, join, update_info or dismiss names nobody: `target_user_ids` it carries (the schema lets any
        request carry them) are dropped, not copied into the announcement to every member node."""
        if op not in NAMING_USERS:
            targets = []
        named = {"invite": targets, "transfer_owner": targets[:1]}.get(op, [])
        unknown = self._pull_for_members(named)  # before the transaction: it may wait on the network
        with self._writing, self.db() as session:
            if first_time is not None and not first_time(session):
                return None, False
            group, state = self._apply_at_home(session, op, group_id, operator, targets, info, unknown)
            if state is None or not self._nodes_to_confirm(state):
                if state is not None:
                    self._announce(session, state, queued=queued)
                session.commit()
                return group, state is not None
            # Undo the computed state (and the dedup record), keeping only its seq, taken so that no other
            # state of this group is offered to a node under the same seq while this one is being confirmed.
            session.rollback()
            group = session.get(Group, state.group_key)
            if group is None or group.seq != state.seq - 1:  # changed meanwhile by another process
                raise self._changed(group_id)
            group.seq = state.seq
            session.commit()
        group = self._confirm_and_apply(state, first_time, queued)
        return group, group is not None

    def _apply_at_home(self, session: Session, op: str, group_id: str, operator: str, targets: list[str],
                       info: dict, unknown: Mapping[str, str]) -> tuple[Group, NewState | None]:
        """The home node applies an operation to its record in `session` and returns the new state to
        announce. One that changes nothing (inviting members, a member joining, renaming to the same name)
        takes no seq and is not announced (None, §8.9); kicking someone who is not a member is refused, and so
        is a non-member's `join` unless this node opens its groups (`NodeConfig.open_groups`).
        `unknown` is `_pull_for_members`' account of the targets' nodes still missing from the table."""
        me = self.node_id
        group = session.get(Group, (group_id, me))
        if group is None:
            raise NotFound(f"no group {group_id}@{me}", field="payload.group_id")
        if group.dismissed:
            raise Conflict("the group is dismissed", field="payload.group_id")
        members, removed, before, named = list(group.members), [], group.info(), targets
        owner_only = op in ("dismiss", "kick", "update_info", "transfer_owner")
        if owner_only and operator != group.owner:
            raise PermissionDenied(f"only the owner may {op}", field="payload.operator")
        if op == "join" and operator not in members and not self.config.open_groups:
            raise PermissionDenied(f"the group is joined by invitation only: ask a member to invite {operator}",
                                   field="payload.operator")
        if op != "join" and operator not in members:
            raise NotAParticipant(f"{operator} is not a member", field="payload.operator")
        if op == "dismiss":
            removed, members = members, []
            group.dismissed = True
        elif op == "invite":
            added = [target for target in targets if target not in members]
            self._check_new_members(session, added, unknown=unknown)
            members += added
            named = added  # the announcement names whom it adds, not members named again (§8.9)
        elif op == "join":
            if operator not in members:
                members.append(operator)
        elif op == "quit":
            if operator == group.owner:
                raise Conflict("the owner cannot quit: transfer the group first", field="payload.operator")
            members.remove(operator)
            removed = [operator]
        elif op == "kick":
            if group.owner in targets:
                raise Conflict("the owner cannot be kicked", field="payload.target_user_ids")
            strangers = [target for target in targets if target not in members]
            if strangers:
                raise NotAParticipant(f"not a member: {', '.join(strangers)}", field="payload.target_user_ids")
            removed = list(targets)
            members = [member for member in members if member not in removed]
        elif op == "update_info":
            group.name = info.get("name", group.name)
            group.notice = info.get("notice", group.notice)
        elif op == "transfer_owner":
            if targets[0] not in members:
                raise NotAParticipant(f"{targets[0]} is not a member", field="payload.target_user_ids")
            # never to a member added before this check existed
            self._check_new_members(session, targets[:1], unknown=unknown)
            group.owner = targets[0]
        if len(members) > MAX_GROUP_MEMBERS:
            raise Conflict(f"a group has at most {MAX_GROUP_MEMBERS} members", field="payload.target_user_ids")
        group.set_members(members, joined_now())
        if not group.dismissed and group.info() == before:
            return group, None  # nothing changed: no new state to number or announce
        group.seq += 1
        return group, NewState(self._announcement(group, op, operator, named), removed, before)

    def _apply_confirmed(self, session: Session, state: NewState) -> Group:
        """Writes a confirmed state to the home node's record, if nothing changed since it was computed: every
        change to a group homed here moves its seq, so the seq the state reserved says so."""
        group = session.get(Group, state.group_key)
        if state.before is None:  # a create: the id is new (`new_group_id`)
            if group is not None:
                raise Conflict(f"group id {state.group_key[0]} is taken", field="payload.group_id")
            group = Group(group_id=state.group_key[0], home_node_id=state.group_key[1], seq=state.seq)
            session.add(group)
        elif group is None or group.seq != state.seq or group.dismissed:
            raise self._changed(state.group_key[0])
        info = state.announcement["group_info"]
        group.name, group.notice, group.owner = info["name"], info.get("notice", ""), info["owner"]
        group.set_members(info["members"], None if state.before is None else joined_now())  # a create: none
        group.dismissed = False
        return group

    @staticmethod
    def _changed(group_id: str) -> Conflict:
        return Conflict(f"group {group_id} changed while its new members were being confirmed; nothing changed, "
                        "try again", field="payload.group_id")

    def _pull_for_members(self, users: Iterable[str]) -> dict[str, str]:
        """§2.3 for new members: a node approved or resumed since the last pull is missing from the table until
        the next one, so before `_check_new_members` refuses a member on it the table is pulled, once however
        many nodes are missing (`_pull_for_recipient`: at most once per REFRESH_INTERVAL). Waits on the network:
        call it before a session opens. Returns, for each node still missing, what to tell the user about the
        table (`_check_new_members`' `unknown`)."""
        me, unknown = self.node_id, {}
        for node in sorted({node_of(user) for user in users} - {me}):
            account = self._pull_for_recipient(node)
            if account is not None:
                unknown[node] = account
        return unknown

    def _check_new_members(self, session: Session, users: Iterable[str], field: str = "payload.target_user_ids",
                           unknown: Mapping[str, str] | None = None) -> None:
        """A member must be someone: a user of this node, or of a node the routing table lists with `group`
        (§6). A phantom would inflate unread counts, keep envelopes to an unknown node retrying, and could be
        made owner, leaving nobody to manage the group. Only looks at the table: `_pull_for_members` pulls it
        first, before the session opened, and `unknown` is its account of the nodes still missing."""
        me = self.node_id
        for user in users:
            node = node_of(user)
            if node == me:
                if session.get(User, local_part(user)) is None:
                    raise NotFound(f"no user {user} on this node", field=field)
                continue
            entry = self.routes.peek(node)
            if entry is None:
                raise NotFound(f"{user}: node {node} is not in the routing table{(unknown or {}).get(node, '')}",
                               field=field)
            if "group" not in entry["capabilities"]:
                raise UnsupportedCapability(f"{user}: node {node} does not take part in groups", field=field)

    @staticmethod
    def _announcement(group: Group, op: str, operator: str, targets: list[str]) -> dict:
        announcement = {"op": op, "group_id": group.group_id, "home_node_id": group.home_node_id,
                        "operator": operator, "group_info": group.info(), "seq": group.seq}
        if targets:
            announcement["target_user_ids"] = list(targets)
        validation.validate("group_op", announcement)
        return announcement

    def _announce(self, session: Session, state: NewState, confirmed: dict[str, dict] | None = None,
                  queued: list[int] | None = None) -> None:
        """Queue the announcement to every member's node; a node that confirmed it already gets the same
        envelope again (acknowledged as a duplicate), so the outbox still records every announcement. The rows'
        ids go to `queued` when given."""
        me, confirmed = self.node_id, confirmed or {}
        users = [*state.announcement["group_info"]["members"], *state.removed]
        for peer in sorted({node_of(user) for user in users} - {me}):
            row_id = self._enqueue(session, peer, "group_op", confirmed.get(peer) or protocol.make_envelope(
                from_node=me, to_node=peer, type="group_op", payload=state.announcement))
            if queued is not None:
                queued.append(row_id)
