"""`GET /api/v1/divisions/{code}` (SPEC §4)."""

from __future__ import annotations

from flask import Blueprint

from app.divisions import service

bp = Blueprint("divisions_api", __name__, url_prefix="/api/v1/divisions")


@bp.get("/<code>")
def show(code: str):
    return service.describe(code)
