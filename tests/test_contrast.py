"""Colour contrast of the console, computed from console.css and the tile map's palette (WCAG 2.1 1.4.3: text
4.5:1; 1.4.11: a control's outline and the focus ring 3:1)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.admission.tilemap import ProvinceFigures, tile_colour

CSS = (Path(__file__).parent.parent / "static" / "css" / "console.css").read_text("utf-8")


def declarations(selector: str) -> dict[str, str]:
    """The declarations of the rule whose selector list is exactly `selector`."""
    match = re.search(r"(?:^|\})\s*" + re.escape(selector) + r"\s*\{([^}]*)\}", CSS, re.M)
    assert match, f"no rule {selector} in console.css"
    return {name.strip(): value.strip() for name, value in
            (part.split(":", 1) for part in match.group(1).split(";") if ":" in part)}


VARIABLES = {name: value for name, value in declarations(":root").items() if name.startswith("--")}


def colour(value: str) -> str:
    """A hex colour from a CSS value: a variable of :root, or a literal."""
    value = value.strip()
    if value.startswith("var("):
        value = VARIABLES[value[4:-1].strip()]
    assert re.fullmatch(r"#[0-9a-fA-F]{3}|#[0-9a-fA-F]{6}", value), value
    return value


def luminance(hex_colour: str) -> float:
    digits = hex_colour.lstrip("#")
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    channels = [int(digits[i:i + 2], 16) / 255 for i in (0, 2, 4)]
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_the_contrast_formula_matches_known_values():
    assert contrast("#000", "#fff") == pytest.approx(21)
    assert contrast("#767676", "#fff") == pytest.approx(4.54, abs=0.01)  # the classic lightest passing grey


PAGE, CARD = "var(--bg)", "var(--card)"
HEADER = declarations("table.list th")["background"]
FLASH_ERROR = declarations(".flash.error, .banner.error")["background"]
FLASH_SUCCESS = declarations(".flash.success")["background"]
BANNER_WARNING = declarations(".banner.warning")["background"]

# (foreground, background, where): text the console sets on each background it can stand on. Tags stand in
# table cells and cards, and beside a page's h1 on the page itself; notes (.meta) also in a table's header.
TEXT = [
    ("var(--ink)", PAGE, "body text"), ("var(--ink)", CARD, "text in a card"), ("var(--ink)", HEADER, "th"),
    ("var(--muted)", PAGE, ".meta/.empty on the page"), ("var(--muted)", CARD, ".meta in a card"),
    ("var(--muted)", HEADER, ".meta in a th (the audit log's zone)"),
    ("var(--brand)", PAGE, "link"), ("var(--brand)", CARD, "link in a card"),
    ("var(--brand-ink)", "var(--brand)", "header and primary buttons"), ("#fff", "var(--bad)", "danger buttons"),
    ("var(--good)", PAGE, "tag.good beside a h1"), ("var(--good)", CARD, "tag.good"),
    ("var(--good)", FLASH_SUCCESS, "success flash"),
    ("var(--bad)", PAGE, "tag.bad beside a h1"), ("var(--bad)", CARD, "tag.bad, .error"),
    ("var(--bad)", FLASH_ERROR, "error flash"),
    ("var(--warn)", PAGE, "tag.warn beside a h1"), ("var(--warn)", CARD, "tag.warn"),
    ("var(--warn)", BANNER_WARNING, "warning banner"),
    ("var(--unknown)", PAGE, "tag.muted beside a h1"), ("var(--unknown)", CARD, "tag.muted"),
]

# Outlines a reader must see to find a field or the focus (3:1).
NON_TEXT = [
    ("var(--control-line)", CARD, "a field's border in a card"), ("var(--control-line)", PAGE, "a filter's border"),
    (declarations(":focus-visible")["outline"].split()[-1], PAGE, "focus ring on the page"),
    (declarations(":focus-visible")["outline"].split()[-1], CARD, "focus ring in a card"),
    (declarations(".topbar :focus-visible")["outline-color"], declarations(".topbar")["background"],
     "focus ring in the header"),
]


@pytest.mark.parametrize(("foreground", "background", "where"), TEXT, ids=[w for _, _, w in TEXT])
def test_text_colours_reach_4_5_to_1(foreground, background, where):
    ratio = contrast(colour(foreground), colour(background))
    assert ratio >= 4.5, f"{where}: {foreground} on {background} is {ratio:.2f}:1"


@pytest.mark.parametrize(("foreground", "background", "where"), NON_TEXT, ids=[w for _, _, w in NON_TEXT])
def test_field_borders_and_the_focus_ring_reach_3_to_1(foreground, background, where):
    ratio = contrast(colour(foreground), colour(background))
    assert ratio >= 3, f"{where}: {foreground} on {background} is {ratio:.2f}:1"


@pytest.mark.parametrize("figures", [ProvinceFigures(), ProvinceFigures(down=1, active=1),
                                     ProvinceFigures(suspended=1)] + [ProvinceFigures(active=n) for n in range(1, 6)],
                         ids=lambda f: f"active{f.active}-suspended{f.suspended}-down{f.down}")
def test_a_tiles_name_is_legible_on_its_colour(figures):
    fill, ink = tile_colour(figures)
    assert contrast(fill, ink) >= 4.5, f"{ink} on {fill}: {contrast(fill, ink):.2f}:1"


def test_more_active_nodes_still_mean_a_darker_tile():
    shades = [tile_colour(ProvinceFigures(active=n))[0] for n in range(1, 5)]
    assert [luminance(s) for s in shades] == sorted((luminance(s) for s in shades), reverse=True)


def test_a_warning_note_is_coloured_as_a_warning():
    """`hint warn` (a node with no valid certificate, the certificate in service) read as a grey note before."""
    assert colour(declarations(".hint.warn")["color"]) == colour("var(--warn)")


@pytest.mark.parametrize("band", ["full", "partial", "none"])
def test_an_uptime_bar_that_carries_a_state_stands_out_from_the_card(band):
    from app.health.charts import BAND_COLOURS

    assert contrast(BAND_COLOURS[band], colour(CARD)) >= 3
