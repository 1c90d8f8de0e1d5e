"""Audit log: who did what to which target, when and from where; append-only and hash-chained."""


def init_app(app) -> None:
    from app.audit.cli import cli
    from app.audit.views import bp

    app.register_blueprint(bp)
    app.cli.add_command(cli)
