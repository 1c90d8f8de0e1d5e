"""How many envelopes the outbox sends one peer at once (docs/protocol.md §6, §10).

A receiver serves a caller at most as many connections at once as it allows one caller (§10; the reference node:
`max_connections_per_caller`, 6 by default) and refuses the rest with 503 `too_many_connections`. The outbox sends
up to DELIVERY_PARALLELISM envelopes at once: to a peer allowing fewer, most of a busy batch was refused, and each
refused envelope waited out a growing backoff although the peer was healthy (to a peer allowing 2, a few
envelopes a second instead of hundreds).

So each peer has a learned concurrency: the most of its envelopes in flight at once. It starts at
DELIVERY_PARALLELISM; a refusal while others of ours were in flight to that peer lowers it to those others (a
refusal of our only envelope there says nothing about our concurrency: connections outside this process held the
peer's limit); and it creeps back up by one after CREEP_AFTER envelopes the peer took while all of its
slots were taken, so that a peer that raised its limit is used fully again, at the cost of one refusal each time
it has not. It is kept in memory for the process: a CLI send starts again from DELIVERY_PARALLELISM.
"""

from __future__ import annotations

import threading

CREEP_AFTER = 100


class PeerSlots:
    """Envelopes in flight per peer, each peer at most its learned concurrency (`limit`), shared by every
    delivery of the process."""

    def __init__(self, most: int):
        self.most = most
        self._limit: dict[str, int] = {}  # peers below `most` only
        self._busy: dict[str, int] = {}
        self._taken_full: dict[str, int] = {}  # envelopes taken at the limit since it last changed
        self._released = 0
        self._changed = threading.Condition()

    def limit(self, peer: str) -> int:
        with self._changed:
            return self._limit.get(peer, self.most)

    def take(self, peer: str) -> bool:
        """One more envelope in flight to `peer`; False, with nothing taken, when it has its limit."""
        with self._changed:
            busy = self._busy.get(peer, 0)
            if busy >= self._limit.get(peer, self.most):
                return False
            self._busy[peer] = busy + 1
            return True

    def refused(self, peer: str) -> bool:
        """`peer` refused one of the envelopes in flight to it as past its limit (its slot still taken): whether
        others of ours were in flight to it, which the concurrency is then lowered to. When none were, the limit
        was held by connections outside this process (another process of this node's, a CLI send or the server)
        and nothing is learned: the concurrency stays, and no answer here will free one of the peer's slots."""
        with self._changed:
            others = self._busy.get(peer, 1) - 1
            if others < 1:
                return False
            self._limit[peer] = min(self._limit.get(peer, self.most), others)
            self._taken_full.pop(peer, None)
            return True

    def release(self, peer: str, *, delivered: bool) -> None:
        """An envelope to `peer` is no longer in flight; `delivered`: the peer took it."""
        with self._changed:
            busy, limit = self._busy.pop(peer, 1), self._limit.get(peer, self.most)
            if busy > 1:
                self._busy[peer] = busy - 1
            if delivered and limit < self.most and busy >= limit:
                taken = self._taken_full.pop(peer, 0) + 1
                if taken < CREEP_AFTER:
                    self._taken_full[peer] = taken
                elif limit + 1 < self.most:
                    self._limit[peer] = limit + 1
                else:
                    del self._limit[peer]
            self._released += 1
            self._changed.notify_all()

    @property
    def released(self) -> int:
        """How many envelopes were released so far: `wait_release` waits for it to change."""
        with self._changed:
            return self._released

    def wait_release(self, seen: int, timeout: float) -> None:
        """Until a release after `seen` (`released`, read before the slots were found taken), at most `timeout`."""
        with self._changed:
            self._changed.wait_for(lambda: self._released != seen, timeout)
