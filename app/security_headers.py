"""Headers that keep the management node's pages where they belong.

The console approves nodes and revokes certificates with a click: framed by another site, those clicks could be
stolen (frame-ancestors, X-Frame-Options). Its scripts and styles are its own files, so nothing else may run or
style a page (a slip of escaping stays inert). A download is never sniffed into a page (nosniff). A signed-in
page holds node, user and audit data, and is not kept in the browser's cache for the next person at a shared
desk (no-store) — answers that choose their own caching (the routing table, the CRL, static files) keep it.
"""

from __future__ import annotations

POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
          "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def add_headers(response):
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        response.headers.setdefault("Content-Security-Policy", POLICY)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app) -> None:
    app.after_request(add_headers)
