"""Audit log console page: filters, pagination and a CSV export (a POST: it is audited); for ministry admins
and auditors."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from app.audit import export, search
from app.audit.stored import StoredRecords
from app.auth.access import roles_required
from app.console.pages import shows_page
from app.database import paginate, utcnow
from app.errors import ValidationFailed
from app.extensions import db

bp = Blueprint("audit", __name__, url_prefix="/audit")


def _filter() -> search.AuditFilter:
    return search.AuditFilter.from_values(request.args, current_app.config["MPIM_DISPLAY_TIMEZONE"])


@bp.get("/")
@roles_required("ministry_admin", "auditor")
def index():
    return _list_page(_filter())


def _list_page(audit_filter: search.AuditFilter, *, refused_export: int | None = None):
    """The list under `audit_filter`; after an export refused for its size (`refused_export` records), that
    refusal above it, answered 422."""
    query, not_dates = search.records(audit_filter)
    records = StoredRecords(db.session.get_bind().dialect)  # a record edited in the database is listed as stored
    page = paginate(query.with_only_columns(*records.columns), request.args.get("page", 1, type=int),
                    current_app.config["MPIM_PAGE_SIZE"], decode=records.decode)
    return render_template("audit/index.html", page=page, filters=audit_filter, not_dates=not_dates,
                           export_max=current_app.config["MPIM_AUDIT_EXPORT_MAX_ROWS"],
                           refused_export=refused_export), 200 if refused_export is None else 422


@bp.post("/export.csv")
@shows_page("audit.index")  # a refused export's page (its token expired) switches language back to the list
@roles_required("ministry_admin", "auditor")
def export_csv():
    """Every record the filter selects, streamed; the export itself is audited before the first line. A POST
    (the list's export button, its filters in hidden fields) carrying the CSRF token, as every console form:
    the export writes an audit record in the admin's name, which no other site may make them write."""
    audit_filter = search.AuditFilter.from_values(request.form, current_app.config["MPIM_DISPLAY_TIMEZONE"])
    if any("\x00" in value for value in audit_filter.as_dict().values()):  # as the list's address, refused
        raise ValidationFailed(_l("A filter holds a NUL character (%00), which no filter takes."),
                               code="invalid_request")
    query, not_dates = search.records(audit_filter)
    if not_dates:  # the list says which date is no date; an empty file would look like an empty log
        return redirect(url_for("audit.index", **audit_filter.as_dict()))
    # A sync worker is killed once a request outlasts its timeout: a long log's download was cut off halfway,
    # already audited. Refused before anything is written; the list says why and names the CLI.
    selected = db.session.scalar(select(func.count()).select_from(query.subquery()))
    if selected > current_app.config["MPIM_AUDIT_EXPORT_MAX_ROWS"]:
        return _list_page(audit_filter, refused_export=selected)
    query = export.record_export(audit_filter, query)
    db.session.commit()
    lines = export.csv_lines(db.engine, query, audit_filter.zone, export.action_labels(),
                             export.header(audit_filter.zone, names=True))  # a person opens it
    name = export.file_name(utcnow(), audit_filter.zone)
    # The whole log, signed-in data as a page is: not kept in the browser's cache (security_headers covers pages).
    return Response(lines, mimetype="text/csv", headers={"Content-Disposition": f"attachment; filename={name}",
                                                         "Cache-Control": "no-store"})


@bp.get("/export.csv")
@roles_required("ministry_admin", "auditor")
def export_address():
    """The export's address opened (a link saved when the export was one, or one another site sends the admin
    to): the list with the same filters, one click from the file, and nothing written. A redirect rather than
    a 405, which would leave the admin on an error page with no way on; the list only reads."""
    return redirect(url_for("audit.index", **_filter().as_dict()), code=303)
