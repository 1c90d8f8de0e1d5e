"""Serving the published table from memory, per process (the 304 path does no database work).

A request learns the current version cheaply and never rebuilds anything:
- on PostgreSQL a listener thread per process receives `NOTIFY mpim_routes` from every
  publication (any worker, any instance) and the request reads an integer in memory;
- elsewhere (SQLite, one machine) the request asks the database for the highest version, a
  single indexed read.
The signed bytes of that version are loaded once and kept until the next version.
Validated node-session tokens are cached with their expiry and forgotten whenever the version
changes, because every suspension or revocation publishes a version (even for a node the table does
not list), and so does revoking one of a node's certificates, even when the table is the same.
On PostgreSQL that means a worker honours a just-suspended node's token until the notification arrives (milliseconds);
the database itself has ended the session at once, and every new session is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from app.extensions import db
from app.routing import document
from app.routing.models import RouteVersion

log = logging.getLogger("mpim.routing")


# Deltas folded on demand (`?since=` older than the version before) kept per version and process. Each can be as
# large as the table, and a node may ask from any of the kept versions (thousands in a week of health changes).
MAX_CACHED_DELTAS = 64


@dataclass
class Published:
    version: int
    body: bytes
    headers: dict[str, str]
    etag: str
    delta_from_previous: tuple[bytes, dict[str, str]] | None
    previous_version: int | None = None  # what `delta_from_previous` starts from (see service.publish(above=...))
    entries: dict[str, dict] | None = None
    deltas: dict[int, tuple[bytes, dict[str, str]]] = field(default_factory=dict)


def signed_headers(version: int, signature: str, signer: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "ETag": document.etag(version), "Cache-Control": "no-cache",
            document.SIGNATURE_HEADER: signature, document.SIGNER_HEADER: signer, "X-Route-Version": str(version)}


class RouteCache:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()
        self.published: Published | None = None
        self.sessions: dict[str, tuple[str, float]] = {}
        self.warned_ahead: dict[str, int] = {}  # node id -> the version served when it was last reported ahead
        self.notified_version: int | None = None
        self.listener: threading.Thread | None = None
        self.listener_parameters: dict[str, str] = {}  # the listening connection's, as libpq took them
        self.stopping = threading.Event()
        self.uses_notify = db.engine.dialect.name == "postgresql"

    # --- current version -----------------------------------------------------------------
    def current_version(self) -> int:
        if self.uses_notify:
            self._ensure_listener()
            if self.notified_version is not None:
                return self.notified_version
        return db.session.scalar(select(func.max(RouteVersion.version))) or 0

    def _ensure_listener(self) -> None:
        if self.listener is None:
            with self.lock:
                if self.listener is None:
                    self.listener = threading.Thread(target=self._listen, name="route-listener", daemon=True)
                    self.listener.start()

    # TCP keepalives on the listening connection (libpq's parameters): it only ever waits, so a database lost
    # without a reset (a network partition, a failover that sends none) would leave it waiting for good and the
    # worker serving its last version. With these, the kernel gives up on the silent peer in about a minute,
    # the loop below falls back to queries and reconnects.
    LISTENER_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10,
                           "keepalives_count": 3}

    def _listen(self) -> None:
        import psycopg

        url = make_url(self.app.config["SQLALCHEMY_DATABASE_URI"]).set(drivername="postgresql")
        conninfo = url.render_as_string(hide_password=False)
        while not self.stopping.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True, **self.LISTENER_KEEPALIVES) as connection:
                    self.listener_parameters = connection.info.get_parameters()
                    connection.execute("LISTEN mpim_routes")
                    # Anything published before LISTEN took effect is read once here.
                    row = connection.execute("SELECT coalesce(max(version), 0) FROM route_versions").fetchone()
                    self.notified_version = max(self.notified_version or 0, row[0])
                    while not self.stopping.is_set():
                        for notice in connection.notifies(timeout=1.0):
                            self.notified_version = max(self.notified_version or 0, int(notice.payload))
            except Exception:  # the database went away: fall back to queries until we reconnect
                self.notified_version = None
                log.warning("route listener lost its connection; retrying", exc_info=True)
                self.stopping.wait(1.0)

    def close(self) -> None:
        self.stopping.set()

    # --- published bytes -------------------------------------------------------------------
    def current(self) -> Published | None:
        version = self.current_version()
        published = self.published
        if published is not None and published.version == version:
            return published
        if version == 0:
            return None
        row = db.session.get(RouteVersion, version)
        if row is None or row.body is None:
            return None
        delta = previous = None
        if row.delta_body is not None:
            delta = (row.delta_body, signed_headers(version, row.delta_signature, row.signer_sha256))
            # Not always version - 1: the numbers skipped after a restore (service.publish(above=...)).
            previous = db.session.scalar(select(func.max(RouteVersion.version)).where(RouteVersion.version < version))
        published = Published(version=version, body=row.body, etag=document.etag(version),
                              headers=signed_headers(version, row.signature, row.signer_sha256),
                              delta_from_previous=delta, previous_version=previous)
        with self.lock:
            if self.published is None or self.published.version < version:
                self.published = published
                self.sessions.clear()
        return published

    def remember_delta(self, published: Published, since: int, delta: tuple[bytes, dict[str, str]]) -> None:
        """Keep a folded delta for the next node asking from `since`; the oldest kept goes past MAX_CACHED_DELTAS."""
        with self.lock:
            while len(published.deltas) >= MAX_CACHED_DELTAS:
                del published.deltas[next(iter(published.deltas))]
            published.deltas[since] = delta

    # --- node sessions ----------------------------------------------------------------------
    def session_node(self, token_hash: str) -> str | None:
        cached = self.sessions.get(token_hash)
        if cached and cached[1] > time.time():
            return cached[0]
        return None

    def remember_session(self, token_hash: str, node_id: str, expires_at: float, *,
                         seen_version: int | None) -> None:
        """Cache a session validated while `seen_version` was the version served, only if it still is. With
        threads, another request may have loaded a newer version (a suspension's) and cleared the cache
        while this one validated; storing it then would keep a suspended node's token for its lifetime."""
        with self.lock:
            if seen_version is None or self.published is None or self.published.version != seen_version:
                return
            if len(self.sessions) > 100_000:
                self.sessions.clear()
            self.sessions[token_hash] = (node_id, expires_at)

    # --- nodes ahead of the table -------------------------------------------------------------
    def first_report_ahead(self, node_id: str, head: int) -> bool:
        """True once per node for each version served: a node ahead asks again every few seconds, and the
        operator needs one line per node, not one per request."""
        with self.lock:
            if self.warned_ahead.get(node_id) == head:
                return False
            if len(self.warned_ahead) > 100_000:
                self.warned_ahead.clear()
            self.warned_ahead[node_id] = head
            return True


def cache_for(app) -> RouteCache:
    app = getattr(app, "_get_current_object", lambda: app)()  # the thread needs the app, not the proxy
    cache = app.extensions.get("mpim_route_cache")
    if cache is None:
        cache = app.extensions["mpim_route_cache"] = RouteCache(app)
    return cache
