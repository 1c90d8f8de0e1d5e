"""Serving the published table from memory, per process.

A request costs one indexed read: its node session and the head version together, in one round
trip and one snapshot, so a suspended node's token is refused at once and a version published by
any worker or instance is served by every other on the next pull. The signed bytes of a version
are loaded once per process and kept until the version changes; nothing is rebuilt per request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from app.extensions import db
from app.routing import document
from app.routing.models import RouteVersion


@dataclass
class Published:
    version: int
    body: bytes
    headers: dict[str, str]
    etag: str
    delta_from_previous: tuple[bytes, dict[str, str]] | None
    entries: dict[str, dict] | None = None
    deltas: dict[int, tuple[bytes, dict[str, str]]] = field(default_factory=dict)


def signed_headers(version: int, signature: str, signer: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "ETag": document.etag(version), "Cache-Control": "no-cache",
            document.SIGNATURE_HEADER: signature, document.SIGNER_HEADER: signer, "X-Route-Version": str(version)}


class RouteCache:
    def __init__(self):
        self.lock = threading.Lock()
        self.published: Published | None = None

    def at(self, version: int) -> Published | None:
        """The published bytes of `version` (the head the request just read)."""
        published = self.published
        if published is not None and published.version == version:
            return published
        if not version:
            return None
        row = db.session.get(RouteVersion, version)
        if row is None or row.body is None:
            return None
        delta = None
        if row.delta_body is not None:
            delta = (row.delta_body, signed_headers(version, row.delta_signature, row.signer_sha256))
        published = Published(version=version, body=row.body, etag=document.etag(version),
                              headers=signed_headers(version, row.signature, row.signer_sha256),
                              delta_from_previous=delta)
        with self.lock:
            if self.published is None or self.published.version < version:
                self.published = published
        return published

    def close(self) -> None:
        """Nothing runs in the background; kept so callers may release a cache uniformly."""


def cache_for(app) -> RouteCache:
    app = getattr(app, "_get_current_object", lambda: app)()
    cache = app.extensions.get("mpim_route_cache")
    if cache is None:
        cache = app.extensions["mpim_route_cache"] = RouteCache()
    return cache
