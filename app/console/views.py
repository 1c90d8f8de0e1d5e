"""The dashboard and the management node's own health check."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required
from sqlalchemy import func, select, text

from app.audit.models import AuditRecord
from app.auth.models import User
from app.console import dashboard_panels
from app.database import schema_state, utcnow
from app.divisions import service as divisions
from app.extensions import db

bp = Blueprint("console", __name__)


@bp.get("/")
@login_required
def dashboard():
    """Each tile only for those who may open what it counts: users for ministry admins, the audit
    log for them and auditors; the feature panels scope themselves."""
    users_by_role, audit_total, recent = None, None, []
    if current_user.role == "ministry_admin":
        users_by_role = dict(db.session.execute(select(User.role, func.count()).group_by(User.role)).all())
    if current_user.role in ("ministry_admin", "auditor"):
        audit_total = db.session.scalar(select(func.count(AuditRecord.id))) or 0
        recent = list(db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(8)))
    panels = [panel(current_user) for panel in dashboard_panels]
    return render_template(
        "console/dashboard.html",
        division_counts=divisions.counts(), revision=divisions.latest_revision(),
        users_by_role=users_by_role, audit_total=audit_total, recent=recent, panels=[p for p in panels if p],
    )


@bp.get("/healthz")
def healthz():
    """SPEC §4: the management node's own health: the database reachable, and its schema not older
    than this code (a load balancer should not send requests that fail on a missing column)."""
    schema = "unknown"
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        schema = schema_state()
    except Exception:  # any failure means unhealthy; the reason goes to the log, not the answer
        db.session.rollback()
        database = "error"
    status = 200 if database == "ok" and schema in ("current", "ahead") else 503
    return {"status": "ok" if status == 200 else "error", "database": database, "schema": schema,
            "time": utcnow().isoformat().replace("+00:00", "Z")}, status
