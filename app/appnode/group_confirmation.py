"""Groups (A.12): only a user's own node knows whether the user exists (§8.9), so before the home node applies
a state that gives another node new members (or the ownership), that node must confirm it; a refusal, or no
answer, refuses the operation, and the nodes that took the state, or may have (no answer), are sent the
unchanged one (`_withdraw`).
Kept apart from group_home.py, whose state machine calls these between its two short transactions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from sqlalchemy.orm import Session

from app.appnode import protocol
from app.appnode.group_home import NewState
from app.appnode.messages import PATHS
from app.appnode.protocol import Conflict, NotFound, node_of
from app.appnode.store import Group
from app.appnode.transport import PeerCertificateMismatch, PeerNotReached, PeerUnreachable
from app.errors import DomainError

# Each node gaining members is asked in turn while the operator (or, for a member node's request, that node,
# which waits up to 30 s for the answer) waits: a short answer timeout keeps that wait bounded.
CONFIRM_TIMEOUT = 5.0


class GroupConfirmationMixin:
    """Confirmations for a `Node`'s groups. Relies on the node's `db`, `node_id`, `routes`, `peers`, `wake` and
    `_writing`; on `_pull_for_recipient` (RouteTableMixin), on `_enqueue`, `deliver`, `_error_code`,
    `_not_acknowledged` and `_peer_error` (OutboxMixin), and on `_apply_confirmed`, `_announce` and `_announcement`
    (GroupHomeMixin)."""

    def _confirm_and_apply(self, state: NewState, first_time: Callable[[Session], bool] | None = None,
                           queued: list[int] | None = None) -> Group | None:
        """Has the nodes gaining members confirm `state`, with no transaction open, then applies it in a short
        one. Refused if a node refuses, or if the group no longer has the seq the state was numbered after
        (changed by another operation meanwhile: `conflict`, try again); the nodes that took the state, or may
        have, are then told the unchanged one (`_withdraw`). None for a request already accepted meanwhile,
        withdrawn too. `queued` collects the ids of the announcements' outbox rows."""
        confirmed: dict[str, dict] = {}
        uncertain: set[str] = set()
        try:
            self._confirm_new_members(state, confirmed, uncertain)
            with self._writing, self.db() as session:
                repeat = first_time is not None and not first_time(session)
                if not repeat:
                    group = self._apply_confirmed(session, state)
                    self._announce(session, state, confirmed, queued)
                    session.commit()
        except DomainError:
            self._withdraw(state, sorted(confirmed), sorted(uncertain))
            raise
        if repeat:
            self._withdraw(state, sorted(confirmed))
            return None
        return group

    def _nodes_to_confirm(self, state: NewState) -> list[str]:
        return sorted({node_of(user) for user in state.gaining()} - {self.node_id})

    def _confirm_new_members(self, state: NewState, confirmed: dict[str, dict], uncertain: set[str]) -> None:
        """Only a user's own node knows whether the user exists (§8.9). Before the home node applies a state
        that gives another node new members (or the ownership), it delivers the announcement to that node at
        once; the node refuses it (`not_found`) if it lacks the user. A refusal, or no answer, refuses the
        operation. Nodes are asked one by one; `confirmed` collects the envelope each accepted, so that the
        caller can withdraw the state from them if a later one refuses, and `uncertain` the node whose answer
        is unknown (`_deliver_now`), to withdraw it from that one too."""
        me, gaining = self.node_id, state.gaining()
        for peer in self._nodes_to_confirm(state):
            envelope = protocol.make_envelope(from_node=me, to_node=peer, type="group_op",
                                              payload=state.announcement)
            refusal, unknown = self._deliver_now(peer, envelope, [user for user in gaining if node_of(user) == peer])
            if refusal is not None:
                if unknown:
                    uncertain.add(peer)
                raise refusal
            confirmed[peer] = envelope

    def _withdraw(self, state: NewState, peers: Sequence[str], uncertain: Sequence[str] = ()) -> None:
        """`state` was refused after it was numbered. Nodes that took it (`peers`), or whose answer is unknown
        (`uncertain`: one that answers late may have taken it), are sent the home node's unchanged state (or, for
        a group never created, a dismissal) numbered above it, through the outbox. If no node took it or may
        have, the seq it reserved is given back, unless another operation has numbered a state after it
        meanwhile; otherwise it never is: a node may hold the refused state under that seq, and would ignore
        another state numbered so (§8.9). Sent at once to `peers`, which answered a moment ago; an uncertain
        node is left to the node loop, so that the operator does not wait on it again."""
        me = self.node_id
        with self._writing, self.db() as session:
            group = session.get(Group, state.group_key)
            if not peers and not uncertain:
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
            now = [self._enqueue(session, peer, "group_op", protocol.make_envelope(
                from_node=me, to_node=peer, type="group_op", payload=announcement), claim=True) for peer in peers]
            for peer in uncertain:
                self._enqueue(session, peer, "group_op", protocol.make_envelope(
                    from_node=me, to_node=peer, type="group_op", payload=announcement))
            session.commit()
        if now:
            self.deliver(now, claimed=True)  # at once: until then those nodes show members the group never had
        if uncertain:
            self.wake.set()

    def _deliver_now(self, peer: str, envelope: dict, gaining: list[str]) -> tuple[DomainError | None, bool]:
        """One synchronous attempt, outside the outbox: (None, False) when accepted, else the error to refuse
        with and whether the node may have taken the state all the same. It may have when its answer is unknown:
        a timeout or a connection broken once the request could have been sent, or a 5xx (a 500 can follow
        the commit, and a gateway's 502 or 504 says nothing of the node behind it). It has not when no
        connection was made (PeerNotReached) or the certificate did not match (nothing was sent), nor when it
        refused the envelope before handling it (429, `too_many_connections`, `unknown_peer`, `certificate_mismatch`) or
        for good (any other 4xx). A node missing from the table is pulled for first (`_pull_for_recipient`:
        no transaction is open here)."""
        unknown = self._pull_for_recipient(peer)
        entry = self.routes.peek(peer)
        users = ", ".join(gaining)
        if entry is None:
            return NotFound(f"node {peer} is not in the routing table{unknown or ''}",
                            field="payload.target_user_ids"), False
        body = json.dumps(envelope, ensure_ascii=False).encode()
        try:
            response = self.peers.post(entry["endpoint"], PATHS["group_op"], body, pin=entry["cert_sha256"],
                                       timeout=CONFIRM_TIMEOUT)
        except PeerUnreachable as failure:
            return Conflict(f"cannot confirm members {users}: node {peer} did not answer ({failure}); "
                            "nothing changed, try again later", field="payload.target_user_ids"), _maybe_sent(failure)
        if response.status == 200:
            if (unacknowledged := self._not_acknowledged(response.body, envelope["message_id"])) is None:
                return None, False
            # §5.2: no acknowledgement, nothing known of the node behind (a proxy's page): may have taken it.
            return Conflict(f"cannot confirm members {users}: node {peer} answered HTTP 200 without an "
                            f"acknowledgement ({unacknowledged}); nothing changed, try again later",
                            field="payload.target_user_ids"), True
        code = self._error_code(response.body)
        if response.status == 429 or response.status >= 500 or code in ("unknown_peer", "certificate_mismatch"):
            return Conflict(f"cannot confirm members {users}: node {peer} answered HTTP {response.status} "
                            f"({code}); nothing changed, try again later", field="payload.target_user_ids"), (
                response.status >= 500 and code != "too_many_connections")
        return self._peer_error(response), False


def _maybe_sent(failure: PeerUnreachable) -> bool:
    """Whether the request may have reached the node before `failure`: not when the certificate did not match
    (checked before sending) or no connection was made, else it may."""
    return not isinstance(failure, PeerCertificateMismatch | PeerNotReached)
