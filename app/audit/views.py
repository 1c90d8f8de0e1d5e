"""Audit log console page: filters and pagination; visible to ministry admins and auditors."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, render_template, request
from sqlalchemy import false, select

from app.audit.models import AuditRecord
from app.auth.access import roles_required
from app.database import paginate

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _day_bound(value: str, end: bool) -> datetime | None:
    """The start of the day (of the next, for `end`) in UTC; ValueError when it is not a date, None when
    the bound falls outside the years a datetime holds (0001-01-01 here is in year 0 in UTC, the day after
    9999-12-31 is none), which bounds nothing anyway."""
    day = datetime.strptime(value, "%Y-%m-%d").date()
    zone = ZoneInfo(current_app.config["MPIM_DISPLAY_TIMEZONE"])
    try:
        moment = datetime.combine(day, time.min, tzinfo=zone)
        return (moment + timedelta(days=1) if end else moment).astimezone(UTC)
    except (ValueError, OverflowError):
        return None


@bp.get("/")
@roles_required("ministry_admin", "auditor")
def index():
    filters = {key: request.args.get(key, "").strip() for key in ("actor", "action", "target", "since", "until")}
    query = select(AuditRecord).order_by(AuditRecord.seq.desc())
    if filters["actor"]:
        query = query.where(AuditRecord.actor == filters["actor"])
    if filters["action"]:
        query = query.where(AuditRecord.action.startswith(filters["action"], autoescape=True))
    if filters["target"]:
        query = query.where(AuditRecord.target.contains(filters["target"], autoescape=True))  # % and _ as typed
    not_dates, bounds = [], {}  # a hand-typed URL can hold 2025-02-30: say so rather than list unfiltered
    for key in ("since", "until"):
        if filters[key]:
            try:
                bounds[key] = _day_bound(filters[key], end=key == "until")
            except ValueError:
                not_dates.append(filters[key])
    if bounds.get("since"):
        query = query.where(AuditRecord.at >= bounds["since"])
    if bounds.get("until"):
        query = query.where(AuditRecord.at < bounds["until"])
    if not_dates:
        query = query.where(false())
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"])
    return render_template("audit/index.html", page=page, filters=filters, not_dates=not_dates)
