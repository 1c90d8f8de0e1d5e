"""The dashboard's province tile map: 34 squares laid out like China, drawn as SVG on the server."""

from __future__ import annotations

from dataclasses import dataclass
from xml.sax.saxutils import escape

from flask_babel import gettext

from app.divisions.names import display_name

# province prefix → (short Chinese name, column, row); a tile-grid approximation of the map.
TILES = {
    "23": ("黑龙江", 8, 0),
    "65": ("新疆", 1, 1), "15": ("内蒙古", 5, 1), "11": ("北京", 6, 1), "21": ("辽宁", 7, 1), "22": ("吉林", 8, 1),
    "62": ("甘肃", 3, 2), "64": ("宁夏", 4, 2), "14": ("山西", 5, 2), "13": ("河北", 6, 2), "12": ("天津", 7, 2),
    "54": ("西藏", 1, 3), "63": ("青海", 2, 3), "61": ("陕西", 4, 3), "41": ("河南", 5, 3), "37": ("山东", 6, 3),
    "51": ("四川", 3, 4), "50": ("重庆", 4, 4), "42": ("湖北", 5, 4), "34": ("安徽", 6, 4), "32": ("江苏", 7, 4),
    "52": ("贵州", 4, 5), "43": ("湖南", 5, 5), "36": ("江西", 6, 5), "33": ("浙江", 7, 5), "31": ("上海", 8, 5),
    "53": ("云南", 3, 6), "45": ("广西", 4, 6), "44": ("广东", 5, 6), "35": ("福建", 6, 6), "71": ("台湾", 7, 6),
    "46": ("海南", 4, 7), "82": ("澳门", 5, 7), "81": ("香港", 6, 7),
}
SIZE, GAP = 62, 6
FONT_SIZE = 14


def province_names() -> dict[str, str]:
    """Province prefix → the name a tile and the nodes list's province filter show, in the reader's language."""
    return {prefix: display_name(f"{prefix}0000", name) for prefix, (name, _, _) in TILES.items()}


def tile_label(name: str) -> tuple[list[str], float]:
    """The lines and font size of a tile's name. A Chinese name (two or three characters) is one line at
    full size; an English name of two words ("Inner Mongolia") takes two lines; a word too long for one
    line at that size ("Heilongjiang") is broken between pinyin syllables with a hyphen ("Heilong-",
    "jiang"), since set on one line it had to shrink to about 9 px."""
    lines = name.split(" ", 1)
    if len(lines) == 1 and _fitting_size(lines) < FONT_SIZE - 2:
        lines = _hyphenate(name) or lines
    return lines, _fitting_size(lines)


def _fitting_size(lines: list[str]) -> float:
    widest = max(sum(_ems(character) for character in line) for line in lines)
    return round(min(FONT_SIZE if len(lines) == 1 else FONT_SIZE - 2, (SIZE - 8) / widest), 1)


_VOWELS = set("aeiouv")


def _hyphenate(word: str) -> list[str] | None:
    """Two lines of a romanised name, broken at the syllable boundary nearest its middle: before an
    initial consonant that follows a vowel or an "n"/"ng" final. An "n" before a vowel starts a syllable
    ("He-nan"); before "g" it ends one, and "ng", "zh", "ch", "sh" are never split."""
    lower = word.lower()

    def starts_syllable(i: int) -> bool:
        here, before = lower[i], lower[i - 1]
        if here in _VOWELS or not here.isalpha():
            return False
        if here == "n" and lower[i + 1] not in _VOWELS:
            return False
        if (here == "g" and before == "n") or (here == "h" and before in "zcs"):
            return False
        return before in _VOWELS or before == "n" or lower[i - 2:i] == "ng"

    breaks = [i for i in range(2, len(word) - 1) if starts_syllable(i)]
    if not breaks:
        return None
    at = min(breaks, key=lambda i: abs(len(word) / 2 - i))
    return [word[:at] + "-", word[at:]]


def _ems(character: str) -> float:
    """A character's width in ems, roughly (sans-serif)."""
    if ord(character) >= 0x2E80:  # CJK
        return 1.0
    if character in "fijlrt()-":
        return 0.3
    return 0.7 if character.isupper() else 0.6


@dataclass
class ProvinceFigures:
    active: int = 0
    suspended: int = 0
    down: int = 0  # filled in by health polling when it is present


def tile_colour(figures: ProvinceFigures) -> tuple[str, str]:
    """(fill, text colour): grey without nodes, red when a node is down, amber when one is suspended,
    else green, darker with more active nodes. Every pair keeps the name legible (WCAG 1.4.3, 4.5:1): the
    third green was white on #3f9d55 (3.4:1) and the grey's name #66707c on #e3e7eb (4.1:1)."""
    if figures.active + figures.suspended == 0:
        return "#e3e7eb", "#4f5864"
    if figures.down:
        return "#b3261e", "#ffffff"
    if figures.suspended:
        return "#e0a800", "#1d2733"
    shade = ["#a8d5b1", "#6fbf80", "#4caf63", "#1e7b34"][min(figures.active, 4) - 1]
    return shade, "#ffffff" if figures.active >= 4 else "#1d2733"


def render(figures: dict[str, ProvinceFigures], link: str = "/nodes/?province={prefix}00",
           within: set[str] | None = None) -> str:
    """The map is a group of links, one a province, each named by its figures (its <title>): a colour is no
    answer for a screen reader. As role="img" the map was one picture to a screen reader's reading mode,
    which reads an image's name and never its parts. `within`: the province prefixes a provincial admin's
    divisions reach (None: all); the others are drawn dashed, named as outside them, and link nowhere (grey,
    they read as "no node" where there were nodes, and their lists could only be empty)."""
    width = 9 * (SIZE + GAP)
    height = 8 * (SIZE + GAP)
    label = escape(gettext("Province tile map"), {'"': "&quot;"})
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" class="tilemap" '
             f'role="group" aria-label="{label}">']
    names = province_names()
    for prefix, (_, column, row) in TILES.items():
        name = names[prefix]
        x, y = column * (SIZE + GAP), row * (SIZE + GAP)
        if within is not None and prefix not in within:
            parts.append(_outside_tile(prefix, name, x, y))
            continue
        figure = figures.get(prefix, ProvinceFigures())
        fill, ink = tile_colour(figure)
        total = figure.active + figure.suspended
        title = gettext("%(name)s: %(active)s active, %(suspended)s suspended, %(down)s down", name=name,
                        active=figure.active, suspended=figure.suspended, down=figure.down)
        lines, font_size = tile_label(name)
        middle, two_lines = x + SIZE / 2, len(lines) == 2
        name_lines = "".join(f'<tspan x="{middle}" dy="{font_size + 1 if i else 0}">{escape(line)}</tspan>'
                             for i, line in enumerate(lines))
        parts.append(
            f'<a href="{escape(link.format(prefix=prefix))}" data-province="{prefix}">'
            f'<title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{SIZE}" height="{SIZE}" rx="6" fill="{fill}"/>'
            f'<text x="{middle}" y="{y + (20 if two_lines else 26)}" text-anchor="middle" font-size="{font_size}" '
            f'fill="{ink}">{name_lines}</text>'
            f'<text x="{middle}" y="{y + (50 if two_lines else 46)}" text-anchor="middle" font-size="13" '
            f'fill="{ink}">{total or ""}</text></a>')
    parts.append("</svg>")
    return "".join(parts)


def _outside_tile(prefix: str, name: str, x: int, y: int) -> str:
    """A province outside the reader's divisions: white, dashed, its name only (#4f5864 on white: 7.4:1)."""
    lines, font_size = tile_label(name)
    middle, two_lines = x + SIZE / 2, len(lines) == 2
    name_lines = "".join(f'<tspan x="{middle}" dy="{font_size + 1 if i else 0}">{escape(line)}</tspan>'
                         for i, line in enumerate(lines))
    title = gettext("%(name)s: outside your divisions", name=name)
    return (f'<g data-province="{prefix}" class="outside"><title>{escape(title)}</title>'
            f'<rect x="{x}" y="{y}" width="{SIZE}" height="{SIZE}" rx="6" fill="#ffffff" stroke="#8a939e" '
            f'stroke-dasharray="4 3"/>'
            f'<text x="{middle}" y="{y + (20 if two_lines else 26)}" text-anchor="middle" font-size="{font_size}" '
            f'fill="#4f5864">{name_lines}</text></g>')
