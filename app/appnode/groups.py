"""Groups (A.12): the home node applies each operation and announces the group's whole new state,
numbered by seq; other nodes apply announcements and ask the home node for operations. Only a user's own
node knows whether the user exists, so before a state gives another node new members the home node has that
node confirm it (§8.9), and withdraws a state some nodes took when a later one refuses.

A confirmation is a round trip to another node, so it never runs inside a write transaction: the home node
computes the new state and reserves its seq in one short transaction, asks the nodes, and applies the state
in a second short transaction only if the group still has the reserved seq (§10).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.appnode import protocol
from app.appnode.messages import PATHS, Reply, address, local_part
from app.appnode.protocol import (
    Conflict,
    NotAParticipant,
    NotFound,
    PermissionDenied,
    UnsupportedCapability,
    node_of,
    require_address,
)
from app.appnode.store import Group, Outbox, User, insert_received, raw_cursor
from app.appnode.transport import PeerUnreachable
from app.errors import DomainError

# Each node gaining members is asked in turn while the operator (or, for a member node's request, that node,
# which waits up to 30 s for the answer) waits: a short answer timeout keeps that wait bounded.
CONFIRM_TIMEOUT = 5.0
MAX_GROUP_MEMBERS = 3000


def new_group_id() -> str:
    """A group's id, random: a refused create's dismissal (`_withdraw`) may still be on its way to a node when
    the user tries again, and must not meet a new group of the same id there."""
    return "g" + secrets.token_hex(6)


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


class GroupsMixin:
    """Group operations for a `Node`. Relies on the node's `db`, `node_id`, `routes`, `peers`, `wake`,
    `peer_entry` and `_writing`; on `_require_capability` and `_duplicate` (ReceivingMixin), and on `_enqueue`,
    `deliver`, `_error_code` and `_peer_error` (OutboxMixin)."""

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

    def _operate_at_home(self, op: str, group_id: str, operator: str, targets: list[str], info: dict, *,
                         first_time: Callable[[Session], bool] | None = None) -> tuple[Group | None, bool]:
        """An operation on a group homed here, by a local user or a member node's request. When its new state
        gives no other node new members, one transaction applies and announces it. Otherwise a first one
        computes the state and reserves its seq, the nodes confirm it with no transaction open, and a second
        one applies it (`_apply_confirmed`). Returns the group and whether the operation changed it (a user
        is told "nothing changed"). `first_time` writes a request's dedup record in each transaction: None is
        returned, and nothing applied, for a request already accepted."""
        with self._writing, self.db() as session:
            if first_time is not None and not first_time(session):
                return None, False
            group, state = self._apply_at_home(session, op, group_id, operator, targets, info)
            if state is None or not self._nodes_to_confirm(state):
                if state is not None:
                    self._announce(session, state)
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
        group = self._confirm_and_apply(state, first_time)
        return group, group is not None

    def _apply_at_home(self, session: Session, op: str, group_id: str, operator: str, targets: list[str],
                       info: dict) -> tuple[Group, NewState | None]:
        """The home node applies an operation to its record in `session` and returns the new state to
        announce. One that changes nothing (inviting members, a member joining, renaming to the same name)
        takes no seq and is not announced (None, §8.9); kicking someone who is not a member is refused."""
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
            return group, None  # nothing changed: no new state to number or announce
        group.seq += 1
        return group, NewState(self._announcement(group, op, operator, targets), removed, before)

    def _confirm_and_apply(self, state: NewState, first_time: Callable[[Session], bool] | None = None) -> Group | None:
        """Has the nodes gaining members confirm `state`, with no transaction open, then applies it in a short
        one. Refused if a node refuses, or if the group no longer has the seq the state was numbered after
        (changed by another operation meanwhile: `conflict`, try again); the nodes that took the state are then
        told the unchanged one (`_withdraw`). None for a request already accepted meanwhile, withdrawn too."""
        confirmed: dict[str, dict] = {}
        try:
            self._confirm_new_members(state, confirmed)
            with self._writing, self.db() as session:
                repeat = first_time is not None and not first_time(session)
                if not repeat:
                    group = self._apply_confirmed(session, state)
                    self._announce(session, state, confirmed)
                    session.commit()
        except DomainError:
            self._withdraw(state, sorted(confirmed))
            raise
        if repeat:
            self._withdraw(state, sorted(confirmed))
            return None
        return group

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
        group.members, group.dismissed = list(info["members"]), False
        return group

    @staticmethod
    def _changed(group_id: str) -> Conflict:
        return Conflict(f"group {group_id} changed while its new members were being confirmed; nothing changed, "
                        "try again", field="payload.group_id")

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

    def _announce(self, session: Session, state: NewState, confirmed: dict[str, dict] | None = None) -> None:
        """Queue the announcement to every member's node; a node that confirmed it already gets the same
        envelope again (acknowledged as a duplicate), so the outbox still records every announcement."""
        me, confirmed = self.node_id, confirmed or {}
        users = [*state.announcement["group_info"]["members"], *state.removed]
        for peer in sorted({node_of(user) for user in users} - {me}):
            self._enqueue(session, peer, "group_op", confirmed.get(peer) or protocol.make_envelope(
                from_node=me, to_node=peer, type="group_op", payload=state.announcement))

    def _nodes_to_confirm(self, state: NewState) -> list[str]:
        return sorted({node_of(user) for user in state.gaining()} - {self.node_id})

    def _confirm_new_members(self, state: NewState, confirmed: dict[str, dict]) -> None:
        """Only a user's own node knows whether the user exists (§8.9). Before the home node applies a state
        that gives another node new members (or the ownership), it delivers the announcement to that node at
        once; the node refuses it (`not_found`) if it lacks the user. A refusal, or no answer, refuses the
        operation. Nodes are asked one by one; `confirmed` collects the envelope each accepted, so that the
        caller can withdraw the state from them if a later one refuses."""
        me, gaining = self.node_id, state.gaining()
        for peer in self._nodes_to_confirm(state):
            envelope = protocol.make_envelope(from_node=me, to_node=peer, type="group_op",
                                              payload=state.announcement)
            refusal = self._deliver_now(peer, envelope, [user for user in gaining if node_of(user) == peer])
            if refusal is not None:
                raise refusal
            confirmed[peer] = envelope

    def _withdraw(self, state: NewState, peers: list[str]) -> None:
        """`state` was refused after it was numbered. Nodes that took it (`peers`) are sent the home node's
        unchanged state (or, for a group never created, a dismissal) numbered above it. If none did, the seq
        it reserved is given back, unless another operation has numbered a state after it meanwhile."""
        me = self.node_id
        with self._writing, self.db() as session:
            group = session.get(Group, state.group_key)
            if not peers:
                if group is not None and group.seq == state.seq and state.before is not None:
                    group.seq -= 1
                    session.commit()
                return
            if state.before is None:  # a refused create: the replicas go, and nothing of it is kept here
                info = state.announcement["group_info"]
                gone = Group(group_id=state.group_key[0], home_node_id=me, name=info["name"], notice="",
                             owner=info["owner"], members=[], seq=state.seq + 1)
                announcement = self._announcement(gone, "dismiss", gone.owner, [])
            else:
                group.seq = max(group.seq, state.seq) + 1
                announcement = self._announcement(group, "update_info", group.owner, [])
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
        """A new group homed on this node, announced (seq 1) to every member's node. Nothing is written before
        the nodes of its members have confirmed them."""
        me = self.node_id
        owner = address(owner_user_id, me)
        members = [require_address(member, "members") for member in members]
        with self.db() as session:
            if session.get(User, owner_user_id) is None:
                raise NotFound(f"no local user {owner_user_id}")
            initial = [owner] + [member for member in dict.fromkeys(members) if member != owner]
            self._check_new_members(session, initial[1:], field="members")
        draft = Group(group_id=new_group_id(), home_node_id=me, name=name, notice=notice, owner=owner,
                      members=initial, seq=1)
        group = self._confirm_and_apply(NewState(self._announcement(draft, "create", owner, initial[1:]), [], None))
        self.deliver()
        return group

    def group_operation(self, user_id: str, group_address: str, op: str, targets: Iterable[str] = (),
                        info: dict | None = None) -> str:
        """A local user's A.12 operation: applied here when this node is home, else requested from home at
        once. Returns "applied" (here), "unchanged" (here, and it changed nothing: inviting members, renaming
        to the same name), "accepted" (by the home node) or "queued" (home unreachable, retried); a refusal by
        the home node is raised, as one here is, and the request is not kept."""
        me = self.node_id
        operator = address(user_id, me)
        group_id, home = local_part(require_address(group_address, "group_id", "group")), node_of(group_address)
        targets = list(dict.fromkeys(require_address(target, "target_user_ids") for target in targets))
        info = dict(info or {})
        if home == me:
            _, changed = self._operate_at_home(op, group_id, operator, targets, info)
            self.deliver()
            return "applied" if changed else "unchanged"
        row_id = self._request_from_home(me, operator, group_id, home, op, targets, info)
        refusals: dict[int, DomainError] = {}
        outcome = self.deliver([row_id], claimed=True, refusals=refusals)
        refusal = refusals.get(row_id)
        if refusal is not None:  # refused for good, as a single message may be: its error is the user's answer,
            with self._writing, self.db.begin() as session:  # and a failed row would read as delivery trouble
                session.execute(delete(Outbox).where(Outbox.id == row_id))
            raise type(refusal)(f"{refusal.message} (home node {home}); the request was not kept",
                                code=refusal.code, status=refusal.status, field=refusal.field)
        return "accepted" if outcome["delivered"] else "queued"

    def _request_from_home(self, me: str, operator: str, group_id: str, home: str, op: str, targets: list[str],
                           info: dict) -> int:
        """The request to the home node queued (and claimed, for the caller to send at once): its outbox row id."""
        with self.db() as session:
            if op == "invite":  # the home node checks too; this says so at once, even while it is unreachable
                self._check_new_members(session, targets)
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
        """The groups this node holds, or those `user_id` (a local user: not_found otherwise) is a member of."""
        with self.db() as session:
            if user_id is not None and session.get(User, user_id) is None:
                raise NotFound(f"no local user {user_id}")
            rows = session.scalars(select(Group).where(Group.dismissed.is_(False))).all()
        if user_id is None:
            return list(rows)
        mine = address(user_id, self.node_id)
        return [group for group in rows if mine in group.members]
