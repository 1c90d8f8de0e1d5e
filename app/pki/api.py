"""CA endpoints (SPEC §4): the trust anchor, chain, CRL, OCSP, route signer; node certificates."""

from __future__ import annotations

import base64
import logging

from cryptography import x509
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.ocsp import OCSPResponseStatus
from flask import Blueprint, Response, g, request
from werkzeug.exceptions import UnsupportedMediaType
from werkzeug.http import http_date

from app.admission import information, nodes, tokens
from app.admission.api import bearer_token, json_body, request_body
from app.errors import NotFound, PermissionDenied
from app.extensions import csrf, db
from app.pki import keys, ocsp, own_keys, published, revocation, service
from app.pki.crl import entity_tag
from app.pki.models import CRLState
from app.sessions import service as sessions
from app.sessions.api import node_session_required

log = logging.getLogger("mpim.pki")
bp = Blueprint("pki_api", __name__)
csrf.exempt(bp)
PEM = "application/x-pem-file"


def pem(data: str | bytes) -> Response:
    return Response(data, mimetype=PEM, headers={"Cache-Control": "no-cache"})


@bp.get("/ca/ca.pem")
def root_certificate():
    return pem(published.certificate_pem(published.ROOT))


@bp.get("/ca/chain.pem")
def chain():
    return pem(published.certificate_pem(published.INTERMEDIATE))


@bp.get("/ca/route-signer.pem")
def route_signer():
    return pem(published.certificate_pem(published.ROUTE_SIGNER))


def crl_response(state: CRLState, data: str | bytes, mimetype: str) -> Response:
    """A CRL with its validator (docs/protocol.md §4): a strong ETag (`entity_tag`), and a conditional GET for
    the CRL the caller holds answered 304 without it. No Last-Modified: thisUpdate is in whole seconds, two CRLs
    can be signed within one, and an If-Modified-Since revalidation kept the older. `no-cache` rather than a
    max-age: a revocation
    regenerates the CRL at once and a node is to see it at its next fetch, which a cache allowed to keep the
    CRL for a while would defer; made to ask every time, a cache never hands out one past its nextUpdate
    either, and asking costs a 304."""
    body = data.encode() if isinstance(data, str) else data
    response = Response(body, mimetype=mimetype)
    response.headers["ETag"] = entity_tag(state.crl_number, body)
    response.cache_control.public = True
    response.cache_control.no_cache = True
    return response.make_conditional(request)


@bp.get("/ca/crl.pem")
def crl_pem():
    state = revocation.current_crl()
    return crl_response(state, state.pem, PEM)


@bp.get("/ca/crl.crl")
def crl_der():
    state = revocation.current_crl()
    return crl_response(state, state.der, "application/pkix-crl")


@bp.get("/ca/root-crl.pem")
def root_crl_pem():
    state = revocation.current_crl(revocation.ROOT_CRL)
    return crl_response(state, state.pem, PEM)


@bp.get("/ca/root-crl.crl")
def root_crl_der():
    state = revocation.current_crl(revocation.ROOT_CRL)
    return crl_response(state, state.der, "application/pkix-crl")


@bp.post("/ca/ocsp")
def ocsp_post():
    if request.mimetype != "application/ocsp-request":
        raise UnsupportedMediaType("Send an application/ocsp-request body.")
    return _ocsp_response(request_body())


@bp.get("/ca/ocsp/<path:encoded>")
def ocsp_get(encoded: str):
    """RFC 6960 A.1.1: the DER request, base64, URL-encoded in the path (what NSS and Java send for
    small requests). Anything that is not base64 gets the same malformedRequest a bad POST body gets."""
    try:
        request_der = base64.b64decode(encoded, validate=True)
    except ValueError:
        request_der = b""
    response = _ocsp_response(request_der)
    response.headers.update(get_cache_headers(response.get_data()))
    return response


def get_cache_headers(answer: bytes) -> dict[str, str]:
    """What a cache may do with an answer over GET (the form RFC 6960 A.1 has for caching). A signed answer without
    a nonce may be stored but is checked with us before each use (`no-cache`, as the CRL is): a revocation is
    to be seen at the next ask, as the CRL shows it at once, not an hour later at the answer's nextUpdate.
    Last-Modified and Expires still say when it was made and how long it is valid. An answer to a nonce is its
    asker's alone, and an error (tryLater, malformedRequest) is worth nothing later: neither is stored."""
    parsed = x509_ocsp.load_der_ocsp_response(answer)
    if (parsed.response_status != OCSPResponseStatus.SUCCESSFUL
            or any(isinstance(extension.value, x509.OCSPNonce) for extension in parsed.extensions)):
        return {"Cache-Control": "no-store"}
    return {"Cache-Control": "public, no-cache, no-transform",
            "Last-Modified": http_date(parsed.this_update_utc), "Expires": http_date(parsed.next_update_utc)}


def _ocsp_response(request_der: bytes) -> Response:
    """OCSP answers are signed with the intermediate key. When it cannot be loaded the answer is RFC 6960's
    unsigned "tryLater", which OCSP clients understand (openssl: "Responder Error: trylater"), with
    Retry-After; anyone may ask, so it says nothing of why (the reason names files and the passphrase: it
    is for the log and the admins' banner)."""
    try:
        answer = revocation.ocsp_response(request_der)
    except (keys.CAKeyUnreadable, service.CANotReady):
        return Response(ocsp.unsuccessful(OCSPResponseStatus.TRY_LATER), mimetype="application/ocsp-response",
                        headers={"Retry-After": str(published.RETRY_SECONDS)})
    return Response(answer, mimetype="application/ocsp-response")


def _caller_may_fetch(node_id: str) -> None:
    """The enrollment token that admitted this node, or a session of the node itself. The caller is
    checked before the node is looked up, so nobody else learns which node ids exist."""
    raw = bearer_token()
    if raw and raw.startswith(tokens.TOKEN_PREFIX):
        token = tokens.find_by_raw(raw)
        try:
            node = nodes.get(node_id)
        except NotFound:
            node = None
        if node is None or token.id != node.enrolled_by_token_id:  # the path named back only when it is a node id
            named = node_id if nodes.NODE_ID.fullmatch(node_id) else "this node id (node ids are 20 digits)"
            raise NotFound(f"No certificate for {named} with this token.", code="certificate_not_found")
    elif sessions.authenticate(raw) != node_id:
        raise PermissionDenied("This session belongs to another node.", code="wrong_node")


@bp.get("/api/v1/nodes/<node_id>/certificate")
def node_certificate(node_id: str):
    """PEM: the node's current certificate followed by the CA chain (intermediate, root)."""
    _caller_may_fetch(node_id)
    current = service.current_certificate(node_id)
    if current is None:
        raise NotFound(f"Node {node_id} has no valid certificate.", code="certificate_not_found")
    return pem(current.pem.encode() + published.chain_pem())


@bp.post("/api/v1/certificates/renew")
@node_session_required
def renew():
    """While the CA key cannot be opened (or the CA directory is missing), or the route signer in use is revoked or
    expired (the new version the renewal publishes cannot be signed until the hourly job rotates it), the node gets
    `ca_unavailable` with Retry-After, as for the published certificates: the reason names CA files, the
    directory or the signer's serial, which is for the log and the ministry admins' banner, not for the nodes."""
    document = json_body()
    node = nodes.get(g.node_id)
    try:
        raw = bearer_token()
        row = service.renew(node, information.csr_text(document.get("csr")),
                            still_entitled=lambda: sessions.authenticate(raw))
        chain = service.authority().chain_pem()
    except (keys.CAKeyUnreadable, service.CANotReady, own_keys.RouteSignerUnusable) as error:
        log.warning("certificate renewal of %s refused for now: %s", node.node_id, error.message)
        raise published.CAUnavailable() from error
    db.session.commit()
    return pem(row.pem.encode() + chain), 201
