"""Reading, for the application and its users: a user's conversations with their unread counts, a
conversation's history with who has read each message (A.13) and how far it was delivered, a user's presence
(A.15) and the node's health. Kept apart from sending and receiving because it only queries: nothing here
writes.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from app.appnode import protocol
from app.appnode.config import SOFTWARE_VERSION
from app.appnode.messages import address, local_part
from app.appnode.protocol import NotFound, node_of
from app.appnode.store import Group, Message, Outbox, Presence, ReadState, utcnow


class ReadingMixin:
    """The read-only views of a `Node`. Relies on the node's `db` (session factory) and `node_id`, on
    `groups` (GroupsMixin) and `_require_participant` (EphemeralMixin)."""

    def conversations(self, user_id: str) -> list[dict]:
        """The user's conversations, newest first, with the last message and the unread count. An unknown user
        is refused (not_found) as sending is: no conversations would read as a user with an empty inbox. A group
        is listed while the user is in it: by their own messages, one they had quit, been removed from or seen
        dismissed stayed listed, and opening it was refused."""
        me_address = address(user_id, self.node_id)
        group_addresses = {f"g:{group.address}" for group in self.groups(user_id)}  # refuses an unknown user
        with self.db() as session:
            rows = session.scalars(select(Message).where(or_(
                and_(Message.chat_type == "single",
                     or_(Message.sender_address == me_address, Message.to == me_address)),
                Message.conversation_id.in_(group_addresses))).order_by(Message.send_time, Message.message_id)).all()
            by_conversation: dict[str, list[Message]] = defaultdict(list)
            for row in rows:
                by_conversation[row.conversation_id].append(row)
            result = []
            for conversation, messages in by_conversation.items():
                result.append({"conversation_id": conversation, "last": messages[-1],
                               "unread": self._unread(session, me_address, conversation, messages),
                               "count": len(messages),
                               "with": self._title(messages[-1], me_address)})
        return sorted(result, key=lambda item: item["last"].send_time, reverse=True)

    @staticmethod
    def _title(message: Message, me_address: str) -> str:
        if message.chat_type == "group":
            return message.to
        return message.to if message.sender_address == me_address else message.sender_address

    def _unread(self, session: Session, reader: str, conversation: str, messages: list[Message]) -> int:
        state = session.get(ReadState, (conversation, reader))
        position = self._read_position(session, state) if state is not None else None
        return sum(1 for m in messages if m.sender_address != reader
                   and (position is None or (m.send_time, m.message_id) > position))

    @staticmethod
    def _read_position(session: Session, state: ReadState) -> tuple[str, str] | None:
        """Where a read state puts its reader: `(send_time, message_id)` of its message, once that message is
        here (§6: held until then), and only if it is a message of the state's own conversation: a peer naming a
        later message of another one would have its user read messages its node never received."""
        read = session.get(Message, state.read_up_to_message_id)
        if read is None or read.conversation_id != state.conversation_id:
            return None
        return read.send_time, read.message_id

    def history(self, user_id: str, conversation_id: str) -> list[dict]:
        """The conversation's messages in order, with who has read each (A.13 read counts)."""
        reader = address(user_id, self.node_id)
        with self.db() as session:
            messages = session.scalars(select(Message).where(Message.conversation_id == conversation_id)
                                       .order_by(Message.send_time, Message.message_id)).all()
            if not messages:
                raise NotFound(f"no messages in {conversation_id}")
            self._require_participant(session, reader, messages[-1])
            positions = {}
            for state in session.scalars(select(ReadState).where(ReadState.conversation_id == conversation_id)):
                position = self._read_position(session, state)
                if position is not None:
                    positions[state.user_id] = position
            group = None
            if messages[-1].chat_type == "group":
                group = session.get(Group, (local_part(messages[-1].to), node_of(messages[-1].to)))
            result = []
            for message in messages:
                audience = ([m for m in group.members if m != message.sender_address] if group else
                            [a for a in (message.sender_address, message.to) if a != message.sender_address])
                key = (message.send_time, message.message_id)
                read_by = [user for user in audience if user in positions and positions[user] >= key]
                result.append({"message": message, "read_by": read_by, "unread_by": len(audience) - len(read_by),
                               "delivery": self._delivery_state(session, message)})
        return result

    @staticmethod
    def _delivery_state(session: Session, message: Message) -> str | None:
        """From the message's outbox rows, and the delivered ones housekeeping has since deleted; None for a
        message that never had any (received, or to users of this node only)."""
        states = set(session.scalars(select(Outbox.state).where(Outbox.message_id == message.message_id)))
        if message.delivered_forgotten:
            states.add("delivered")
        if not states:
            return None
        if "failed" in states or "pending" in states:
            return "failed" if "failed" in states else "pending"
        return "partial" if "skipped" in states else "delivered"  # partial: some nodes take no such message

    def presence_of(self, user: str) -> dict | None:
        with self.db() as session:
            row = session.get(Presence, user)
            if row is None:
                return None
            stale = protocol.parse_timestamp(row.updated_at, "updated_at") < utcnow() - timedelta(minutes=10)
            return {"user_id": row.user_id, "status": "offline" if stale else row.status,
                    "client_type": row.client_type, "last_active": row.last_active}

    def health(self) -> dict:
        return {"status": "ok", "node_id": self.node_id, "version": SOFTWARE_VERSION,
                "time": protocol.format_timestamp(utcnow()).replace(".000Z", "Z")}
