"""Audit log: who did what to which target, when and from where; append-only and hash-chained."""


def init_app(app) -> None:
    from app.audit.cli import cli
    from app.audit.views import bp

    app.register_blueprint(bp)
    app.cli.add_command(cli)
    app.jinja_env.filters["readable_json"] = readable_json


def readable_json(value) -> str:
    """An entry's detail as JSON a reader can read: Chinese, <, → as themselves (Jinja escapes the HTML),
    where `tojson` writes \\u escapes meant for embedding in scripts."""
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
