"""One key, one node; one endpoint, one node (SPEC §3): the checks admission, change requests and renewal
make before they store a CSR's key or an endpoint, and the locks that keep two requests from both passing."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from flask_babel import lazy_gettext as _l
from sqlalchemy import or_, select

from app.admission.models import Application, Node
from app.database import serialise
from app.errors import Conflict
from app.extensions import db


def require_endpoint_free(endpoint: str, node_id: str | None = None, application_id: str | None = None, *,
                           by=None) -> None:
    """One endpoint, one node: a second node at the same URL would make routing ambiguous.

    An endpoint is easy to guess, and §4 tells whether an id names a node, and the state of a node the table no
    longer lists, only to that node: the refusal names the node (or the waiting application) only to `by`, an
    admin whose scope covers it; an enrollment-token holder, or an admin of another province, reads the code."""
    require_not_the_management_host(endpoint)
    taken = db.session.execute(select(Node.node_id, Node.division_code).where(
        Node.endpoint == endpoint, Node.status != "revoked", Node.node_id != (node_id or "")).limit(1)).first()
    if taken:
        message = _l("Node %(node)s already serves %(url)s.", node=taken.node_id, url=endpoint) \
            if may_see(by, taken.division_code) else _l("Another node already serves %(url)s.", url=endpoint)
        raise Conflict(message, code="endpoint_in_use", field="endpoint")
    pending = db.session.execute(select(Application.id, Application.division_code).where(
        Application.endpoint == endpoint, Application.status == "pending",
        Application.id != (application_id or "")).limit(1)).first()
    if pending:
        message = _l("Application %(id)s for %(url)s is already waiting for review.", id=pending.id, url=endpoint) \
            if may_see(by, pending.division_code) else \
            _l("Another application for %(url)s is already waiting for review.", url=endpoint)
        raise Conflict(message, code="endpoint_pending", field="endpoint")


def require_not_the_management_host(endpoint: str) -> None:
    """A node's certificate names its endpoint's host, as the management node's TLS certificate names its own
    (`MPIM_BASE_URL`): a node at that host would hold a certificate a client trusting the root takes for the
    management node's (the reference node's registry client checks the host name), and be handed enrollment and
    session tokens. Refused, whatever the port. A loopback host is one machine (development, the tests), where
    taking the management node's place needs the machine already: allowed."""
    from app.pki.service import ca_config

    host, own = _host(urlsplit(endpoint).hostname), _host(ca_config().management_host)
    if host != own or _loopback(own):
        return
    raise Conflict(_l("%(host)s is the management node's own host: its certificate names it, so no node's "
                      "certificate may. Serve the node at another host name or address.", host=own),
                   code="endpoint_is_management_node", field="endpoint")


def _host(name: str | None) -> str:
    """A host as compared: an IP address in its one spelling, a DNS name lower-case without its final dot, in
    its ASCII form (A-labels), as certificates name it (`profiles.host_name`) and endpoints are written."""
    name = (name or "").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    try:
        return name.encode("idna").decode("ascii").lower()
    except UnicodeError:  # no name IDNA can write: compared as it is
        return name


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")


def may_see(user, division_code: str | None) -> bool:
    """Whether a refusal may name to `user` what holds a key or endpoint; `division_code` None: the management
    node itself (a service certificate), in the division its own node id names (`nodes.management_node_id`)."""
    return user is not None and user.can_access_division(division_code or "100000")


def lock_names(key_sha256: str | None, endpoint: str | None) -> list[str]:
    from app.pki import service as pki

    return [name for name in (key_sha256 and pki.key_lock_name(key_sha256), endpoint and f"endpoint:{endpoint}")
            if name]


def hold(*, key_sha256: str | None = None, endpoint: str | None = None) -> None:
    """Hold the key and endpoint this request checks until it commits, so two requests that arrive
    together cannot both pass "is it free?" (see `serialise`)."""
    serialise(*lock_names(key_sha256, endpoint))


def require_key_free(key_sha256: str | None, node_id: str | None = None, *, by=None) -> None:
    """One key, one node: refuse a CSR whose key another node's certificate (not revoked) or another
    pending application already carries; `node_id`'s own certificates and change request do not count.
    Admission and renewal ask this (the caller holds the key's lock, see `hold`). As `require_endpoint_free`,
    the refusal names the holder only to `by`, an admin whose scope covers it."""
    from app.pki import service as pki

    if not key_sha256:
        return
    pki.require_key_unused(key_sha256, node_id, by=by)
    query = select(Application.id, Application.division_code).where(Application.key_sha256 == key_sha256,
                                                                     Application.status == "pending")
    if node_id:
        query = query.where(or_(Application.node_id.is_(None), Application.node_id != node_id))
    pending = db.session.execute(query.limit(1)).first()
    if pending:
        message = _l("Application %(id)s with this CSR's key is already waiting for review: every node needs its own "
                     "key. Generate a new key and CSR.", id=pending.id) if may_see(by, pending.division_code) else \
            _l("Another application with this CSR's key is already waiting for review: every node needs its own key. "
               "Generate a new key and CSR.")
        raise Conflict(message, code="key_pending", field="csr")
