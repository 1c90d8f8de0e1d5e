"""Console: the current routing table, its version history with diffs, signed downloads."""

from __future__ import annotations

import base64
from datetime import timedelta

from flask import Blueprint, Response, current_app, render_template, request
from flask_babel import lazy_gettext as _l

from app.auth.access import roles_required
from app.database import paginate, utcnow
from app.errors import NotFound
from app.i18n import local_time
from app.routing import service

bp = Blueprint("routes", __name__, url_prefix="/routes")
# Ministry admins and auditors: the table lists every province's nodes, and provincial admins see their own.
VIEWERS = ("ministry_admin", "auditor")


@bp.get("/")
@roles_required(*VIEWERS)
def index():
    page = paginate(service.history_query(), request.args.get("page", 1, type=int),
                    current_app.config["MPIM_PAGE_SIZE"])
    return render_template("routing/index.html", head=service.head(), page=page)


def _with_body(version: int):
    row = service.find(version)
    if row is None or row.body is None:
        raise NotFound(_l("Version %(version)s is not kept any more (only the last %(n)s).", version=version,
                          n=service.KEEP_BODIES),
                       code="version_not_kept")
    return row


@bp.get("/v<int:version>.json")
@roles_required(*VIEWERS)
def download_table(version: int):
    row = _with_body(version)
    return Response(row.body, mimetype="application/json",
                    headers={"Content-Disposition": f"attachment; filename=routes-v{version}.json"})


@bp.get("/v<int:version>.sig")
@roles_required(*VIEWERS)
def download_signature(version: int):
    """The DER signature, ready for `openssl dgst -sha256 -verify signer.pub -signature …`."""
    row = _with_body(version)
    return Response(base64.b64decode(row.signature), mimetype="application/octet-stream",
                    headers={"Content-Disposition": f"attachment; filename=routes-v{version}.sig"})


# The re-signing job runs every 10 minutes once half the table's lifetime has passed; this much later, it is not.
RESIGN_GRACE = timedelta(minutes=30)


def banner(user) -> list[dict]:
    """Ministry admins and auditors are told when the table is not re-signed on time: every node refuses an
    expired table and can then look up no peer, and nothing else says so (it is the scheduler's job, and a
    stopped scheduler fails no request)."""
    if user.role not in VIEWERS:
        return []
    head = service.head()
    if head is None:
        return []
    now = utcnow()
    if now >= head.expires_at:
        return [{"kind": "error", "text": str(_l(
            "The routing table (version %(version)s) expired at %(time)s: application nodes refuse it and cannot "
            "look up their peers. Is the scheduler running? `flask routing publish --force` signs a new one now.",
            version=head.version, time=local_time(head.expires_at)))}]
    if now - head.issued_at > (head.expires_at - head.issued_at) / 2 + RESIGN_GRACE:
        return [{"kind": "warning", "text": str(_l(
            "The routing table (version %(version)s) was not re-signed on time and expires at %(time)s. Is the "
            "scheduler running? `flask routing publish --force` signs a new one now.",
            version=head.version, time=local_time(head.expires_at)))}]
    return []
