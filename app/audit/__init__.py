"""Audit log: who did what to which target, when and from where; append-only and hash-chained."""

import re
from datetime import UTC, datetime
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
    where `tojson` writes \\u escapes meant for embedding in scripts; its times in the display zone, as the
    page's own (`detail_in_zone`)."""
    import json

    zone = ZoneInfo(current_app.config["MPIM_DISPLAY_TIMEZONE"])
    return json.dumps(detail_in_zone(value, zone), ensure_ascii=False, sort_keys=True, default=str)


# A value that is a time and nothing else: ISO 8601 with its offset, as a detail holds a time (str(datetime),
# "2026-12-13 07:18:53+00:00", or isoformat()'s T, or a Z). A time without an offset names no moment, and
# one inside a sentence is the sentence's: both are left as written.
TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2})([T ])(\d{2}:\d{2}:\d{2})(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})")


def detail_in_zone(value, zone: ZoneInfo):
    """A record's detail with each time in it shown in `zone`, with that zone's offset, as the page and the export
    show the record's own time ("2026-12-13 15:18:53+08:00" for the stored "2026-12-13 07:18:53+00:00"); the
    rest as stored. Only for showing: the record keeps what it holds, which its hash covers."""
    if isinstance(value, dict):
        return {key: detail_in_zone(item, zone) for key, item in value.items()}
    if isinstance(value, list):
        return [detail_in_zone(item, zone) for item in value]
    if not isinstance(value, str) or not (match := TIMESTAMP.fullmatch(value)):
        return value
    day, separator, clock, fraction, offset = match.groups()
    try:
        moment = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if offset == 'Z' else offset}")
        shown = moment.astimezone(zone).isoformat()  # YYYY-MM-DDTHH:MM:SS+HH:MM: the moment has no fraction
    except (ValueError, OverflowError):  # no such day or hour, or past 9999 in the zone: as written
        return value
    return f"{shown[:10]}{separator}{shown[11:19]}{fraction or ''}{shown[19:]}"


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
