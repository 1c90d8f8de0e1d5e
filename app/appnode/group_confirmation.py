"""Groups (A.12): only a user's own node knows whether the user exists (§8.9), so before the home node applies
a state that gives another node new members (or the ownership), that node must confirm it; a refusal, or no
answer, refuses the operation, and the nodes that took the state are sent the unchanged one (`_withdraw`).
Kept apart from group_home.py, whose state machine calls these between its two short transactions.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from sqlalchemy.orm import Session

from app.appnode import protocol
from app.appnode.group_home import NewState
from app.appnode.messages import PATHS
from app.appnode.protocol import Conflict, NotFound, node_of
from app.appnode.store import Group
from app.appnode.transport import PeerUnreachable
from app.errors import DomainError

# Each node gaining members is asked in turn while the operator (or, for a member node's request, that node,
# which waits up to 30 s for the answer) waits: a short answer timeout keeps that wait bounded.
CONFIRM_TIMEOUT = 5.0


class GroupConfirmationMixin:
    """Confirmations for a `Node`'s groups. Relies on the node's `db`, `node_id`, `routes`, `peers` and
    `_writing`; on `_pull_for_recipient` (RouteTableMixin), on `_enqueue`, `deliver`, `_error_code` and
    `_peer_error` (OutboxMixin), and on `_apply_confirmed`, `_announce` and `_announcement` (GroupHomeMixin)."""

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
        """One synchronous attempt, outside the outbox: None when accepted, else the error to refuse with. A node
        missing from the table is pulled for first (`_pull_for_recipient`: no transaction is open here)."""
        unknown = self._pull_for_recipient(peer)
        entry = self.routes.peek(peer)
        users = ", ".join(gaining)
        if entry is None:
            return NotFound(f"node {peer} is not in the routing table{unknown or ''}", field="payload.target_user_ids")
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
