"""Audit log: who did what to which target, when and from where; append-only and hash-chained."""

from datetime import UTC
from zoneinfo import ZoneInfo

from flask import current_app


def init_app(app) -> None:
    from app.audit.cli import cli
    from app.audit.views import bp

    app.register_blueprint(bp)
    app.cli.add_command(cli)
    app.jinja_env.filters["readable_json"] = readable_json
    app.jinja_env.filters["shown_time"] = shown_time
    app.jinja_env.tests["unreadable"] = unreadable


def readable_json(value) -> str:
    """An entry's detail as JSON a reader can read: Chinese, <, → as themselves (Jinja escapes the HTML),
    where `tojson` writes \\u escapes meant for embedding in scripts."""
    import json

    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def unreadable(value) -> bool:
    """`{% if value is unreadable %}`: a value of a record edited in the database into what no record holds, as
    stored (`app.audit.stored`)."""
    from app.audit.stored import Unreadable

    return isinstance(value, Unreadable)


def shown_time(value):
    """A record's time as the console lists it: the time, shown in the display zone; or text, when it is none
    (what the database holds) or one past 9999 there (in UTC, said so), both of a record edited in the database."""
    if isinstance(value, str):
        return value
    try:
        value.astimezone(ZoneInfo(current_app.config["MPIM_DISPLAY_TIMEZONE"]))
    except OverflowError:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return value
