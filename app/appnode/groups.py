"""Groups (A.12): the home node applies each operation and announces the group's whole new state,
numbered by seq; other nodes apply announcements and ask the home node for operations. Only a user's own
node knows whether the user exists, so before a state gives another node new members the home node has that
node confirm it (§8.9), and withdraws a state some nodes took when a later one refuses.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.appnode import protocol
from app.appnode.messages import PATHS, address, local_part
from app.appnode.protocol import Conflict, NotAParticipant, NotFound, PermissionDenied, UnsupportedCapability, node_of
from app.appnode.store import Group, User
from app.appnode.transport import PeerUnreachable
from app.errors import DomainError

# A member confirmation (§8.9) may run inside a request's write transaction: a short answer timeout bounds
# how long one slow member node can hold up this node's other writes.
CONFIRM_TIMEOUT = 5.0
MAX_GROUP_MEMBERS = 3000


class GroupsMixin:
    """Group operations for a `Node`. Relies on the node's `db`, `node_id`, `routes`, `peers`,
    `peer_entry` and `_writing`; on `_require_capability` (ReceivingMixin), and on `_enqueue`, `deliver`,
    `_error_code` and `_peer_error` (OutboxMixin)."""

    def _accept_group_op(self, session: Session, envelope: dict) -> bool:
        self._require_capability("group")
        op = envelope["payload"]
        if "seq" in op:
            self._apply_announcement(session, op)
        else:
            if op["op"] == "create":
                raise Conflict("a group is created by its home node, never requested", field="payload.op")
            self._apply_at_home(session, op["op"], op["group_id"], op["operator"], op.get("target_user_ids", []),
                                op.get("group_info", {}))
            return True
        return False

    def _apply_announcement(self, session: Session, op: dict) -> None:
        key = (op["group_id"], op["home_node_id"])
        group = session.get(Group, key)
        if group is not None and op["seq"] <= group.seq:
            return  # already applied (or older): acknowledged and ignored
        info = op["group_info"]
        me = self.node_id
        if not any(node_of(member) == me for member in info["members"]):
            if group is not None:
                session.delete(group)
            return
        # Only this node knows its users: the home node relies on this refusal (§8.9) to keep phantoms out.
        # Only the users the operation adds (or makes owner) are checked, so a phantom let in before this
        # check existed blocks no later operation.
        if op["op"] in ("create", "invite", "transfer_owner"):
            known = set(group.members) if group is not None and op["op"] == "invite" else set()
            for user in op.get("target_user_ids", []):
                if node_of(user) == me and user not in known and session.get(User, local_part(user)) is None:
                    raise NotFound(f"no user {user} here", field="payload.target_user_ids")
        if group is None:
            group = Group(group_id=op["group_id"], home_node_id=op["home_node_id"], seq=op["seq"],
                          name=info["name"], owner=info["owner"], members=[])
            session.add(group)
        group.name, group.notice, group.owner = info["name"], info.get("notice", ""), info["owner"]
        group.members, group.seq, group.dismissed = list(info["members"]), op["seq"], op["op"] == "dismiss"

    def _apply_at_home(self, session: Session, op: str, group_id: str, operator: str, targets: list[str],
                       info: dict) -> Group:
        """The home node applies an operation and announces the group's whole new state. One that changes
        nothing (inviting members, a member joining, renaming to the same name) takes no seq and is not
        announced (§8.9); kicking someone who is not a member is refused."""
        me = self.node_id
        group = session.get(Group, (group_id, me))
        if group is None:
            raise NotFound(f"no group {group_id}@{me}", field="payload.group_id")
        if group.dismissed:
            raise Conflict("the group is dismissed", field="payload.group_id")
        members, removed, before = list(group.members), [], group.info()
        owner_only = op in ("dismiss", "kick", "update_info", "transfer_owner")
        if owner_only and operator != group.owner:
            raise PermissionDenied(f"only the owner may {op}", field="payload.operator")
        if op not in ("join",) and operator not in members:
            raise NotAParticipant(f"{operator} is not a member", field="payload.operator")
        if op == "dismiss":
            removed, members = members, []
            group.dismissed = True
        elif op == "invite":
            added = [target for target in targets if target not in members]
            self._check_new_members(session, added)
            members += added
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
            self._check_new_members(session, targets[:1])  # never to a member added before this check existed
            group.owner = targets[0]
        if len(members) > MAX_GROUP_MEMBERS:
            raise Conflict(f"a group has at most {MAX_GROUP_MEMBERS} members", field="payload.target_user_ids")
        group.members = members
        if not group.dismissed and group.info() == before:
            return group  # nothing changed: no new state to number or announce
        group.seq += 1
        confirmed = self._confirm_new_members(group, before, op, operator, targets)
        self._announce(session, group, op, operator, targets, removed, confirmed)
        return group

    def _check_new_members(self, session: Session, users: Iterable[str],
                           field: str = "payload.target_user_ids") -> None:
        """A member must be someone: a user of this node, or of a node the routing table lists with `group`
        (§6). A phantom would inflate unread counts, keep envelopes to an unknown node retrying, and could be
        made owner, leaving nobody to manage the group."""
        me = self.node_id
        for user in users:
            node = node_of(user)
            if node == me:
                if session.get(User, local_part(user)) is None:
                    raise NotFound(f"no user {user} on this node", field=field)
                continue
            entry = self.routes.peek(node)
            if entry is None:
                raise NotFound(f"{user}: node {node} is not in the routing table", field=field)
            if "group" not in entry["capabilities"]:
                raise UnsupportedCapability(f"{user}: node {node} does not take part in groups", field=field)

    @staticmethod
    def _announcement(group: Group, op: str, operator: str, targets: list[str]) -> dict:
        announcement = {"op": op, "group_id": group.group_id, "home_node_id": group.home_node_id,
                        "operator": operator, "group_info": group.info(), "seq": group.seq}
        if targets:
            announcement["target_user_ids"] = list(targets)
        protocol.validate("group_op", announcement)
        return announcement

    def _announce(self, session: Session, group: Group, op: str, operator: str, targets: list[str],
                  removed: list[str], confirmed: dict[str, dict] | None = None) -> None:
        """Queue the announcement to every member's node; a node that confirmed it already gets the same
        envelope again (acknowledged as a duplicate), so the outbox still records every announcement."""
        announcement = self._announcement(group, op, operator, targets)
        me, confirmed = self.node_id, confirmed or {}
        for peer in sorted({node_of(user) for user in [*group.members, *removed]} - {me}):
            self._enqueue(session, peer, "group_op", confirmed.get(peer) or protocol.make_envelope(
                from_node=me, to_node=peer, type="group_op", payload=announcement))

    def _confirm_new_members(self, group: Group, before: dict | None, op: str, operator: str,
                             targets: list[str]) -> dict[str, dict]:
        """Only a user's own node knows whether the user exists (§8.9). Before the home node applies a state
        that gives another node new members (or the ownership), it delivers the announcement to that node at
        once; the node refuses it (`not_found`) if it lacks the user. A refusal, or no answer, refuses the
        operation. Returns the confirmed envelopes by node. Nodes are asked one by one: if a later one
        refuses, those that took the state are sent the unchanged one with a higher seq (`_withdraw`)."""
        me = self.node_id
        old_members = set(before["members"]) if before else set()
        gaining = {member for member in group.members if member not in old_members}
        if before is None or group.owner != before["owner"]:
            gaining.add(group.owner)
        peers = sorted({node_of(user) for user in gaining} - {me})
        if not peers:
            return {}
        announcement = self._announcement(group, op, operator, targets)
        confirmed: dict[str, dict] = {}
        for peer in peers:
            envelope = protocol.make_envelope(from_node=me, to_node=peer, type="group_op", payload=announcement)
            refusal = self._deliver_now(peer, envelope, sorted(user for user in gaining if node_of(user) == peer))
            if refusal is None:
                confirmed[peer] = envelope
                continue
            if confirmed:  # undone after the caller's rollback, when the group is as it was (`_withdraw`)
                refusal.withdraw = (group.group_id, group.seq, sorted(confirmed), group.name, group.owner)
            raise refusal
        return confirmed

    def _withdraw_confirmed(self, error: DomainError) -> None:
        """Called with a refusal after the caller's rollback: withdraws a state some nodes confirmed."""
        if getattr(error, "withdraw", None):
            self._withdraw(*error.withdraw)

    def _withdraw(self, group_id: str, seq: int, peers: list[str], name: str, owner: str) -> None:
        """Some nodes took a state that another node then refused: the home node numbers its unchanged state
        (or, for a group never created, a dismissal) above the withdrawn one and announces it to them."""
        me = self.node_id
        with self._writing, self.db() as session:
            group = session.get(Group, (group_id, me))
            if group is None:  # a refused create: the replicas go, the id stays taken
                group = Group(group_id=group_id, home_node_id=me, name=name, notice="", owner=owner, members=[],
                              seq=seq, dismissed=True)
                session.add(group)
                op = "dismiss"
            else:
                op = "update_info"
            group.seq = max(group.seq, seq) + 1
            announcement = self._announcement(group, op, group.owner, [])
            for peer in peers:
                self._enqueue(session, peer, "group_op", protocol.make_envelope(
                    from_node=me, to_node=peer, type="group_op", payload=announcement))
            session.commit()
        self.deliver()  # at once: until then those nodes show members the group never had

    def _deliver_now(self, peer: str, envelope: dict, gaining: list[str]) -> DomainError | None:
        """One synchronous attempt, outside the outbox: None when accepted, else the error to refuse with."""
        entry = self.routes.peek(peer)
        users = ", ".join(gaining)
        if entry is None:
            return NotFound(f"node {peer} is not in the routing table", field="payload.target_user_ids")
        body = json.dumps(envelope, ensure_ascii=False).encode()
        try:
            response = self.peers.post(entry["endpoint"], PATHS["group_op"], body, pin=entry["cert_sha256"],
                                       timeout=CONFIRM_TIMEOUT)
        except PeerUnreachable as failure:  # PeerCertificateMismatch included
            return Conflict(f"cannot confirm members {users}: node {peer} did not answer ({failure}); "
                            "nothing changed, try again later", field="payload.target_user_ids")
        if response.status == 200:
            return None
        code = self._error_code(response.body)
        if response.status == 429 or response.status >= 500 or code in ("unknown_peer", "certificate_mismatch"):
            return Conflict(f"cannot confirm members {users}: node {peer} answered HTTP {response.status} "
                            f"({code}); nothing changed, try again later", field="payload.target_user_ids")
        return self._peer_error(response)

    def create_group(self, owner_user_id: str, name: str, members: Iterable[str] = (), notice: str = "") -> Group:
        """A new group homed on this node, announced (seq 1) to every member's node."""
        me = self.node_id
        owner = address(owner_user_id, me)
        with self.db() as session:
            if session.get(User, owner_user_id) is None:
                raise NotFound(f"no local user {owner_user_id}")
            initial = [owner] + [member for member in dict.fromkeys(members) if member != owner]
            self._check_new_members(session, initial[1:], field="members")
            group = Group(group_id="g" + secrets.token_hex(6), home_node_id=me, name=name, notice=notice,
                          owner=owner, members=initial, seq=1)
            try:
                confirmed = self._confirm_new_members(group, None, "create", owner, initial[1:])
            except DomainError as error:
                session.rollback()
                self._withdraw_confirmed(error)
                raise
            session.add(group)
            self._announce(session, group, "create", owner, initial[1:], [], confirmed)
            session.commit()
        self.deliver()
        return group

    def group_operation(self, user_id: str, group_address: str, op: str, targets: Iterable[str] = (),
                        info: dict | None = None) -> str:
        """A local user's A.12 operation: applied here when this node is home, else requested from home at
        once. Returns "applied" (here), "accepted" (by the home node) or "queued" (home unreachable, retried);
        a refusal by the home node is raised, as one here is."""
        me = self.node_id
        operator = address(user_id, me)
        group_id, home = local_part(group_address), node_of(group_address)
        targets, info = list(dict.fromkeys(targets)), dict(info or {})
        try:
            row_id = self._group_operation(me, operator, group_id, home, op, targets, info)
        except DomainError as error:
            self._withdraw_confirmed(error)
            raise
        if home == me:
            self.deliver()
            return "applied"
        refusals: dict[int, DomainError] = {}
        outcome = self.deliver([row_id], claimed=True, refusals=refusals)
        if row_id in refusals:
            raise refusals[row_id]
        return "accepted" if outcome["delivered"] else "queued"

    def _group_operation(self, me: str, operator: str, group_id: str, home: str, op: str, targets: list[str],
                         info: dict) -> int | None:
        """One transaction of `group_operation`: applied here, or the request queued (its outbox row id)."""
        row_id = None
        with self.db() as session:
            if op == "invite":  # the home node checks too; this says so at once, even while it is unreachable
                self._check_new_members(session, targets)
            if home == me:
                self._apply_at_home(session, op, group_id, operator, targets, info)
            else:
                request = {"op": op, "group_id": group_id, "home_node_id": home, "operator": operator}
                if targets:
                    request["target_user_ids"] = targets
                if info:
                    request["group_info"] = info
                protocol.validate("group_op", request)
                self.peer_entry(home)
                row_id = self._enqueue(session, home, "group_op", protocol.make_envelope(
                    from_node=me, to_node=home, type="group_op", payload=request), claim=True)
            session.commit()
        return row_id

    def groups(self, user_id: str | None = None) -> list[Group]:
        with self.db() as session:
            rows = session.scalars(select(Group).where(Group.dismissed.is_(False))).all()
        if user_id is None:
            return list(rows)
        mine = address(user_id, self.node_id)
        return [group for group in rows if mine in group.members]
