"""MPIM Registry: the management node of the GA/T 1988-2022 mobile-police IM network."""

from __future__ import annotations

import importlib

from flask import Flask

from app.config import PROJECT_ROOT, load_config
from app.extensions import csrf, db, login_manager, migrate

# Each feature package exposes init_app(app): its blueprints, CLI group and hooks.
FEATURES = (
    "app.i18n",
    "app.labels",
    "app.audit",
    "app.auth",
    "app.divisions",
    "app.console",
    "app.scheduler",
    "app.admission",
    "app.pki",
    "app.sessions",
    "app.health",
    "app.routing",
    "app.backup",
    "app.security_headers",
)


class Registry(Flask):
    """Flask, with OPTIONS answered 204 No Content and Allow: Flask's default is a 200 whose empty body it calls
    text/html, also under the JSON API."""

    def make_default_options_response(self):
        response = super().make_default_options_response()
        response.status_code = 204
        del response.headers["Content-Type"]
        return response


def create_app(test_config: dict | None = None) -> Flask:
    app = Registry(
        __name__,
        template_folder=str(PROJECT_ROOT / "templates"),
        static_folder=str(PROJECT_ROOT / "static"),
    )
    app.config.update(load_config(test_config))
    app.instance_path = app.config["MPIM_INSTANCE_PATH"]

    db.init_app(app)
    migrate.init_app(app, db, directory=str(PROJECT_ROOT / "migrations"), render_as_batch=True,
                     compare_type=True)
    login_manager.init_app(app)
    csrf.init_app(app)

    from app import errors

    errors.init_app(app)
    for name in FEATURES:
        importlib.import_module(name).init_app(app)
    from flask_migrate.cli import db as db_commands

    from app.backup.cli import backup_command, restore_command
    from app.cli_arguments import require_utf8
    from app.cli_schema import require_schema

    # `flask db upgrade` makes the schema the others need; a backup is taken before it, on the older schema, and
    # a restore replaces a database whatever its state.
    require_schema(app.cli, exempt=(db_commands, backup_command, restore_command))
    require_utf8(app.cli)  # outermost: a usage error is told before the schema is looked at
    if proxies := app.config.get("MPIM_TRUSTED_PROXIES"):
        from werkzeug.middleware.proxy_fix import ProxyFix

        # Behind that many reverse proxies, the client's address (sign-in throttle, audit), scheme and host
        # come from X-Forwarded-For/-Proto/-Host; without them those headers are anyone's to forge and are
        # ignored. The host matters on HTTPS: a form's Referer must name the host the console sees.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies,  # type: ignore[method-assign]
                                x_host=proxies)
    if app.config.get("MPIM_EXPOSE_WORKER_PID"):
        import os

        # Diagnostics only (off by default): which worker process answered.
        app.after_request(lambda response: (response.headers.__setitem__("X-Served-By", str(os.getpid())),
                                            response)[1])
    return app
