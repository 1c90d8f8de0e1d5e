"""Texts people read (names, notes, reasons): the characters that would make one read otherwise.

A bidi override makes a text show other than its characters say ("江西省\u202e厅安公" shows as
江西省公安厅); a control character hides or reorders what follows it; a lone surrogate (only the CLI
can pass one, from bytes that are not UTF-8) is no character at all, and no database stores it.
"""

from __future__ import annotations

import unicodedata

from flask_babel import lazy_gettext as _l

from app.errors import ValidationFailed

# Unicode's Bidi_Control characters.
BIDI_CONTROLS = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
LINE_BREAKS = frozenset("\r\n")


def _characters(*spans: str) -> frozenset[str]:
    """"a" or "a-b" (code points in hex) → the characters."""
    return frozenset(chr(point) for span in spans
                     for point in range(int(span.split("-")[0], 16), int(span.split("-")[-1], 16) + 1))


# The characters that show as nothing, which the reference node's names may not be made of (docs/protocol.md §8,
# app/appnode/schemas/common.schema.json): white space, zero-width and format characters, the soft hyphen, the
# Hangul fillers and the combining or variation marks that show nothing alone.
BLANKS = _characters("20", "a0", "1680", "2000-200a", "2028", "2029", "202f", "205f", "3000",
                     "200b-200d", "2060-2064", "feff", "ad", "115f", "1160", "3164", "ffa0",
                     "34f", "17b4", "17b5", "180b-180f", "fe00-fe0f")


def shows_nothing(value: str) -> bool:
    """True when `value` is made only of BLANKS, white space and format (Cf) characters (the empty text too): a
    name of them reads as no name at all."""
    return all(ch in BLANKS or ch.isspace() or unicodedata.category(ch) == "Cf" for ch in value)


# What a person calls each text readable_text checks: its refusal reaches them in a flash or beside a form
# field in their language, not as the field's key ("reason 超过 500 个字符").
LABELS = {"display_name": _l("Name"), "note": _l("Note"), "reason": _l("Reason"), "revision": _l("Revision")}


def misleading(value: str, *, multiline: bool = False) -> bool:
    """True when `value` holds a control character (line breaks allowed in a multi-line text), a
    Bidi_Control character or a lone surrogate."""
    return any((unicodedata.category(ch) in ("Cc", "Cs") and not (multiline and ch in LINE_BREAKS))
               or ch in BIDI_CONTROLS for ch in value)


# How one_line writes the characters a terminal or a reader of lines would take for a break or a column.
ESCAPES = {"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
LINE_SEPARATORS = frozenset("\u2028\u2029")  # str.splitlines() and some readers break lines on these


def one_line(value: str) -> str:
    """`value` as one line that reads as it is, for a CLI printing a peer's text among its columns: tab, line
    feed and carriage return as `\\t`, `\\n`, `\\r`, any other control, Bidi_Control, line or paragraph
    separator or lone surrogate as `\\uXXXX`, and a backslash doubled so that an escape is never taken for
    one typed as text."""
    return "".join(map(_escaped, value))


def _escaped(ch: str) -> str:
    return ESCAPES.get(ch) or (f"\\u{ord(ch):04x}" if ch in LINE_SEPARATORS or misleading(ch) else ch)


def bounded_line(value: str, limit: int) -> str:
    """`value` as `one_line` writes it, cut after `limit` characters of that (never inside an escape) and the
    rest counted: for a peer's text, which no rule bounds, on the operator's terminal, in a log or a stored row."""
    shown, length = [], 0
    for index, ch in enumerate(value):
        piece = _escaped(ch)
        if length + len(piece) > limit:
            return "".join(shown) + f"… ({len(value) - index} more characters)"
        shown.append(piece)
        length += len(piece)
    return "".join(shown)


def shown_controls(value: str | None) -> str:
    """`value` for a page, where line breaks may stay: each Bidi_Control character written as `[U+XXXX]`, so
    that a peer's "pay to \u202e1234567\u202c" reads as sent instead of as "pay to 7654321"."""
    return "".join(f"[U+{ord(ch):04X}]" if ch in BIDI_CONTROLS else ch for ch in value or "")


def readable_text(value: str | None, field: str, *, multiline: bool = False, limit: int | None = None) -> str:
    """`value` stripped, or ValidationFailed naming `field` (by its label) when it would read otherwise than it
    is, or when it is longer than `limit` (its column's length): refused at every door, never cut short unseen. A
    multi-line text's line breaks are one "\n" each, as a browser counts them for a textarea's maxlength (it
    sends CR LF). A text that shows as nothing (`shows_nothing`) is the empty text, as an A.1 text is
    (information.text_field): a caller that requires one refuses it as it refuses none, an optional one is stored
    empty."""
    value = (value or "").strip()
    if shows_nothing(value):  # "\u200b", "\ufeff\u3000": a reason that shows as nothing is none
        value = ""
    if multiline:
        value = value.replace("\r\n", "\n").replace("\r", "\n")
    label = LABELS.get(field, field)
    if misleading(value, multiline=multiline):
        raise ValidationFailed(_l("%(label)s: contains control characters.", label=label), code="invalid_input",
                               field=field)
    if limit is not None and len(value) > limit:
        raise ValidationFailed(_l("%(label)s: longer than %(n)s characters.", label=label, n=limit),
                               code="too_long", field=field)
    return value

