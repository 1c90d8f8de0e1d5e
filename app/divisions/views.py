"""Console division browser: drill down province → prefecture → county, and search."""

from __future__ import annotations

from flask import Blueprint, current_app, render_template, request
from flask_login import login_required

from app.database import paginate
from app.divisions import service

bp = Blueprint("divisions", __name__, url_prefix="/divisions")


@bp.get("/")
@login_required
def browse():
    term = request.args.get("q", "").strip()
    if term:
        page = paginate(service.search_query(term), request.args.get("page", 1, type=int),
                        current_app.config["MPIM_PAGE_SIZE"])
        return render_template("divisions/search.html", term=term, page=page)
    return render_template("divisions/browse.html", current=None, trail=[], items=service.children(None))


@bp.get("/<code>")
@login_required
def drill(code: str):
    division = service.get(code)
    return render_template("divisions/browse.html", current=division, trail=service.path(division),
                           items=service.children(division.code, include_retired=True))
