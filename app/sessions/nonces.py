"""Remember used nonces across restarts and across every worker: the database, or Redis.

A nonce only has to be remembered as long as a timestamp carrying it could still be accepted
(the 5-minute window each way), so both stores forget it after that.

Redis may forget sooner: restarted without persistence, flushed, or failed over to an empty replica.
It then also forgets `SINCE_KEY`, the moment from which it has remembered every nonce; the first
claim after sets it again. A request signed less than a window after that moment may carry a nonce
used before it, so it is refused (503, retry later) rather than accepted unchecked: for five minutes
after Redis lost its keys, and once when REDIS_URL is first set, no new node session opens.
"""

from __future__ import annotations

import math
import time
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from app.database import utcnow
from app.errors import Unavailable
from app.extensions import db
from app.sessions.models import UsedNonce

WINDOW = timedelta(minutes=5)
SINCE_KEY = "mpim:nonces-since"


def _redis():
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    client = current_app.extensions.get("mpim_redis")
    if client is None:
        import redis

        # A Redis that hangs must not hold a worker for ever: the request is refused instead.
        client = current_app.extensions["mpim_redis"] = redis.Redis.from_url(url, socket_timeout=5,
                                                                             socket_connect_timeout=5)
    return client


def claim(node_id: str, nonce: str, signed_at: datetime) -> bool:
    """True the first time a node presents `nonce`; False for a replay. Atomic in both stores.

    With Redis, raises Unavailable while Redis does not answer, or while it cannot tell (see above):
    never accepted unchecked."""
    client = _redis()
    if client is not None:
        return _claim_in_redis(client, node_id, nonce, signed_at)
    try:
        with db.session.begin_nested():
            db.session.add(UsedNonce(node_id=node_id, nonce=nonce, seen_at=utcnow()))
        return True
    except IntegrityError:
        return False


def _claim_in_redis(client, node_id: str, nonce: str, signed_at: datetime) -> bool:
    import redis

    try:
        pipeline = client.pipeline()  # MULTI: the marker is set and read in one step
        pipeline.set(SINCE_KEY, repr(time.time()), nx=True)
        pipeline.get(SINCE_KEY)
        since = float(pipeline.execute()[1])
        wait = since + WINDOW.total_seconds() - signed_at.timestamp()
        if wait > 0:
            raise Unavailable("The nonce store lost its memory a moment ago; open the session again later.",
                              code="nonce_store_restarted", retry_after=math.ceil(wait))
        ttl = int(WINDOW.total_seconds() * 2) + 60
        return bool(client.set(f"mpim:nonce:{node_id}:{nonce}", b"1", nx=True, ex=ttl))
    except redis.RedisError as error:
        current_app.logger.error("nonce store (Redis) unavailable: %s", error)
        raise Unavailable("The nonce store is unavailable; open the session again shortly.",
                          code="nonce_store_unavailable") from error


def prune() -> int:
    """Scheduler job part: forget nonces older than twice the window."""
    result = db.session.execute(delete(UsedNonce).where(UsedNonce.seen_at < utcnow() - 2 * WINDOW))
    return result.rowcount or 0
