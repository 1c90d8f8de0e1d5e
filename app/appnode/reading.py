"""Reading, for the application and its users: a user's conversations with their unread counts, a
conversation's history with who has read each message (A.13) and how far it was delivered, a user's presence
(A.15) and the node's health. Kept apart from sending and receiving because it only queries: nothing here
writes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import defaultdict
from datetime import timedelta

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session, aliased

from app.appnode import protocol
from app.appnode.config import SOFTWARE_VERSION
from app.appnode.messages import address
from app.appnode.protocol import NotFound
from app.appnode.store import Message, Outbox, Presence, ReadState, get_setting, utcnow

# The messages of a conversation a page of history holds unless told otherwise (the newest ones), and the most
# the CLI asks for at once.
HISTORY_PAGE, MAX_HISTORY_PAGE = 100, 1000
# The conversations a page of them holds unless told otherwise (the operator page's list, the CLI's inbox), and
# the most the CLI asks for at once.
CONVERSATION_PAGE, MAX_CONVERSATION_PAGE = 50, 1000


class ReadingMixin:
    """The read-only views of a `Node`. Relies on the node's `db` (session factory) and `node_id`, on
    `groups` (GroupsMixin), `_require_participant` (EphemeralMixin) and `outbox_counts` (OutboxMixin)."""

    def conversations(self, user_id: str) -> list[dict]:
        """All the user's conversations (`conversations_page` without a limit): for callers that know there are
        few; a person's are read a page at a time."""
        return self.conversations_page(user_id, limit=None)[0]

    def conversations_page(self, user_id: str, *, limit: int | None = CONVERSATION_PAGE,
                           before: str | None = None) -> tuple[list[dict], str | None]:
        """The user's conversations, newest first, with the last message, the message count and the unread
        count: the `limit` newest (all when None), or those whose last message is older than the message
        `before`; and the `before` that reads the next page, None when there is none. An unknown user is refused
        (not_found) as sending is: no conversations would read as a user with an empty inbox. A group is listed
        while the user is in it: by their own messages, one they had quit, been removed from or seen dismissed
        stayed listed, and opening it was refused. Only its messages sent since the user last joined count
        (§8.9): listed by them alone, a group is not listed before its first message since then.
        The same few queries however many conversations: the summary is SQL's, one window over the user's
        messages; a query per conversation and every message loaded took seconds for a peer's 20,000. The user's
        messages are found by the indexes on sender and recipient (schema 5), not by reading every message."""
        if limit is not None and limit < 1:
            raise ValueError("a page holds at least one conversation")
        me_address = address(user_id, self.node_id)
        # Refuses an unknown user. Each group's conversation, with when the user joined it.
        joined = {f"g:{group.address}": group.joined(me_address) for group in self.groups(user_id)}
        since = {conversation: time for conversation, time in joined.items() if time}
        in_group = Message.conversation_id.in_(joined)
        if since:  # a CASE, not an OR per group: SQLite's expression depth is limited
            in_group = and_(in_group, Message.send_time >= case(since, value=Message.conversation_id, else_=""))
        visible = or_(and_(Message.chat_type == "single",
                           or_(Message.sender_address == me_address, Message.to == me_address)), in_group)
        # The user's read position counts once its message is here (§6: held until then) and is one of the
        # conversation's: a peer naming a later message of another one would have its user read messages its
        # node never received. Without one, every message of others is unread.
        read = aliased(Message)
        unread = case((and_(Message.sender_address != me_address,
                            or_(read.message_id.is_(None), Message.send_time > read.send_time,
                                and_(Message.send_time == read.send_time, Message.message_id > read.message_id))),
                       1), else_=0)
        per_conversation = {"partition_by": Message.conversation_id}
        ranked = (select(Message.conversation_id, Message.message_id, Message.send_time,
                         func.row_number().over(**per_conversation,
                                                order_by=(Message.send_time.desc(), Message.message_id.desc()))
                         .label("rank"),
                         func.count().over(**per_conversation).label("messages"),
                         func.sum(unread).over(**per_conversation).label("unread"))
                  .outerjoin(ReadState, and_(ReadState.conversation_id == Message.conversation_id,
                                             ReadState.user_id == me_address))
                  .outerjoin(read, and_(read.message_id == ReadState.read_up_to_message_id,
                                        read.conversation_id == Message.conversation_id))
                  .where(visible).subquery())
        query = select(ranked.c.message_id, ranked.c.messages, ranked.c.unread).where(ranked.c.rank == 1)
        with self.db() as session:
            if before is not None:
                cursor = session.get(Message, before)
                if cursor is None:
                    raise NotFound(f"no message {before}")
                query = query.where(or_(ranked.c.send_time < cursor.send_time,
                                        and_(ranked.c.send_time == cursor.send_time,
                                             ranked.c.message_id < cursor.message_id)))
            query = query.order_by(ranked.c.send_time.desc(), ranked.c.message_id.desc())
            if limit is not None:
                query = query.limit(limit + 1)
            rows = session.execute(query).all()
            older = rows[limit - 1].message_id if limit is not None and len(rows) > limit else None
            rows = rows[:limit]
            last = {message.message_id: message for message in session.scalars(
                select(Message).where(Message.message_id.in_([row.message_id for row in rows])))}
        return [{"conversation_id": last[row.message_id].conversation_id, "last": last[row.message_id],
                 "unread": row.unread, "count": row.messages, "with": self._title(last[row.message_id], me_address)}
                for row in rows], older

    @staticmethod
    def _title(message: Message, me_address: str) -> str:
        if message.chat_type == "group":
            return message.to
        return message.to if message.sender_address == me_address else message.sender_address

    def history(self, user_id: str, conversation_id: str, *, limit: int = HISTORY_PAGE,
                before: str | None = None) -> list[dict]:
        """A page of the conversation's messages (`history_page`), without the cursor to the one before."""
        return self.history_page(user_id, conversation_id, limit=limit, before=before)[0]

    def history_page(self, user_id: str, conversation_id: str, *, limit: int = HISTORY_PAGE,
                     before: str | None = None) -> tuple[list[dict], str | None]:
        """The newest `limit` messages of the conversation (those before the message `before`, if given) in
        order, with who has read each (A.13 read counts) and how far each was delivered; and the `before` that
        reads the page of older ones, None when there are none. A page costs the same few queries however many
        messages, members and readers: each message's audience was a list searched once per reader, and its
        delivery a query of its own, so a large group's whole history took seconds to read. A group member
        sees its messages sent since they last joined, and a message's audience is the members who had joined
        by then (§8.9): a conversation with none of those is not found, as on a node that has none at all."""
        if limit < 1:
            raise ValueError("a page holds at least one message")
        reader = address(user_id, self.node_id)
        newest_first = (Message.send_time.desc(), Message.message_id.desc())
        with self.db() as session:
            latest = session.scalars(select(Message).where(Message.conversation_id == conversation_id)
                                     .order_by(*newest_first).limit(1)).first()
            if latest is None:
                raise NotFound(f"no messages in {conversation_id}")
            group = self._require_participant(session, reader, latest)
            since = group.joined(reader) if group is not None else ""  # "": before any message
            query = select(Message).where(Message.conversation_id == conversation_id)
            if since:
                query = query.where(Message.send_time >= since)
            if before is not None:
                cursor = session.get(Message, before)
                if cursor is None or cursor.conversation_id != conversation_id or cursor.send_time < since:
                    raise NotFound(f"no message {before} in {conversation_id}")
                query = query.where(or_(Message.send_time < cursor.send_time,
                                        and_(Message.send_time == cursor.send_time,
                                             Message.message_id < cursor.message_id)))
            messages = session.scalars(query.order_by(*newest_first).limit(limit + 1)).all()
            if not messages and before is None:
                raise NotFound(f"no messages in {conversation_id}")
            older = messages[limit - 1].message_id if len(messages) > limit else None
            messages = messages[:limit][::-1]
            positions = self._read_positions(session, conversation_id)
            members = list(group.members) if group is not None else None  # None: a single chat's
            joined = {user: group.joined(user) for user in members} if group is not None else {}
            # How many members had joined by a time: bisect their times, sorted.
            joined_times = sorted(joined.values())
            # Only members with a read position can have read anything; in the members' order, as listed.
            readers = [(user, positions[user], joined[user]) for user in members or () if user in positions]
            own = [message for message in messages if message.origin_node == self.node_id]
            deliveries = self._delivery_states(session, own)
            result = []
            for message in messages:
                key = (message.send_time, message.message_id)
                sender = message.sender_address
                if members is None:  # a single chat: the other user
                    audience = [user for user in (message.to,) if user != sender]
                    read_by = [user for user in audience if user in positions and positions[user] >= key]
                    audience_size = len(audience)
                else:  # the members who had joined when it was sent, but its sender
                    read_by = [user for user, position, added in readers
                               if user != sender and position >= key and added <= message.send_time]
                    audience_size = bisect_right(joined_times, message.send_time) - (
                        1 if sender in joined and joined[sender] <= message.send_time else 0)
                result.append({"message": message, "read_by": read_by, "unread_by": audience_size - len(read_by),
                               "delivery": deliveries.get(message.message_id)})
        return result, older

    @staticmethod
    def _read_positions(session: Session, conversation_id: str) -> dict[str, tuple[str, str]]:
        """Every reader's `(send_time, message_id)` in the conversation, in one query: a read state counts once
        its message is here and is one of this conversation's (as `conversations_page` counts them)."""
        read = aliased(Message)
        rows = session.execute(select(ReadState.user_id, read.send_time, read.message_id)
                               .join(read, read.message_id == ReadState.read_up_to_message_id)
                               .where(ReadState.conversation_id == conversation_id,
                                      read.conversation_id == conversation_id))
        return {user: (send_time, message_id) for user, send_time, message_id in rows}

    @staticmethod
    def _delivery_states(session: Session, messages: list[Message]) -> dict[str, str]:
        """Each of this node's own messages' delivery (the caller passes only those: a message it received or
        relays, a member's group message at its home node, has outbox rows here too, but its delivery is its
        sender's to tell), from its outbox rows (one query for the page) and the delivered ones housekeeping has
        since deleted; a message that never had any (to users of this node only) has none."""
        states: dict[str, set[str]] = defaultdict(set)
        for message_id, state in session.execute(select(Outbox.message_id, Outbox.state)
                                                 .where(Outbox.message_id.in_([m.message_id for m in messages]))):
            states[message_id].add(state)
        for message in messages:
            if message.delivered_forgotten:
                states[message.message_id].add("delivered")
        return {message_id: _delivery(kept) for message_id, kept in states.items() if kept}

    def presence_of(self, user: str) -> dict | None:
        with self.db() as session:
            row = session.get(Presence, user)
            if row is None:
                return None
            stale = protocol.parse_timestamp(row.updated_at, "updated_at") < utcnow() - timedelta(minutes=10)
            return {"user_id": row.user_id, "status": "offline" if stale else row.status,
                    "client_type": row.client_type, "last_active": row.last_active}

    def problems(self) -> dict:
        """What the operator should know is wrong, as `status` tells it: the certificate's and the management
        node's last problem ("" or None: none), the routing table's expiry (`expired_table`), and how many outbox
        envelopes failed or wait, counted in SQL."""
        counts = self.outbox_counts(("failed", "pending"))
        routes = self.expired_table()
        with self.db() as session:
            return {"certificate": get_setting(session, "certificate_problem") or None,
                    "registry": get_setting(session, "registry_problem") or None, "routes": routes,
                    "failed": counts.get("failed", 0), "pending": counts.get("pending", 0)}

    def health(self) -> dict:
        return {"status": "ok", "node_id": self.node_id, "version": SOFTWARE_VERSION,
                "time": protocol.format_timestamp(utcnow()).replace(".000Z", "Z")}


def _delivery(states: set[str]) -> str:
    """A message's delivery from the states of its outbox rows: failed or pending while any row is; partial when a
    node takes no such message (skipped); delivered otherwise."""
    if "failed" in states or "pending" in states:
        return "failed" if "failed" in states else "pending"
    return "partial" if "skipped" in states else "delivered"
