"""Console shell: dashboard, navigation, banners and the node's own health check.

Features plug into the shell without editing it:
- `dashboard_panels`: functions `(user) -> dict | None`; the dict is `{"template": ..., **context}`
  and is rendered inside the dashboard.
- `nav_entries`: `(endpoint, label, roles)` tuples shown in the top navigation for those roles.
- `banner_sources`: functions `(user) -> list[dict(kind, text)]` shown on every page (alerts).
- `health_checks`: `(field, check)` pairs beside the database's own check; `check() -> (value, serving,
  reason)`. /healthz shows each value under its field and answers 503 when one is not serving; web
  workers and the scheduler log each one not serving when they start (`log_failing_checks`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlencode

from flask import request, url_for
from flask_babel import lazy_gettext as _l
from flask_login import current_user

from app.console import pages

dashboard_panels: list[Callable] = []
nav_entries: list[tuple[str, object, tuple[str, ...]]] = []
banner_sources: list[Callable] = []
health_checks: list[tuple[str, Callable[[], tuple[str, bool, str]]]] = []
log = logging.getLogger("mpim.health")


def _nav_items() -> list[dict]:
    if not current_user.is_authenticated:
        return []
    return [{"url": url_for(endpoint), "label": label} for endpoint, label, roles in nav_entries
            if current_user.role in roles]


def _banners() -> list[dict]:
    if not current_user.is_authenticated:
        return []
    return [banner for source in banner_sources for banner in source(current_user)]


def schema_banner(user) -> list[dict]:
    """Started on a database older than the code: some pages fail until it is upgraded."""
    from app.database import schema_state

    if user.role != "ministry_admin" or schema_state() != "behind":
        return []
    return [{"kind": "error", "text": str(_l("The database schema is older than this version of the registry: "
                                              "some pages will fail until an operator runs flask db upgrade."))}]


def run_health_checks() -> dict[str, tuple[str, bool, str]]:
    """{field: (value, serving, reason)} of every registered check; one that raises (its database
    away, say) is "error" and not serving, and does not stop the others."""
    from app.extensions import db

    results = {}
    for field, check in health_checks:
        try:
            results[field] = check()
        except Exception as error:  # a health check answers; it never fails the probe
            db.session.rollback()
            results[field] = ("error", False, f"{type(error).__name__}: {error}".splitlines()[0])
    return results


def log_failing_checks(app, process: str) -> None:
    """One warning per check not serving, as a web worker or the scheduler starts: a wrong CA passphrase
    is in the log before the first request or job that needs the CA fails on it."""
    from app.extensions import db

    with app.app_context():
        try:
            for field, (value, serving, reason) in run_health_checks().items():
                if not serving:
                    log.warning("%s starting with %s %s: %s", process, field, value, reason)
        finally:
            db.session.remove()


def url_with_query(endpoint: str, **changes) -> str:
    """The current page's URL for `endpoint` with its query string kept and `changes` made (a page, a sort).
    The query goes into the query string, never into url_for's arguments: a key named `endpoint` or `_method`
    (or a view argument's name) would be taken as one of those."""
    arguments = request.args.copy()
    for key, value in changes.items():
        arguments[key] = value
    url = url_for(endpoint, **(request.view_args or {}))
    query = urlencode(list(arguments.items(multi=True)))
    return f"{url}?{query}" if query else url


def init_app(app) -> None:
    from app.console.views import bp

    app.register_blueprint(bp)
    if schema_banner not in banner_sources:
        banner_sources.append(schema_banner)
    app.jinja_env.globals["nav_items"] = _nav_items
    app.jinja_env.globals["banners"] = _banners
    app.jinja_env.globals["url_with_query"] = url_with_query
    app.jinja_env.globals["page_here"] = pages.here
