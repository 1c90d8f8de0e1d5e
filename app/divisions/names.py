"""Division names as the console shows them: English for the nation and the provincial level.

GB/T 2260 names divisions in Chinese only. The English console shows the settled English names of the
nation and of the 34 provincial-level divisions; a prefecture or a county keeps its Chinese name in every
language, because the standard gives it no English name and we do not romanise. The names are data, not
console strings, so they live here rather than in the gettext catalog. The JSON API and the CLI always
give the standard's Chinese name.
"""

from __future__ import annotations

from babel import Locale
from flask_babel import get_locale
from markupsafe import Markup, escape

# code → English name: the nation (NATION_CODE) and every provincial-level code of GB/T 2260.
ENGLISH_NAMES = {
    "100000": "China",
    "110000": "Beijing", "120000": "Tianjin", "130000": "Hebei", "140000": "Shanxi", "150000": "Inner Mongolia",
    "210000": "Liaoning", "220000": "Jilin", "230000": "Heilongjiang",
    "310000": "Shanghai", "320000": "Jiangsu", "330000": "Zhejiang", "340000": "Anhui", "350000": "Fujian",
    "360000": "Jiangxi", "370000": "Shandong",
    "410000": "Henan", "420000": "Hubei", "430000": "Hunan", "440000": "Guangdong", "450000": "Guangxi",
    "460000": "Hainan",
    "500000": "Chongqing", "510000": "Sichuan", "520000": "Guizhou", "530000": "Yunnan", "540000": "Tibet (Xizang)",
    "610000": "Shaanxi", "620000": "Gansu", "630000": "Qinghai", "640000": "Ningxia", "650000": "Xinjiang",
    "710000": "Taiwan", "810000": "Hong Kong", "820000": "Macao",
}


def _english(locale: Locale | str | None) -> bool:
    if locale is None:
        locale = get_locale()
    return locale is not None and str(locale).replace("-", "_").split("_")[0] == "en"


def display_name(code: str, name: str, locale: Locale | str | None = None) -> str:
    """The name the console shows for division `code`, whose Chinese name is `name`, as text: its English name
    when `locale` (by default the request's) is English and the code is the nation or a provincial-level
    division, else `name`."""
    return ENGLISH_NAMES.get(code, name) if _english(locale) else name


def division_name(division) -> Markup:
    """Jinja filter for a page's text, `{{ node.division|division_name }}`: `display_name`, and on the English
    console a name that stays Chinese marked as Chinese (`<span lang="zh-CN">`), so that a screen reader does not
    read it by English rules (WCAG 3.1.2). HTML: text elsewhere (an attribute, a CSV) takes `display_name`."""
    if _english(None) and division.code not in ENGLISH_NAMES:
        return Markup('<span lang="zh-CN">%s</span>') % division.name
    return escape(display_name(division.code, division.name))
