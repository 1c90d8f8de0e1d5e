"""`POST /api/v1/session` (SPEC §4, A.2) and the decorator other APIs use to require a session."""

from __future__ import annotations

from functools import wraps

from flask import Blueprint, g

from app.admission.api import bearer_token, json_body
from app.extensions import csrf, db
from app.sessions import service

bp = Blueprint("sessions_api", __name__, url_prefix="/api/v1")
csrf.exempt(bp)


@bp.post("/session")
def open_session():
    raw, expires_at, _ = service.open_session(json_body())
    db.session.commit()
    # A bearer token: no cache along the way, nor the client's, may keep the answer (RFC 6749 §5.1).
    return ({"token": raw, "expires_at": expires_at.isoformat().replace("+00:00", "Z")}, 201,
            {"Cache-Control": "no-store"})


def node_session_required(view):
    """Sets g.node_id to the authenticated node, or answers 401 with the reason."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        g.node_id = service.authenticate(bearer_token())
        return view(*args, **kwargs)

    return wrapper
