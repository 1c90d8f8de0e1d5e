"""Domain errors: raised by services, mapped once to JSON (API) or to a flash/form error (console)."""

from __future__ import annotations


class DomainError(Exception):
    """A rule of the domain was broken; carries a stable snake_case code for API clients."""

    code = "domain_error"
    status = 400

    def __init__(self, message, *, code: str | None = None, field: str | None = None,
                 status: int | None = None):
        super().__init__(str(message))
        # May be a lazy translation: rendered in the reader's language when shown.
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status
        self.field = field

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": str(self.message)}
        if self.field:
            body["field"] = self.field
        return {"error": body}


class ValidationFailed(DomainError):
    code = "invalid_input"
    status = 400


class NotFound(DomainError):
    code = "not_found"
    status = 404


class PermissionDenied(DomainError):
    code = "forbidden"
    status = 403


class Unauthorized(DomainError):
    code = "unauthorized"
    status = 401


class Conflict(DomainError):
    code = "conflict"
    status = 409


def wants_json() -> bool:
    from flask import request

    return request.path.startswith(("/api/", "/ca/")) or request.is_json


def init_app(app) -> None:
    """One handler per error kind: JSON for the API, an error page for the console."""
    from flask import render_template
    from werkzeug.exceptions import HTTPException

    @app.errorhandler(DomainError)
    def handle_domain_error(error: DomainError):
        if wants_json():
            return error.to_dict(), error.status
        return render_template("error.html", status=error.status, message=error.message), error.status

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):
        if wants_json():
            code = (error.name or "error").lower().replace(" ", "_")
            return {"error": {"code": code, "message": error.description}}, error.code
        return render_template("error.html", status=error.code, message=error.description), error.code
