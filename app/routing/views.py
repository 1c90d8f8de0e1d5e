"""Console: the current routing table, its version history with diffs, signed downloads."""

from __future__ import annotations

import base64

from flask import Blueprint, Response, current_app, render_template, request
from flask_babel import lazy_gettext as _l

from app.auth.access import roles_required
from app.database import paginate
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
    return render_template("routing/index.html", head=service.head_summary(), page=page)


def _with_body(version: int):
    """A version's stored table, or why there is none: never published (a version skipped by `publish --above`
    among them), or published and its body let go since (only the last KEEP_BODIES are kept)."""
    row = service.find(version)
    if row is None:
        raise NotFound(_l("There is no routing table version %(version)s (the newest is %(head)s).",
                          version=version, head=service.head_version()), code="version_not_found")
    if row.body is None:
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


def banner(user) -> list[dict]:
    """Ministry admins and auditors are told when the table is not re-signed on time (`resigning_overdue`)."""
    overdue = service.resigning_overdue() if user.role in VIEWERS else None
    if overdue is None:
        return []
    state, head = overdue
    if state == "expired":
        return [{"kind": "error", "text": str(_l(
            "The routing table (version %(version)s) expired at %(time)s: application nodes refuse it and cannot "
            "look up their peers. Is the scheduler running? `flask routing publish --force` signs a new one now.",
            version=head.version, time=local_time(head.expires_at)))}]
    return [{"kind": "warning", "text": str(_l(
        "The routing table (version %(version)s) was not re-signed on time and expires at %(time)s. Is the "
        "scheduler running? `flask routing publish --force` signs a new one now.",
        version=head.version, time=local_time(head.expires_at)))}]
