"""Console language (zh-CN by default, English available) and time shown in Asia/Shanghai."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from flask import Blueprint, current_app, has_request_context, redirect, request, session, url_for
from flask_babel import LazyString, force_locale, get_locale

from app.console import pages
from app.extensions import babel

bp = Blueprint("i18n", __name__)


def select_locale() -> str:
    """zh-CN console by default; the JSON API, the CA endpoints and the CLI speak English."""
    if not has_request_context() or request.path.startswith(("/api/", "/ca/")):
        return "en"
    chosen = session.get("lang")
    if chosen in current_app.config["MPIM_LANGUAGES"]:
        return chosen
    return current_app.config["BABEL_DEFAULT_LOCALE"]


def english(message) -> str:
    """A message, perhaps a lazy translation, as the log has it whatever the reader's language."""
    with force_locale("en"):
        return str(message)


def _reads_chinese() -> bool:
    locale = get_locale()
    return locale is not None and locale.language == "zh"


def sentence_gap() -> str:
    """What goes between two sentences in the reader's language: nothing in Chinese, which puts no space after its
    full stop (。), a space in English. For `sentences` and for a template joining sentences it renders."""
    return "" if _reads_chinese() else " "


def sentences(*parts) -> str:
    """Translated sentences run together as the reader's language writes them (`sentence_gap`)."""
    return sentence_gap().join(str(part) for part in parts)


def list_separator() -> str:
    """What goes between the items of a list in the reader's language: the enumeration comma (、) in Chinese, a
    comma and a space in English. For `join_list` and for a template writing a list item by item."""
    return "、" if _reads_chinese() else ", "


def colon() -> str:
    """What goes between a lead-in and what it introduces (a chart's heading and its figure, a time and its event):
    the full-width colon (：) in Chinese, a colon and a space in English. For a template or a line that puts the two
    together from parts translated apart."""
    return "：" if _reads_chinese() else ": "


def join_list(items, limit: int | None = None) -> str:
    """Items as one list in the reader's language (`list_separator`), cut to `limit` characters if given."""
    return list_separator().join(str(item) for item in items)[:limit]


def lazy_list(items, limit: int | None = None) -> LazyString:
    """`join_list` for a lazy translation: the list is joined in the language the message is read in (the console's
    Chinese, the API's and the log's English), not in the one it was raised in."""
    return LazyString(join_list, list(items), limit)


@bp.get("/lang/<code>")
def switch_language(code: str):
    """Back to the page the reader was on (the link's `next`, else the Referer), in the new language; for a
    refused form's page, shown at the form's POST-only address, the page itself (`pages.page_address`)."""
    if code in current_app.config["MPIM_LANGUAGES"]:
        session["lang"] = code
    target = pages.page_address(request.args.get("next")) or pages.page_address(request.referrer)
    return redirect(target or url_for("console.dashboard"))


def local_time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """Times are aware UTC inside; the console shows them in Asia/Shanghai."""
    if value is None:
        return "—"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    zone = ZoneInfo(current_app.config["MPIM_DISPLAY_TIMEZONE"])
    return value.astimezone(zone).strftime(fmt)


def display_zone() -> str:
    """The zone the console's times are shown in, as people read it: "UTC+08:00" for Asia/Shanghai."""
    offset = datetime.now(ZoneInfo(current_app.config["MPIM_DISPLAY_TIMEZONE"])).strftime("%z")
    return f"UTC{offset[:3]}:{offset[3:]}"


def init_app(app) -> None:
    babel.init_app(app, locale_selector=select_locale)
    app.register_blueprint(bp)
    app.jinja_env.filters["local_time"] = local_time
    app.jinja_env.globals["current_locale"] = select_locale
    app.jinja_env.globals["sentence_gap"] = sentence_gap
    app.jinja_env.globals["list_separator"] = list_separator
    app.jinja_env.globals["colon"] = colon
    app.jinja_env.filters["join_list"] = join_list
    app.jinja_env.globals["display_zone"] = display_zone
    app.jinja_env.globals["utcnow"] = lambda: datetime.now(UTC)
