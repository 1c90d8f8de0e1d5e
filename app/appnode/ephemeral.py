"""Ephemeral state (A.13 read states, A.15 presence): newest-wins records, queued for the nodes concerned
and sent as one batch per peer. They bypass the outbox: a batch that fails EPHEMERAL_ATTEMPTS times or for
longer than EPHEMERAL_WINDOW is dropped, since the next change supersedes it (docs/protocol.md §6). The
participant check (`_require_participant`, and `_require_reader` for one message) stays with the read states
it was written for; files and reading use it too. What one peer keeps here is bounded
(`NodeConfig.max_read_states_per_peer`, `max_presence_per_peer`).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import Text, delete, func, or_, select, type_coerce, update
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.appnode import protocol, validation
from app.appnode.messages import PATHS, address, local_part
from app.appnode.protocol import NotAParticipant, NotFound, QuotaExceeded, node_of
from app.appnode.store import Group, Message, PendingEphemeral, Presence, ReadState, User, utcnow
from app.appnode.transport import PeerUnreachable

log = logging.getLogger("mpim.appnode")

EPHEMERAL_ATTEMPTS, EPHEMERAL_WINDOW = 3, timedelta(seconds=60)


def _newer(given: str, kept: str) -> bool:
    """`given` is a later time than `kept`. Compared as times: as strings, a peer's "…:00Z" (0 to 6 fractional
    digits are allowed, §3) sorted after "…:00.500Z", and "…:00.1Z" after "…:00.12Z"."""
    return protocol.parse_timestamp(given, "updated_at") > protocol.parse_timestamp(kept, "updated_at")


class EphemeralMixin:
    """Read states and presence for a `Node`. Relies on the node's `db`, `node_id`, `routes` and `peers`,
    on `_require_capability` and `_member_nodes` (ReceivingMixin), on `_not_acknowledged` (OutboxMixin)."""

    def _accept_ephemeral(self, session: Session, envelope: dict) -> None:
        batch, from_node, me = envelope["payload"], envelope["from_node"], self.node_id
        if batch.get("read_states"):
            self._require_capability("read_count")
        if batch.get("presence"):
            self._require_capability("presence")
        added = False
        for state in batch.get("read_states", ()):
            conversation, group = state["conversation_id"], None
            if conversation.startswith("g:") and node_of(conversation) == me:  # a group of this home node
                group = session.get(Group, (local_part(conversation[2:]), me))
                if group is None or group.dismissed or state["user_id"] not in group.members:
                    # Read before leaving (quit, kick, dismiss) and sent after: nothing to count any more. Only
                    # this state is passed over; refusing the batch lost everyone else's in it, and presence.
                    log.info("read state of %s in %s ignored: not a member", state["user_id"], conversation)
                    continue
            kept = self._keep_read_state(session, state, from_node)
            added |= kept == "new"
            if kept and group is not None:
                # Relayed only when kept as the newest: an older state arriving second (a retried batch) replaced
                # the newer one still waiting to go out, and the member nodes disagreed on what the user read.
                for peer in self._member_nodes(group):
                    if peer not in (me, from_node):
                        self._queue_ephemeral(session, peer, "read", state)
        if added:
            self._check_read_state_cap(session, from_node)
        added = False
        for item in batch.get("presence", {}).get("items", ()):
            row = session.get(Presence, item["user_id"])
            if row is None:
                session.add(Presence(**item, peer_node=from_node))
                added = True
            elif _newer(item["updated_at"], row.updated_at):
                row.status, row.client_type = item["status"], item["client_type"]
                row.last_active, row.updated_at = item["last_active"], item["updated_at"]
        if added:
            self._evict_oldest_presence(session, from_node)

    def _check_read_state_cap(self, session: Session, peer: str) -> None:
        """Refuse the batch (quota_exceeded, nothing of it kept) once it takes the peer past its cap of read
        states here. Refused rather than evicted: a read state is what "read by 3" and a user's unread count
        stand on, and dropping the oldest would show long-read conversations as unread again, silently. Updates
        of the states the peer already has here still pass, so its users' reading keeps counting."""
        cap = self.config.max_read_states_per_peer
        held = session.scalar(select(func.count()).select_from(ReadState).where(ReadState.peer_node == peer))
        if held > cap:
            log.warning("read states from %s refused: %d would be kept, over the cap of %d per peer", peer, held,
                        cap)
            raise QuotaExceeded(f"node {peer} has the {cap} read states this node keeps for one peer; only "
                                "updates of those are taken", field="payload.read_states")

    def _evict_oldest_presence(self, session: Session, peer: str) -> None:
        """Past the peer's cap, its entries with the oldest `updated_at` go. Evicted rather than refused, as
        users expect of presence: it says what a user is doing now, an entry over 10 minutes old shows as offline
        anyway, and the peer repeats every online user every 5 minutes, so what goes is what is missed least and
        comes back if it was wrong; refusing would keep the stale entries and lose the fresh. A peer's made-up
        users displace only its own. Ordered by the stored text, which peers write with 0 to 6 fractional digits:
        off at most within one second, which does not matter here."""
        cap = self.config.max_presence_per_peer
        held = session.scalar(select(func.count()).select_from(Presence).where(Presence.peer_node == peer))
        if held > cap:
            oldest = (select(Presence.user_id).where(Presence.peer_node == peer)
                      .order_by(Presence.updated_at, Presence.user_id).limit(held - cap))
            session.execute(delete(Presence).where(Presence.user_id.in_(oldest)))
            log.info("presence of %d users of %s evicted: over the cap of %d per peer", held - cap, peer, cap)

    @staticmethod
    def _keep_read_state(session: Session, state: dict, peer_node: str) -> str | None:
        """Keep the newest state per key: "new" when the key is new here (counted against `peer_node`), "newer"
        when it replaced an older state, None when it was no newer than the one kept (ignored)."""
        row = session.get(ReadState, (state["conversation_id"], state["user_id"]))
        if row is None:
            session.add(ReadState(**state, peer_node=peer_node))
            return "new"
        if _newer(state["updated_at"], row.updated_at):  # newest wins
            row.read_up_to_message_id, row.unread_count = state["read_up_to_message_id"], state["unread_count"]
            row.updated_at = state["updated_at"]
            return "newer"
        return None

    @staticmethod
    def _queue_ephemeral(session: Session, peer: str, kind: str, item: dict) -> None:
        key = item["conversation_id"] + "|" + item["user_id"] if kind == "read" else item["user_id"]
        row = session.get(PendingEphemeral, (peer, kind, key))
        if row is None:
            session.add(PendingEphemeral(peer_node=peer, kind=kind, key=key, item=item, attempts=0))
        else:
            row.item, row.attempts, row.first_try_at = item, 0, None

    def mark_read(self, user_id: str, conversation_id: str) -> ReadState:
        """A.13: the user has read everything in the conversation; peers hear of it in the next batch."""
        me = self.node_id
        reader = address(user_id, me)
        with self.db() as session:
            latest = session.scalars(select(Message).where(Message.conversation_id == conversation_id)
                                     .order_by(Message.send_time.desc(), Message.message_id.desc())
                                     .limit(1)).first()
            if latest is None:
                raise NotFound(f"no messages in {conversation_id}")
            group = self._require_participant(session, reader, latest)
            if group is not None and latest.send_time < group.joined(reader):
                raise NotFound(f"no messages in {conversation_id}")  # none since the reader joined (§8.9)
            state = {"conversation_id": conversation_id, "user_id": reader,
                     "read_up_to_message_id": latest.message_id, "unread_count": 0,
                     "updated_at": protocol.format_timestamp(utcnow())}
            self._keep_read_state(session, state, me)
            for peer in self._conversation_peers(session, latest):
                self._queue_ephemeral(session, peer, "read", state)
            session.commit()
            return session.get(ReadState, (conversation_id, reader))

    def _conversation_peers(self, session: Session, message: Message) -> list[str]:
        """Where a read state of this conversation goes: the other user's node, or the group's home node
        (every member node when this node is home)."""
        me = self.node_id
        if message.chat_type == "single":
            other = {node_of(message.sender_address), node_of(message.to)} - {me}
            return sorted(other)
        home = node_of(message.to)
        if home != me:
            return [home]
        group = session.get(Group, (local_part(message.to), me))
        return [peer for peer in self._member_nodes(group) if peer != me]

    def _require_participant(self, session: Session, user: str, message: Message) -> Group | None:
        """`user` takes part in the conversation of `message`: one of a single chat's two users, or a member of
        the group now. Having sent the message is no exception: a user who had left the group still opened it
        while their own message was its newest. Returns the group (None for a single chat)."""
        if message.chat_type == "single":
            if user not in (message.sender_address, message.to):
                raise NotAParticipant(f"{user} is not in {message.conversation_id}")
            return None
        group = session.get(Group, (local_part(message.to), node_of(message.to)))
        if group is None or user not in group.members:
            raise NotAParticipant(f"{user} is not in {message.conversation_id}")
        return group

    def _require_reader(self, session: Session, user: str, message: Message) -> None:
        """`_require_participant`, and for a group message one the member sees: sent since they last joined
        (docs/protocol.md §8.9)."""
        group = self._require_participant(session, user, message)
        if group is not None and message.send_time < group.joined(user):
            raise NotAParticipant(f"message {message.message_id} was sent before {user} joined {message.to}")

    def set_presence(self, user_id: str, status: str, client_type: str = "pc") -> dict:
        """A.15: told to every node that shares a conversation with the user (a group, or a recent chat). Who
        those are is read before anything is written: the write lock is held for the writes only."""
        me = self.node_id
        user = address(user_id, me)
        now = protocol.format_timestamp(utcnow())
        item = {"user_id": user, "status": status, "client_type": client_type, "last_active": now,
                "updated_at": now}
        validation.validate("presence", {"items": [item]})
        with self.db() as session:
            if session.get(User, user_id) is None:
                raise NotFound(f"no local user {user_id}")
            peers = self._presence_peers(session, {user})[user]
            row = session.get(Presence, user)
            if row is None:
                session.add(Presence(**item, peer_node=me))
            else:
                row.status, row.client_type, row.last_active, row.updated_at = status, client_type, now, now
            self._queue_presence(session, [(peer, item) for peer in sorted(peers)])
            session.commit()
        return item

    def rebroadcast_presence(self) -> int:
        """A.15: every 5 minutes, the status of each local user who is not offline goes out again, so a peer
        that missed a change (or restarted) catches up, and users whose node went quiet age out there. Only
        `updated_at` is new: the repeat is no activity of the user's, so `last_active` stays when it was.
        It runs in the node loop that also delivers the outbox: a fixed number of statements whatever the number
        of users (one each was a scan of every group and of a month of single chats: 25 s for 1000 users and
        50,000 messages). A user who comes online meanwhile is repeated next time; their own change went out."""
        me = self.node_id
        online = (Presence.peer_node == me, Presence.user_id.endswith("@" + me), Presence.status != "offline")
        with self.db() as session:
            peers = self._presence_peers(session, set(session.scalars(select(Presence.user_id).where(*online))))
            now = protocol.format_timestamp(utcnow())
            repeated = session.execute(
                update(Presence).where(*online).values(updated_at=now)
                .returning(Presence.user_id, Presence.status, Presence.client_type, Presence.last_active)
                .execution_options(synchronize_session=False)).all()
            queued = []
            for user, status, client_type, last_active in repeated:
                item = {"user_id": user, "status": status, "client_type": client_type, "last_active": last_active,
                        "updated_at": now}
                queued.extend((peer, item) for peer in sorted(peers.get(user, ())))
            self._queue_presence(session, queued)
            session.commit()
        return len(repeated)

    def _presence_peers(self, session: Session, users: set[str]) -> dict[str, set[str]]:
        """The nodes other than this one that share a conversation with each of the local `users`: a group that
        is not dismissed, or a single chat with a message in the last 30 days. Two statements for any number of
        users: all groups, and the distinct pairs of a month's single chats (of one user's, for one user)."""
        me = self.node_id
        peers: dict[str, set[str]] = {user: set() for user in users}
        if not users:
            return peers
        for group in session.scalars(select(Group).where(Group.dismissed.is_(False))):
            for member in group.members:
                if member in peers:
                    peers[member].update(self._member_nodes(group))
        since = protocol.sortable_time(protocol.format_timestamp(utcnow() - timedelta(days=30)))
        pairs = select(Message.sender_address, Message.to).where(Message.chat_type == "single",
                                                                  Message.send_time >= since).distinct()
        if len(users) == 1:
            [user] = users
            pairs = pairs.where(or_(Message.sender_address == user, Message.to == user))
        for sender, to in session.execute(pairs):
            for one, other in ((sender, to), (to, sender)):
                if one in peers:
                    peers[one].add(node_of(other))
        for nodes in peers.values():
            nodes.discard(me)
        return peers

    @staticmethod
    def _queue_presence(session: Session, queued: list[tuple[str, dict]]) -> None:
        """(peer, item) pairs into the pending batches in one statement, each replacing the user's item pending
        for that peer, as `_queue_ephemeral` does one at a time."""
        if not queued:
            return
        table = PendingEphemeral.__table__
        upsert = sqlite_insert(table)
        upsert = upsert.on_conflict_do_update(index_elements=[table.c.peer_node, table.c.kind, table.c.key],
                                              set_={"item": upsert.excluded.item, "attempts": 0, "first_try_at": None})
        session.execute(upsert, [{"peer_node": peer, "kind": "presence", "key": item["user_id"], "item": item,
                                  "attempts": 0, "first_try_at": None} for peer, item in queued])

    def flush_ephemeral(self) -> int:
        """One batch per peer of everything pending (newest per key); a batch failing 3 times or for 60 s
        is dropped: the next change supersedes it (docs/protocol.md §6)."""
        sent = 0
        with self.db() as session:
            rows = session.scalars(select(PendingEphemeral)).all()
            by_peer: dict[str, list[PendingEphemeral]] = defaultdict(list)
            for row in rows:
                by_peer[row.peer_node].append(row)
            me, now = self.node_id, utcnow()
            for peer, items in by_peer.items():
                items = items[:1000]
                entry = self.routes.entry(peer)
                capabilities = set(entry["capabilities"]) if entry else set()
                batch: dict = {}
                reads = [row.item for row in items if row.kind == "read" and "read_count" in capabilities]
                presence = [row.item for row in items if row.kind == "presence" and "presence" in capabilities]
                if reads:
                    batch["read_states"] = reads
                if presence:
                    batch["presence"] = {"items": presence}
                ok = False
                if entry is not None and batch:
                    envelope = protocol.make_envelope(from_node=me, to_node=peer, type="ephemeral", payload=batch)
                    try:
                        response = self.peers.post(entry["endpoint"], PATHS["ephemeral"],
                                                   json.dumps(envelope, ensure_ascii=False).encode(),
                                                   pin=entry["cert_sha256"])
                        # A 200 is sent only with its acknowledgement (§5.2): a proxy's page is no delivery.
                        ok = response.status == 200 and self._not_acknowledged(response.body,
                                                                                envelope["message_id"]) is None
                        if not ok:
                            log.warning("ephemeral batch to %s refused: %s %s", peer, response.status,
                                        response.body[:200])
                    except PeerUnreachable as error:
                        log.info("ephemeral batch to %s failed: %s", peer, error)
                elif entry is not None:
                    ok = True  # nothing this peer can take: drop quietly
                for row in items:
                    self._settle_ephemeral(session, row, ok, now)
                sent += ok
            session.commit()
        return sent

    @staticmethod
    def _settle_ephemeral(session: Session, row: PendingEphemeral, sent: bool, now) -> None:
        """Delete the row that was sent, or count a failed try, only while it still holds the item this batch
        carried. The batch is read, then posted (seconds, to a slow peer), then settled: a newer read state or
        presence the CLI queued in between under the same key replaced the row's item, and deleting by key
        alone dropped that one unsent. Conditional, in one statement each (SQLite takes no lock for the read)."""
        unchanged = (PendingEphemeral.peer_node == row.peer_node, PendingEphemeral.kind == row.kind,
                     PendingEphemeral.key == row.key,
                     type_coerce(PendingEphemeral.item, Text) == json.dumps(row.item, ensure_ascii=False))
        attempts, first_try_at = row.attempts + 1, row.first_try_at or now
        if sent or attempts >= EPHEMERAL_ATTEMPTS or now - first_try_at > EPHEMERAL_WINDOW:
            session.execute(delete(PendingEphemeral).where(*unchanged).execution_options(synchronize_session=False))
        else:
            session.execute(update(PendingEphemeral).where(*unchanged).values(attempts=attempts,
                                                                              first_try_at=first_try_at)
                            .execution_options(synchronize_session=False))
