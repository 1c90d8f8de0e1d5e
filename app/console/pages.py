"""The page a console address shows, for the links that bring a reader back to it with a GET: the language
switch, and signing in again after the session clock ran out.

A refused form comes back as its page, the refusal at the form, at the form's own address, which answers POST
only: a GET there is a 405. The view that does so names the page it shows with `@shows_page(endpoint)`, and
that page's address stands in for its own.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect


def shows_page(endpoint: str):
    """Mark a POST-only view that, refusing its form, renders the page at `endpoint` (its address takes the
    view's arguments of the same names)."""
    def mark(view):
        view.shows_page = endpoint
        return view
    return mark


def page_address(target: str | None) -> str | None:
    """The local address (path and query) a GET brings back for `target`, a local address or a URL of this
    host: `target` itself when it answers GET, the page a POST-only view names with `shows_page`, else None.
    Only an address of one of this console's routes comes back, so a `next` from outside cannot lead away."""
    if not target:
        return None
    parts = urlsplit(target)
    if parts.netloc and parts.netloc != request.host:  # the scheme may be a proxy's: only the path is kept
        return None
    query = f"?{parts.query}" if parts.query else ""
    adapter = current_app.create_url_adapter(request)
    try:
        adapter.match(parts.path, method="GET")
        return parts.path + query
    except RequestRedirect as moved:  # /nodes for /nodes/
        return urlsplit(moved.new_url).path + query
    except MethodNotAllowed:
        pass
    except HTTPException:
        return None
    try:
        endpoint, values = adapter.match(parts.path, method="POST")
    except HTTPException:
        return None
    page = getattr(current_app.view_functions.get(endpoint), "shows_page", None)
    if page is None:
        return None
    arguments = next(current_app.url_map.iter_rules(page)).arguments
    return url_for(page, **{name: value for name, value in values.items() if name in arguments})


def here() -> str | None:
    """For templates: the address of the page being rendered, as `page_address` has it."""
    return page_address(request.full_path)
