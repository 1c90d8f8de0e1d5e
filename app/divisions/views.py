"""Console division browser: drill down province → prefecture → county, and search."""

from __future__ import annotations

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from flask_login import login_required

from app.database import paginate
from app.divisions import service
from app.divisions.codes import NATION_CODE

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
    if code == NATION_CODE:  # the nation is the browser's top level (the API answers it as a division)
        return redirect(url_for("divisions.browse"))
    division = service.get(code)
    return render_template("divisions/browse.html", current=division, trail=service.path(division),
                           items=service.children(division.code, include_retired=True))
