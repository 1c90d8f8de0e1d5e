"""The page a console address shows, for the links that bring a reader back to it with a GET: the language
switch, and signing in again after the session clock ran out.

A refused form comes back as its page, the refusal at the form, at the form's own address, which answers POST
only: a GET there is a 405. The view that does so names the page it shows with `@shows_page(endpoint)`, and
that page's address stands in for its own.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from flask import current_app, request, url_for
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect

# Addresses of this host that are no console page to come back to: the API blueprints (named "…_api", the CA's
# files among them), static files, the health check, the JSON the pages' scripts ask for, and the language
# switch, which would go round for ever. A `next` naming one after sign-in sent the reader to a JSON answer.
NOT_PAGES = frozenset({"static", "console.healthz", "auth.session_status", "admission.application_probe",
                       "i18n.switch_language"})


def is_page(endpoint: str | None) -> bool:
    return bool(endpoint) and endpoint not in NOT_PAGES and not endpoint.partition(".")[0].endswith("_api")


def shows_page(endpoint: str):
    """Mark a POST-only view that, refusing its form, renders the page at `endpoint` (its address takes the
    view's arguments of the same names)."""
    def mark(view):
        view.shows_page = endpoint
        return view
    return mark


def page_address(target: str | None) -> str | None:
    """The local address (path and query) a GET brings back for `target`, a local address or a URL of this
    host: the page `target` shows when it answers GET, the page a POST-only view names with `shows_page`, else
    None. The address is built again from the route it matches (`url_for`), never taken from `target`: the
    router ignores repeated slashes, so "//login" matched /login, and given back as it came it sent the
    browser to a host named "login". So only an address of one of this console's pages comes back (`is_page`:
    not the API, the CA's files, static files or the health check).

    A host urlsplit cannot read ("//[x]", "http://[::1", a stray "]") is no address of this host: urlsplit
    raised ValueError, and the sign-in that had just happened, the language switch and the session clock's
    sign-out answered 500."""
    if not target:
        return None
    try:
        parts = urlsplit(target)
    except ValueError:
        return None
    if parts.netloc and parts.netloc != request.host:  # the scheme may be a proxy's: only the path is kept
        return None
    adapter = current_app.create_url_adapter(request)
    path = unquote(parts.path)  # as the router saw it: the server decodes the path before routing
    try:
        endpoint, values = _matched(adapter, path, "GET")
        query = parts.query
    except MethodNotAllowed:
        try:
            endpoint, values = _matched(adapter, path, "POST")
        except HTTPException:
            return None
        endpoint, query = getattr(current_app.view_functions.get(endpoint), "shows_page", None), ""
    except HTTPException:
        return None
    if not is_page(endpoint):
        return None
    return _address(endpoint, values, query)


def _matched(adapter, path: str, method: str) -> tuple[str, dict]:
    try:
        return adapter.match(path, method=method)
    except RequestRedirect as moved:  # /nodes for /nodes/
        return adapter.match(unquote(urlsplit(moved.new_url).path), method=method)


def _address(endpoint: str, values: dict, query: str) -> str:
    arguments = next(current_app.url_map.iter_rules(endpoint)).arguments
    address = url_for(endpoint, **{name: value for name, value in values.items() if name in arguments})
    return address + (f"?{query}" if query else "")


def here() -> str | None:
    """For templates: the address of the page being rendered, from the route that is serving it (the decoded
    path split at an encoded "?" or "#"): its own when it answers GET, else the page its view names."""
    rule = request.url_rule
    if rule is None:
        return None
    if "GET" in rule.methods:
        return _address(request.endpoint, request.view_args or {}, request.query_string.decode("latin-1"))
    page = getattr(current_app.view_functions.get(request.endpoint), "shows_page", None)
    return _address(page, request.view_args or {}, "") if page else None
