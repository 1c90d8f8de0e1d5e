"""Remember used nonces across restarts and across every worker: the database, or Redis.

A nonce only has to be remembered as long as a timestamp carrying it could still be accepted
(the 5-minute window each way), so both stores forget it after that.
"""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from app.database import utcnow
from app.extensions import db
from app.sessions.models import UsedNonce

WINDOW = timedelta(minutes=5)


def _redis():
    url = current_app.config.get("REDIS_URL")
    if not url:
        return None
    client = current_app.extensions.get("mpim_redis")
    if client is None:
        import redis

        client = current_app.extensions["mpim_redis"] = redis.Redis.from_url(url)
    return client


def claim(node_id: str, nonce: str) -> bool:
    """True the first time a node presents `nonce`; False for a replay. Atomic in both stores."""
    client = _redis()
    if client is not None:
        ttl = int(WINDOW.total_seconds() * 2) + 60
        return bool(client.set(f"mpim:nonce:{node_id}:{nonce}", b"1", nx=True, ex=ttl))
    try:
        with db.session.begin_nested():
            db.session.add(UsedNonce(node_id=node_id, nonce=nonce, seen_at=utcnow()))
        return True
    except IntegrityError:
        return False


def prune() -> int:
    """Scheduler job part: forget nonces older than twice the window."""
    result = db.session.execute(delete(UsedNonce).where(UsedNonce.seen_at < utcnow() - 2 * WINDOW))
    return result.rowcount or 0
