"""Admission API (SPEC §4): applications with an enrollment token, and division resolution."""

from __future__ import annotations

from flask import Blueprint, request
from werkzeug.exceptions import RequestEntityTooLarge

from app.admission import applications, nodes, tokens
from app.divisions import service as divisions
from app.errors import DomainError, ValidationFailed
from app.extensions import csrf, db
from app.strict_json import NotStrictJSON, parse

bp = Blueprint("admission_api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


class UnsupportedMediaType(DomainError):
    code = "unsupported_media_type"
    status = 415


def bearer_token() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def request_body() -> bytes:
    """The whole body, or 413 past MAX_CONTENT_LENGTH. Werkzeug refuses a Content-Length over the limit,
    but reads a chunked body only up to it and returns those bytes as if they were all of it."""
    data = request.get_data(cache=True)
    limit = request.max_content_length
    if request.content_length is None and limit is not None and len(data) >= limit \
            and request.environ["wsgi.input"].read(1):
        raise RequestEntityTooLarge()
    return data


def json_body() -> dict:
    """The body must be declared and parse as a strict JSON object (app.strict_json: UTF-8 without a BOM, no
    duplicate keys, no lone surrogates); anything else is refused up front, before a service sees it.

    Every JSON-body endpoint of the registry (applications, session, renewal) reads its body here."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        document = parse(request_body())
    except NotStrictJSON as error:
        reason = str(error)
        raise ValidationFailed(f"{reason[0].upper()}{reason[1:]}.", code="invalid_json") from None
    if not isinstance(document, dict):
        raise ValidationFailed("The body must be a JSON object.", code="invalid_body")
    return document


def application_status(application) -> dict:
    body = {"application_id": application.id, "status": application.status}
    if application.node_id:
        body["node_id"] = application.node_id
    if application.reason:
        body["reason"] = application.reason
    return body


@bp.post("/applications")
def submit():
    token = bearer_token()
    # §4: the token is checked first, as a session is on the other doors: a caller without a good one learns
    # that, not what is wrong with a body it may not send. A used token's body is read: it may be the request
    # that used it, sent again after its answer was lost (`applications.replayed`); anything else is token_used.
    found = tokens.find_by_raw(token)
    if found.state() != "used":
        tokens.require_usable(found)
    document = json_body()
    application = applications.submit_with_token(token, document)
    db.session.commit()
    # A replay is answered as the request it repeats was, with the application as it is now: a node that
    # lost the 201 (the reference node takes only a 201) gets what it missed.
    return application_status(application), 201


@bp.get("/applications/<application_id>")
def status(application_id: str):
    return application_status(applications.get_for_token(application_id, bearer_token()))


@bp.get("/resolve")
def resolve():
    code = request.args.get("division", "")
    node, level = nodes.resolve(code, "division")  # the query parameter a refusal names
    division = divisions.get(code, "division")
    # A retired code still resolves (old addresses keep working), but the caller should learn it is retired.
    return {"division": code, "division_retired": division.retired, "retired_in": division.retired_in,
            "matched_level": level, "matched_division": node.division_code,
            "node": {"node_id": node.node_id, "division_code": node.division_code, "org_name": node.org_name,
                     "system_name": node.system_name, "endpoint": node.endpoint}}
