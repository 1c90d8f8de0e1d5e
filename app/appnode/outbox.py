"""The outbox (docs/protocol.md §6): every envelope for another node is written as a row first, then sent,
at once by a caller that claimed it or by the node loop once due. A row is retried with growing delays (from
RETRY_FIRST up to RETRY_MAX, or the peer's Retry-After if longer, up to RETRY_AFTER_MAX) until GIVE_UP_AFTER;
when the two nodes' tables disagree (the peer is missing from this node's table or does not present the
certificate it lists, or it answers unknown_peer or certificate_mismatch) only for PEER_RETRY_WINDOW, as the
next table may mend that. This node's own side is mended at once where it can be: a peer missing from the table,
or presenting another certificate than it lists (renewed since the last pull), is pulled for first
(`_pull_for_recipient`, at most once per 30 s) and sent to again if the new table lists it, so an envelope that
waited hours for a peer down is not given up because the peer's certificate was renewed meanwhile.
Up to DELIVERY_PARALLELISM envelopes are in flight at once, to any one peer at most
its learned concurrency (`peer_slots.py`); an envelope a peer refused as past its limit of connections
(`too_many_connections`, or a handshake it closed) while others of ours were in flight to it is sent again once
one of that peer's slots is free, not charged as an attempt, at most IMMEDIATE_RETRIES times in one `deliver`
(docs/protocol.md §6, "Connections per peer"). A node's A.12 requests for one group go to its home node one at
a time, in the order they were queued (`BEHIND_EARLIER_REQUEST`, §6 "Group requests in order"). Also here: how a
peer's error answer is read, which the group confirmation and the download read the same way.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import SimpleNamespace

from sqlalchemy import and_, bindparam, delete, exists, func, not_, select, update
from sqlalchemy.orm import Session

from app import strict_json
from app.appnode import protocol
from app.appnode.messages import PATHS
from app.appnode.peer_slots import PeerSlots
from app.appnode.store import (
    OUTBOX_MUTABLE,
    UPDATE_OUTBOX,
    Message,
    Outbox,
    Received,
    insert_outbox,
    raw_cursor,
    utcnow,
)
from app.appnode.transport import PeerCertificateMismatch, PeerClosedHandshake, PeerUnreachable
from app.errors import DomainError
from app.readable import bounded_line

log = logging.getLogger("mpim.appnode")

RETRY_FIRST, RETRY_MAX = 2.0, 600.0
GIVE_UP_AFTER = timedelta(hours=48)
# A peer's Retry-After is honoured up to an hour, so that the give-up after 48 hours still comes.
RETRY_AFTER_MAX = timedelta(hours=1)
PEER_RETRY_WINDOW = timedelta(hours=1)  # unknown_peer / certificate_mismatch are retried this long
CLAIM_SECONDS = 60.0
DELIVERY_PARALLELISM = 4
# A row refused as past the peer's limit is sent again at once this many times in one `deliver` at most; then it
# waits for the peer's Retry-After as any 503 does, so that a peer refusing everything cannot spin the loop.
IMMEDIATE_RETRIES = 3
# A peer's refusal is its text, bounded by no rule: what of it reaches a terminal, a log or `last_error` is escaped
# (`bounded_line`) and this long; its code is taken only when it is one (§5.3 codes are snake_case).
PEER_TEXT_SHOWN = 200
PEER_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")

_OUTBOX = Outbox.__table__
_EARLIER = _OUTBOX.alias("earlier")


# A request that an earlier one of this node, for the same group, still waits before (§6 "Group requests in
# order"): the home node applies requests as they arrive, and each row had its own backoff, up to 4 of them in
# flight at once, so an owner's kick queued while the home node was down came after the invite made once it was
# back, and undid it. Only pending rows hold up the later ones: one delivered, refused or given up no longer does.
# By the stored `group_key` (schema 7), one probe of ix_outbox_group_requests: compared by json_extract, every
# earlier row of the peer was read, and a delivery round with 500 groups waiting took 2 s.
BEHIND_EARLIER_REQUEST = and_(_OUTBOX.c.group_key.is_not(None), exists().where(
    _EARLIER.c.peer_node == _OUTBOX.c.peer_node, _EARLIER.c.group_key == _OUTBOX.c.group_key,
    _EARLIER.c.state == "pending", _EARLIER.c.id < _OUTBOX.c.id))

# The statements of each `deliver` round, built once: building them, and their cache keys, each round cost more
# than running them when the node loop's rounds hold a few rows each (bench/messages.py). On the table, not the
# mapped class: the rows are read as plain values, and no Outbox object is in the session to keep in step.
_DUE = (select(_OUTBOX.c.id).where(_OUTBOX.c.state == "pending", _OUTBOX.c.next_attempt_at <= bindparam("now"),
                                   not_(BEHIND_EARLIER_REQUEST))
        .order_by(_OUTBOX.c.id).limit(bindparam("batch")))
_CLAIM = (update(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True)), _OUTBOX.c.state == "pending",
                                _OUTBOX.c.next_attempt_at <= bindparam("now"), not_(BEHIND_EARLIER_REQUEST))
          .values(next_attempt_at=bindparam("until")).returning(_OUTBOX.c.id))
_ROWS = select(_OUTBOX).where(_OUTBOX.c.id.in_(bindparam("ids", expanding=True))).order_by(_OUTBOX.c.id)


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float:
    """A peer's Retry-After (RFC 9110 §10.2.3) as seconds from `now`, at most RETRY_AFTER_MAX; 0 for anything
    else (`retry_after_read` tells the two apart). Read as 0, it made a renewal ask again every few seconds."""
    return retry_after_read(value, now) or 0.0


def retry_after_read(value: str | None, now: datetime | None = None) -> float | None:
    """A Retry-After as seconds from `now`, at most RETRY_AFTER_MAX, or None when it is neither delay-seconds
    nor an HTTP-date. Delay-seconds are ASCII digits: float() took "1e400" (infinity) and Arabic-Indic digits,
    and a delay past year 9999 made the retry time overflow. An HTTP-date (which a proxy in front of a peer or
    of the management node may send) counts from `now`; one already past is 0."""
    value = (value or "").strip()
    most = RETRY_AFTER_MAX.total_seconds()
    if re.fullmatch(r"[0-9]+", value):
        return most if len(value) > 9 else min(float(value), most)
    if not value.isascii() or len(value) > 64:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": the zone unknown; HTTP-dates are GMT
        when = when.replace(tzinfo=UTC)
    return min(max((when - (now or utcnow())).total_seconds(), 0.0), most)


class OutboxMixin:
    """Delivery of a `Node`'s queued envelopes. Relies on the node's `db`, `routes`, `peers` (the pinned
    TLS client), `_writing` (the write lock), `_pool_lock` / `_delivery_pool` and `_peer_slots` (a PeerSlots of
    DELIVERY_PARALLELISM), set up in `Node.__init__`; on `_pull_for_recipient` and `expired_table`
    (RouteTableMixin)."""

    def _enqueue(self, session: Session, peer: str, kind: str, envelope: dict, *, claim: bool = False) -> int:
        """An outbox row; `claim` marks it taken by the caller, who attempts it right after the commit."""
        return insert_outbox(raw_cursor(session), peer=peer, kind=kind, envelope=envelope,
                             next_attempt_at=utcnow() + timedelta(seconds=CLAIM_SECONDS) if claim else utcnow())

    def deliver(self, ids: Iterable[int] | None = None, *, claimed: bool = False, batch: int = 100,
                refusals: dict[int, DomainError] | None = None) -> dict:
        """Send due envelopes (or these, already claimed by the caller). Rows are claimed in one statement
        before anything is sent, so the server loop and a CLI never send the same row at once; outcomes
        are written back once per batch. A crash in between only re-sends envelopes the peer acknowledges
        as duplicates (docs/protocol.md §6). A group request behind an earlier one is neither picked nor
        claimed (`BEHIND_EARLIER_REQUEST`); once a request is delivered, refused or given up, the one behind it
        is sent in the same call. `refusals` collects the peer's error of each row it refused for good, for a
        caller whose user waits on the answer."""
        outcome = {"delivered": 0, "retry": 0, "failed": 0}
        once = ids is not None
        with self.db() as session:
            while True:
                now = utcnow()
                todo = list(ids) if once else list(session.scalars(_DUE, {"now": now, "batch": batch}))
                if not todo:
                    return outcome
                if not claimed:  # checked again here: another process may have queued or claimed meanwhile
                    with self._writing:
                        todo = list(session.scalars(_CLAIM, {"ids": todo, "now": now,
                                                             "until": now + timedelta(seconds=CLAIM_SECONDS)}))
                        session.commit()
                rows = [SimpleNamespace(**found._mapping, refusal=None, reported=refusals is not None, again=0)
                        for found in session.execute(_ROWS, {"ids": todo})]
                results = []
                for row, result in zip(rows, self._attempt_all(rows), strict=True):
                    outcome[result] += 1
                    if refusals is not None and row.refusal is not None:
                        refusals[row.id] = row.refusal
                    results.append({"row_id": row.id, **{f"new_{name}": getattr(row, name)
                                                         for name in OUTBOX_MUTABLE}})
                if results:
                    with self._writing:
                        session.execute(UPDATE_OUTBOX, results)
                        session.commit()
                # a request answered for good may have one behind it, due now: not left for the loop's next round
                let_go = any(row.state != "pending" and row.kind == "group_op"
                             and row.envelope["payload"]["home_node_id"] == row.peer_node for row in rows)
                if once or (len(todo) < batch and not let_go):
                    return outcome

    def _executor(self) -> ThreadPoolExecutor:
        """A few envelopes in flight at once (peers take them in any order, docs/protocol.md §6), each on its
        own kept-alive connection, so one slow answer does not hold up the rest of a batch."""
        with self._pool_lock:
            if self._delivery_pool is None:
                self._delivery_pool = ThreadPoolExecutor(DELIVERY_PARALLELISM, thread_name_prefix="deliver")
            return self._delivery_pool

    def _attempt_all(self, rows: list) -> list[str]:
        """Each row's outcome, at most its peer's learned concurrency of them in flight to one peer (rows to
        other peers meanwhile go ahead, in order); a row answered `again` is sent once the peer has a free slot.
        One row is sent in the calling thread."""
        slots: PeerSlots = self._peer_slots
        outcomes: dict[int, str] = {}
        waiting, running = list(rows), {}
        try:
            while waiting or running:
                seen, full = slots.released, set()
                for row in list(waiting):
                    if row.peer_node in full:
                        continue
                    if not slots.take(row.peer_node):
                        full.add(row.peer_node)
                        continue
                    waiting.remove(row)
                    running[self._start(row, inline=len(rows) == 1)] = row
                if not running:  # every waiting row's peer is busy with another delivery of this process
                    slots.wait_release(seen, timeout=1.0)
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    row, outcome = running.pop(future), None
                    try:
                        outcome = future.result()
                    finally:
                        slots.release(row.peer_node, delivered=outcome == "delivered")
                    if outcome == "again":
                        waiting.insert(0, row)
                    else:
                        outcomes[row.id] = outcome
        finally:
            wait(running)  # a row that raised: the others finish before their slots are given back
            for row in running.values():
                slots.release(row.peer_node, delivered=False)
        return [outcomes[row.id] for row in rows]

    def _start(self, row, *, inline: bool) -> Future:
        if not inline:
            return self._executor().submit(self._attempt, row)
        future = Future()
        try:
            future.set_result(self._attempt(row))
        except Exception as error:  # raised again by `result()`, as from the pool
            future.set_exception(error)
        return future

    def _attempt(self, row) -> str:
        """Send one row; its outcome: delivered, retry, failed, or again (refused as past the peer's limit of
        connections: not an attempt, sent again once the peer has a free slot, `_past_limit`)."""
        now = utcnow()
        row.first_attempt_at = row.first_attempt_at or now
        entry = self.routes.peek(row.peer_node)
        if entry is None:  # approved or resumed since the last pull: pulled for once, as a send does (not
            # behind another thread's pull, nor within 30 s of a failed one: the batch would wait on it)
            self._pull_for_recipient(row.peer_node, wait=False)
            entry = self.routes.peek(row.peer_node)
        retry_after = 0.0
        peer_refused = False
        if entry is None:
            expired = self.expired_table()  # `outbox list` names the cause: the table, not the peer
            error = "the peer is not in the routing table" + (f"; no node is: {expired}" if expired else "")
            retryable, peer_refused = True, True
        else:
            body = json.dumps(protocol.restamp(row.envelope), ensure_ascii=False).encode()
            try:
                try:
                    response = self.peers.post(entry["endpoint"], PATHS[row.kind], body, pin=entry["cert_sha256"])
                except PeerCertificateMismatch:
                    # Renewed since this table was pulled: pulled for once (at most every 30 s), then sent again
                    # if the new table lists another certificate, before the attempt counts as a disagreement.
                    # Gone from the table again by the time it is read (another thread's pull): as a peer missing
                    # from it, retried within the same window.
                    if (self._pull_for_recipient(row.peer_node, refused_sha256=entry["cert_sha256"],
                                                 wait=False) is not None
                            or (entry := self.routes.peek(row.peer_node)) is None):
                        raise
                    response = self.peers.post(entry["endpoint"], PATHS[row.kind], body, pin=entry["cert_sha256"])
            except PeerCertificateMismatch as failure:
                error, retryable, peer_refused = str(failure), True, True
            except PeerClosedHandshake as failure:
                # Also what a failing peer may do: read as its limit only while it serves others of ours.
                if self._past_limit(row):
                    return "again"
                error, retryable = str(failure), True
            except PeerUnreachable as failure:
                error, retryable = str(failure), True
            else:
                if response.status == 200:
                    if (unacknowledged := self._not_acknowledged(response.body, row.message_id)) is None:
                        row.attempts += 1
                        row.state, row.finished_at, row.last_error = "delivered", now, None
                        return "delivered"
                    # §5.2: a 200 carries the acknowledgement. Any other 200 (a proxy's maintenance page, an ack of
                    # another envelope) says nothing of this one being stored: retried as a peer's failure.
                    error = (f"HTTP 200 without an acknowledgement of this envelope ({unacknowledged}): "
                             f"{self._peer_text(response.body)}")
                    retryable = True
                else:
                    error = f"HTTP {response.status}: {self._peer_text(response.body)}"
                    code = self._error_code(response.body)
                    if code == "too_many_connections" and self._past_limit(row):
                        return "again"
                    peer_refused = code in ("unknown_peer", "certificate_mismatch")
                    retryable = response.status == 429 or response.status >= 500 or peer_refused
                    retry_after = retry_after_seconds(response.header("Retry-After"))
        row.attempts += 1
        row.last_error = error[:300]
        window = PEER_RETRY_WINDOW if peer_refused else GIVE_UP_AFTER
        if not retryable or now - row.first_attempt_at > window:
            if not retryable:
                row.refusal = self._peer_error(response)
            row.state, row.finished_at = "failed", now
            # One readable line; only INFO when the caller waiting on the answer reports the refusal itself
            # (the CLI's `error (code): ...`), so the person does not read it twice, once as raw JSON.
            level = logging.INFO if row.reported and row.refusal is not None else logging.WARNING
            log.log(level, "gave up envelope %s to %s: %s", row.message_id, row.peer_node,
                    f"HTTP {response.status} {row.refusal.code}: {row.refusal.message}"
                    if row.refusal is not None else " ".join(error.split()))
            return "failed"
        delay = min(RETRY_FIRST * 2 ** (row.attempts - 1), RETRY_MAX) * random.uniform(0.8, 1.2)
        row.next_attempt_at = now + timedelta(seconds=max(delay, retry_after))
        return "retry"

    def _past_limit(self, row) -> bool:
        """The row's peer refused it as past its limit of connections (§10): whether the row goes again in this
        `deliver`. Only while others of ours were in flight to the peer (its concurrency is then lowered), so that
        one of them being answered frees a slot for it, and not IMMEDIATE_RETRIES times yet. With none in flight,
        connections outside this process hold the limit and nothing here will free a slot: resent at once, a
        single row (a CLI send) went again within a millisecond, the peer's Retry-After ignored."""
        if not self._peer_slots.refused(row.peer_node) or row.again >= IMMEDIATE_RETRIES:
            return False
        row.again += 1
        return True

    @staticmethod
    def _peer_text(body: bytes) -> str:
        """The start of a peer's answer as one line (`bounded_line`), for the error of an answer that is no
        acknowledgement. Not made for an acknowledgement: escaping its ~120 characters one by one cost a delivery
        a sixth more instructions, and a delivered row keeps no error."""
        return bounded_line(body[:PEER_TEXT_SHOWN].decode("utf-8", "replace"), PEER_TEXT_SHOWN)

    @staticmethod
    def _not_acknowledged(body: bytes, message_id: str) -> str | None:
        """None when a 200 answer's body is the acknowledgement (§5.2) of the envelope `message_id`: a JSON
        object naming it, `accepted` or `duplicate`; else why it is not, in a few words. Only that is checked, not
        the whole of ack.schema.json: a peer's ack with a field more, or its time spelled another way, says as
        much that the envelope is stored, and was retried for 48 hours."""
        try:
            ack = strict_json.parse(body)
        except strict_json.NotStrictJSON:
            return "not JSON"
        if not isinstance(ack, dict):
            return "not an ack: not a JSON object"
        if ack.get("status") not in ("accepted", "duplicate"):
            return f"not an ack: its status is {bounded_line(json.dumps(ack.get('status')), PEER_TEXT_SHOWN)}"
        if ack.get("message_id") != message_id:
            return f"it acknowledges {bounded_line(json.dumps(ack.get('message_id')), PEER_TEXT_SHOWN)}"
        return None

    @staticmethod
    def _error_code(body: bytes) -> str | None:
        """The code of a peer's error answer, None when it has none or one that is no snake_case code."""
        try:
            code = strict_json.parse(body)["error"]["code"]
        except (strict_json.NotStrictJSON, KeyError, TypeError):
            return None
        return code if isinstance(code, str) and PEER_CODE.fullmatch(code) else None

    @staticmethod
    def _peer_error(response) -> DomainError:
        """A peer's refusal as this node reports it: its message escaped and bounded (`bounded_line`), its code
        taken when it is one, else `peer_error` with the code given shown escaped."""
        try:
            error = strict_json.parse(response.body)["error"]
            given, message = error["code"], error["message"]
        except (strict_json.NotStrictJSON, KeyError, TypeError):
            return DomainError(f"peer answered HTTP {response.status}", status=502, code="peer_error")
        text = f"peer: {bounded_line(message if isinstance(message, str) else json.dumps(message), PEER_TEXT_SHOWN)}"
        if not (isinstance(given, str) and PEER_CODE.fullmatch(given)):
            shown = bounded_line(given if isinstance(given, str) else json.dumps(given), 64)
            return DomainError(f"{text} (its code {shown} is no error code)", code="peer_error",
                               status=response.status)
        return protocol.ERRORS.get(given, DomainError)(text, code=given, status=response.status)

    def _queued_behind(self, session: Session, row_id: int) -> bool:
        """Whether the request just queued as row `row_id` (claimed) waits behind an earlier one for the same
        group (`BEHIND_EARLIER_REQUEST`); if so its claim is given back, and the row is left to the delivery that
        sends the earlier one. Read after the insert, in its transaction: no other process writes meanwhile."""
        behind = session.scalar(select(_OUTBOX.c.id).where(_OUTBOX.c.id == row_id, BEHIND_EARLIER_REQUEST))
        if behind is not None:
            session.execute(update(Outbox).where(Outbox.id == row_id).values(next_attempt_at=utcnow()))
        return behind is not None

    def retry_now(self) -> int:
        """Operator's nudge: every pending envelope is due now (e.g. after a peer came back)."""
        with self.db.begin() as session:
            result = session.execute(update(Outbox).where(Outbox.state == "pending")
                                     .values(next_attempt_at=utcnow()))
        return result.rowcount

    def outbox_counts(self, states: Iterable[str] | None = None) -> dict[str, int]:
        """How many outbox rows are in each state (or in these), counted in SQL: no row nor envelope is loaded
        (`status` loaded them all, 2.4 GB for 300,000 delivered rows)."""
        with self.db() as session:
            query = select(Outbox.state, func.count()).group_by(Outbox.state)
            if states is not None:
                query = query.where(Outbox.state.in_(tuple(states)))
            return dict(session.execute(query).all())

    def outbox(self, state: str | None = None) -> list[Outbox]:
        with self.db() as session:
            query = select(Outbox).order_by(Outbox.id)
            if state:
                query = query.where(Outbox.state == state)
            return list(session.scalars(query))

    def forget_delivered(self, older_than: timedelta = timedelta(days=7)) -> None:
        """Housekeeping: delivered envelopes and dedup records past the 7 days a repeat is recognised. Each
        message whose envelopes go is marked, so that its delivery state still counts them (`history`)."""
        cutoff = utcnow() - older_than
        forgotten = (Outbox.state == "delivered", Outbox.finished_at < cutoff)
        with self.db.begin() as session:
            session.execute(update(Message).where(Message.message_id.in_(select(Outbox.message_id).where(*forgotten)))
                            .values(delivered_forgotten=True), execution_options={"synchronize_session": False})
            session.execute(delete(Outbox).where(*forgotten))
            session.execute(delete(Received).where(Received.received_at < cutoff))
