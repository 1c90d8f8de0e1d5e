"""`GET /api/v1/routes` and `GET /api/v1/routes/{node_id}` (SPEC §4-§5), node session required."""

from __future__ import annotations

import json
import logging
import re

from flask import Blueprint, current_app, g, request

from app.admission.api import bearer_token
from app.admission.nodes import NODE_ID
from app.errors import NotFound, ValidationFailed
from app.extensions import csrf, db
from app.routing import service
from app.routing.serving import cache_for, signed_headers
from app.sessions import service as sessions
from app.sessions.models import NodeSession

bp = Blueprint("routing_api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)
ETAG_VALUE = re.compile(r'^(?:W/)?"(\d{1,12})"$')
log = logging.getLogger("mpim.routing")


class RoutesUnavailable(NotFound):
    code = "no_route_table"


def authenticated_node(cache, published) -> str:
    """A node session, served from the per-process cache after its first validation. `published`: the
    version this request serves, read before the validation (a session is cached only while it is current)."""
    raw = bearer_token()
    if raw:
        token_hash = sessions.hash_token(raw)
        node_id = cache.session_node(token_hash)
        if node_id:
            return node_id
    node_id = sessions.authenticate(raw)
    row = db.session.get(NodeSession, sessions.hash_token(raw))
    cache.remember_session(row.token_hash, node_id, row.expires_at.timestamp(),
                           seen_version=published.version if published else None)
    return node_id


def parse_since(value: str, head: int) -> int:
    # [0-9], not \d: int() would take "０" (fullwidth) or "٠" (Arabic-Indic) for a version too.
    if not re.fullmatch(r"[0-9]+", value or ""):
        raise ValidationFailed("since must be a non-negative whole number (a version).", code="invalid_since",
                               field="since")
    significant = value.lstrip("0") or "0"
    if len(significant) > 12:  # a whole number past any version (int() of it costs more the longer it is)
        shown = significant[:20] + ("…" if len(significant) > 20 else "")
        raise ValidationFailed(f"since={shown} is ahead of the current version {head}.", code="since_in_future",
                               field="since")
    since = int(significant)
    if since > head:
        ahead(since, head)
        raise ValidationFailed(f"since={since} is ahead of the current version {head}.", code="since_in_future",
                               field="since")
    return since


def ahead(held: int, head: int) -> None:
    """A node holds a version this database never published: restored from a backup? Nodes refuse every table
    below the one they hold until the operator publishes above it (docs/operations.md, Backup). Said once per
    node and version served."""
    if not cache_for(current_app).first_report_ahead(g.get("node_id"), head):
        return
    log.warning("node %s holds routing table version %s, ahead of the current %s: if the database was restored "
                "from a backup, run `flask routing publish --above <the highest version nodes hold>`",
                g.get("node_id"), held, head)


def not_modified(published):
    return "", 304, {"ETag": published.etag, "Cache-Control": "no-cache", "X-Route-Version": str(published.version)}


def signed_delta(version: int, body: bytes) -> tuple[bytes, dict] | None:
    """A folded delta signed now, or None on an instance that cannot sign (no CA passphrase; a key file it cannot
    open, with a wrong passphrase; a route signer revoked or expired and not yet rotated): the caller serves the
    full table, signed when it was published, which the node applies as a whole. A 503 sent the node to ask again,
    and be answered the same, until the load balancer chose another instance; for an unreadable key it also named
    the key file to every node."""
    from app.pki.keys import CAKeyUnreadable
    from app.pki.own_keys import RouteSignerUnusable
    from app.pki.service import CANotReady

    try:
        signature, signer = service.sign(body)
    except (CANotReady, CAKeyUnreadable, RouteSignerUnusable) as error:
        log.warning("a delta to routing table version %s was answered with the full table: this instance cannot "
                    "sign (%s)", version, error.code)
        return None
    return body, signed_headers(version, signature, signer)


@bp.get("/routes")
def routes():
    cache = cache_for(current_app)
    published = cache.current()
    g.node_id = authenticated_node(cache, published)
    if published is None:
        raise RoutesUnavailable("No routing table has been published yet.")
    since_arg = request.args.get("since")
    if since_arg is not None:
        since = parse_since(since_arg, published.version)
        if since == published.version:
            return not_modified(published)
        if since == published.previous_version and published.delta_from_previous is not None:
            return published.delta_from_previous[0], 200, published.delta_from_previous[1]
        if since >= service.oldest_delta_base():
            cached = published.deltas.get(since)
            if cached is None:
                body = service.delta_since(since, service.find(published.version))
                if body is not None:
                    cached = signed_delta(published.version, body)
                    if cached is not None:
                        cache.remember_delta(published, since, cached)
            if cached is not None:
                return cached[0], 200, cached[1]
        # Older than the kept history (or beyond what it can tell), or a delta this instance cannot sign: the
        # full table, applied as a whole.
    else:
        if_none_match = request.headers.get("If-None-Match", "")
        if if_none_match.strip() == "*":  # RFC 9110 §13.1.2: matches any current table
            return not_modified(published)
        for candidate in if_none_match.split(","):
            match = ETAG_VALUE.match(candidate.strip())
            if match and int(match.group(1)) == published.version:
                return not_modified(published)
            if match and int(match.group(1)) > published.version:
                ahead(int(match.group(1)), published.version)
        # A malformed If-None-Match matches nothing (RFC 9110): the full table is the answer.
    return published.body, 200, published.headers


@bp.get("/routes/<node_id>")
def route_entry(node_id: str):
    cache = cache_for(current_app)
    published = cache.current()
    authenticated_node(cache, published)
    if published is None:
        raise RoutesUnavailable("No routing table has been published yet.")
    if published.entries is None:
        published.entries = {e["node_id"]: e for e in json.loads(published.body)["nodes"]}
    entry = published.entries.get(node_id)
    if entry is None:  # the path is named back only when it is a node id: not 3,000 characters, nor a bidi override
        if not NODE_ID.fullmatch(node_id):
            raise NotFound(f"This is no node id (node ids are 20 digits): routing table version {published.version} "
                           "lists no such node.", code="node_not_routed")
        raise NotFound(f"Node {node_id} is not in routing table version {published.version}.",
                       code="node_not_routed")
    # As the table: the next version may drop or change this entry.
    return {"version": published.version, "entry": entry}, 200, {"Cache-Control": "no-cache"}
