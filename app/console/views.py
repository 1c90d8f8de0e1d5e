"""The dashboard and the management node's own health check."""

from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required
from sqlalchemy import func, select, text

from app.audit import stored
from app.audit.models import AuditRecord
from app.auth.models import User
from app.console import dashboard_panels, run_health_checks
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
        recent = list(stored.newest(8))  # a record edited in the database is listed as stored, marked
    panels = [panel(current_user) for panel in dashboard_panels]
    return render_template(
        "console/dashboard.html",
        division_counts=divisions.counts(), revision=divisions.latest_revision(),
        users_by_role=users_by_role, audit_total=audit_total, recent=recent, panels=[p for p in panels if p],
    )


@bp.get("/healthz")
def healthz():
    """SPEC §4: the management node's own health: the database reachable, its schema not older than
    this code (a load balancer should not send requests that fail on a missing column), and the
    features' checks (`console.health_checks`): "ca", whether this process can sign with the CA.

    A CA that exists but cannot be opened here (a wrong passphrase, an unreadable or missing key file)
    makes the answer 503, though much still works without it (the console, resolve, sessions, the
    stored routing table and CRLs, and the published certificates and a node's certificate download,
    read as files: app/pki/published.py): issuing on approval, renewal, revocation, every OCSP response
    (each is signed) and publishing a new routing table all fail on this instance. The load balancer
    sends those to an instance that can sign; when none can (one environment file shared by all), it
    is told so at once rather than by the first failed issuance, and the "ca" field says why. A CA not
    yet initialised is 200: no instance has one to route to."""
    schema = "unknown"
    try:
        db.session.execute(text("SELECT 1"))
        database = "ok"
        schema = schema_state()
    except Exception:  # any failure means unhealthy; the reason goes to the log, not the answer
        db.session.rollback()
        database = "error"
    checks = run_health_checks()
    healthy = database == "ok" and schema in ("current", "ahead") and all(serving for _, serving, _ in checks.values())
    status = 200 if healthy else 503
    return {"status": "ok" if healthy else "error", "database": database, "schema": schema,
            **{field: value for field, (value, _, _) in checks.items()},
            "time": utcnow().isoformat().replace("+00:00", "Z")}, status
