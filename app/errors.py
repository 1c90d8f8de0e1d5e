"""Domain errors: raised by services, mapped once to JSON (API) or to a flash/form error (console)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from flask_babel import lazy_gettext as _l

# The console's words for HTTP errors (Werkzeug's own are English); the JSON API keeps Werkzeug's.
HTTP_TITLES = {
    400: _l("Bad request"), 401: _l("Sign-in required"), 403: _l("Access denied"), 404: _l("Page not found"),
    405: _l("Method not allowed"), 408: _l("Request timed out"), 409: _l("Conflict"), 410: _l("Gone"),
    413: _l("Request too large"), 415: _l("Unsupported content type"), 429: _l("Too many requests"),
    500: _l("Internal error"), 502: _l("Bad gateway"), 503: _l("Service unavailable"),
}
HTTP_EXPLANATIONS = {
    400: _l("The browser sent a request the console could not understand."),
    401: _l("Please sign in to see this page."),
    403: _l("Your account may not open this page."),
    404: _l("There is no such page. If you typed the address, check it."),
    405: _l("This page does not accept this kind of request."),
    408: _l("The browser did not finish the request in time; try again."),
    409: _l("The request conflicts with the current state; reload the page and try again."),
    410: _l("This page is no longer available."),
    415: _l("The console does not accept this type of content."),
    429: _l("Too many requests; wait a moment and try again."),
    500: _l("The console failed to complete the request. Try again later; if it keeps happening, tell the "
            "administrator."),
    502: _l("An upstream server gave an invalid answer."),
    503: _l("The console is temporarily unavailable; try again later."),
}


class DomainError(Exception):
    """A rule of the domain was broken; carries a stable snake_case code for API clients."""

    code = "domain_error"
    status = 400
    also: tuple[DomainError, ...] = ()  # more refusals of the same request (`Refusals`), shown by the console

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


class Refusals:
    """The refusals of a form's independent checks, collected so that one submit shows every field's at once
    (a console form showed one per submit: six wrong fields, six round trips). `raise_any` raises the first,
    carrying the rest in `also`: the API answers that first one alone, SPEC's one error object, as before."""

    def __init__(self) -> None:
        self.errors: list[ValidationFailed] = []

    @contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except ValidationFailed as error:
            self.errors.extend(every_refusal(error))

    def raise_any(self) -> None:
        if self.errors:
            first, *rest = self.errors
            first.also = tuple(rest)
            raise first


def every_refusal(error: DomainError) -> list[DomainError]:
    """`error` and the refusals it carries (`Refusals`)."""
    return [error, *getattr(error, "also", ())]


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


class Unavailable(DomainError):
    """A part the registry depends on is away for now; `retry_after` (seconds) goes out as Retry-After."""

    code = "unavailable"
    status = 503

    def __init__(self, message, *, code: str | None = None, retry_after: int = 5):
        super().__init__(message, code=code)
        self.retry_after = retry_after


def wants_json() -> bool:
    from flask import request

    return request.path.startswith(("/api/", "/ca/")) or request.is_json


def size_text(size: int, *, binary_units: bool = False) -> str:
    """1048576 -> "1 MB", 65536 -> "64 KB": how the console states a size limit; with `binary_units`, "1 MiB" and
    "64 KiB", as docs/protocol.md states the API's. A limit that is no whole unit is its byte count, grouped
    ("1,500,000 B"): bare, it read as a typo for a round figure."""
    units = ("MiB", "KiB") if binary_units else ("MB", "KB")
    for unit, factor in zip(units, (1024 * 1024, 1024), strict=True):
        if size >= factor and size % factor == 0:
            return f"{size // factor} {unit}"
    return f"{size:,} B"


def api_http_message(error) -> str:
    """The API's message for an HTTP error: a 413 over MAX_CONTENT_LENGTH states the limit, where Werkzeug's
    stock text ("The data value transmitted exceeds the capacity limit.") leaves the client to guess it."""
    from flask import current_app
    from werkzeug.exceptions import RequestEntityTooLarge

    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    if isinstance(error, RequestEntityTooLarge) and limit and error.description == type(error).description:
        stated = size_text(limit, binary_units=True)
        if stated.endswith(" B"):  # no whole unit: the byte count alone, not "1,500,000 B (1,500,000 bytes)"
            return f"The body is larger than {limit:,} bytes."
        return f"The body is larger than {stated} ({limit:,} bytes)."
    return error.description


def http_explanation(error) -> str:
    """The console's sentence for an HTTP error: ours for Werkzeug's stock text, else the raiser's own."""
    from flask import current_app
    from flask_wtf.csrf import CSRFError
    from werkzeug.exceptions import RequestEntityTooLarge

    if isinstance(error, CSRFError):
        return _l("The form expired or did not come from this console: go back, reload the page and try again.")
    if isinstance(error, RequestEntityTooLarge):
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        if limit:
            return _l("The request is too large: the console accepts at most %(limit)s.", limit=size_text(limit))
    if error.description == type(error).description and error.code in HTTP_EXPLANATIONS:
        return HTTP_EXPLANATIONS[error.code]
    return error.description


# How long a client is told to wait when the database is away (RFC 9110 §10.2.3, delay-seconds).
DATABASE_RETRY_SECONDS = 5


def init_app(app) -> None:
    """One handler per error kind: JSON for the API, an error page for the console."""
    from flask import render_template
    from sqlalchemy.exc import OperationalError
    from werkzeug.exceptions import HTTPException

    def page(status: int, message):
        return render_template("error.html", status=status, title=HTTP_TITLES.get(status, status),
                               message=message), status

    @app.before_request
    def refuse_nul_in_console_address():
        """A NUL (%00) in a console page's path or query string is no code, id, name or filter anyone means,
        and PostgreSQL refuses it in any text it is compared with: every list filter and look-up answered 500.
        (The API checks each code and id it takes, and answers with that field's own error.)"""
        from flask import request

        if request.path.startswith(("/api/", "/ca/")):
            return
        if "\x00" in request.path or any("\x00" in key + value for key, value in request.args.items(multi=True)):
            raise ValidationFailed(_l("The address holds a NUL character (%00), which no page takes."),
                                   code="invalid_request")

    @app.errorhandler(DomainError)
    def handle_domain_error(error: DomainError):
        headers = {"Retry-After": str(error.retry_after)} if isinstance(error, Unavailable) else {}
        if wants_json():
            if error.status == 401:
                # RFC 9110 §11.6.1: a 401 names the scheme to use; the API knows only bearer tokens (RFC 6750).
                headers["WWW-Authenticate"] = 'Bearer realm="mpim"'
            return error.to_dict(), error.status, headers
        return *page(error.status, error.message), headers

    @app.errorhandler(OperationalError)
    def handle_database_unavailable(error: OperationalError):
        """The database refused or dropped the connection (a restart, a failover, a lock held too long):
        a 503 the client retries, not a 500 that says this server is broken. The pool's pre-ping finds
        the database again on the next request once it is back."""
        from flask import current_app, g

        from app.extensions import db

        db.session.rollback()
        # The page is drawn as for a visitor: the signed-in user, the navigation and the banners are
        # read from the database that is away.
        g._login_user = current_app.login_manager.anonymous_user()
        current_app.logger.error("database unavailable: %s", str(error.orig or error).splitlines()[0])
        retry = {"Retry-After": str(DATABASE_RETRY_SECONDS)}
        if wants_json():
            return {"error": {"code": "database_unavailable",
                              "message": "The registry's database is unavailable; try again shortly."}}, 503, retry
        return *page(503, HTTP_EXPLANATIONS[503]), retry

    @app.errorhandler(HTTPException)
    def handle_http_error(error: HTTPException):
        # What the status needs besides a body (Allow on a 405, Retry-After, ...); the body is ours.
        headers = [(name, value) for name, value in error.get_headers() if name.lower() != "content-type"]
        if wants_json():
            code = (error.name or "error").lower().replace(" ", "_")
            return {"error": {"code": code, "message": api_http_message(error)}}, error.code, headers
        return *page(error.code, http_explanation(error)), headers
