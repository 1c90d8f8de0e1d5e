"""JSON exchanged between systems, read strictly: the one parser of the registry's request bodies and of the
reference node's envelopes and of the answers it reads.

RFC 8259 §8.1: such JSON MUST be UTF-8 and MUST NOT begin with a byte-order mark, yet Python's json (and Flask's
get_json on bytes) guesses UTF-16 and UTF-32 and skips a BOM. §4 leaves duplicate names to the parser, and
Python's keeps the last silently, so a signed request or an audit reader could see another value than the one
acted on (RFC 7493, I-JSON, forbids them). §8.2: a lone surrogate escape parses but is no character, and no
database, certificate or schema validator takes it. Each is refused here, with the reason, so the rule lives
in one place and each caller puts the reason in its own error shape.
"""

from __future__ import annotations

import codecs
import json
import math
from typing import Any

NOT_UTF8 = "the body must be UTF-8 without a byte-order mark (RFC 8259 §8.1)"
# UTF-32 first: its little-endian BOM begins with UTF-16's.
BYTE_ORDER_MARKS = ((codecs.BOM_UTF8, "UTF-8"), (codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                    (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))
KEY_SHOWN = 64  # characters of a duplicated name the reason quotes; a name may run to the body's limit
NUMBER_SHOWN = 32  # characters of an out-of-range number the reason quotes


class NotStrictJSON(ValueError):
    """The body is not strict JSON; str() is the reason, in lower case, for the caller's message."""


def parse(body: bytes) -> Any:
    """The document `body` holds, or NotStrictJSON saying why it is refused: not UTF-8 or led by a byte-order
    mark, not JSON (nested deeper than the parser goes, NaN and Infinity included, and a number past a double's
    range, which Python reads as inf and json.dumps writes back as Infinity), an object naming a member twice at
    any depth, or a string or name holding a lone surrogate."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if body.startswith(mark):
            raise NotStrictJSON(f"{NOT_UTF8}; it begins with a {encoding} byte-order mark")
    # JSON text has no NUL outside a \u escape; UTF-16 and UTF-32 put one beside every ASCII character.
    if b"\x00" in body:
        raise NotStrictJSON(f"{NOT_UTF8}; it holds NUL bytes, as UTF-16 or UTF-32 does")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotStrictJSON(f"{NOT_UTF8}; byte {error.start} is not UTF-8") from None
    try:
        document = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise NotStrictJSON("the body is nested deeper than the parser goes") from None
    except json.JSONDecodeError as error:
        raise NotStrictJSON(f"the body is not JSON ({error.msg} at character {error.pos})") from None
    except NotStrictJSON:
        raise
    except ValueError:
        # Not a JSONDecodeError: an integer of more digits than int() converts (sys.get_int_max_str_digits).
        raise NotStrictJSON("the body is not JSON (a number has more digits than the parser converts)") from None
    if "\\u" in text and lone_surrogate_in(document):  # only a \u escape makes one
        raise NotStrictJSON("a string holds a lone surrogate escape, which is no character (RFC 8259 §8.2)")
    return document


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                shown = name if len(name) <= KEY_SHOWN else name[:KEY_SHOWN] + "…"
                # repr() escapes a lone surrogate or a control character, so the reason is always printable text.
                raise NotStrictJSON(f"the key {shown!r} appears twice in one object")
            seen.add(name)
    return document


def _constant(name: str) -> Any:
    raise NotStrictJSON(f"the body is not JSON ({name} is no JSON value, RFC 8259 §6)")


def _finite(literal: str) -> float:
    """A number with a fraction or exponent as float() reads it, unless it is past a double's range: float()
    makes it inf (1e999, -1e400, 400 digits), a value JSON has no way to write (RFC 8259 §6)."""
    value = float(literal)
    if not math.isfinite(value):
        shown = literal if len(literal) <= NUMBER_SHOWN else literal[:NUMBER_SHOWN] + "…"
        raise NotStrictJSON(f"the body is not JSON ({shown} is beyond the range of a number, RFC 8259 §6)")
    return value


def lone_surrogate_in(document: Any) -> bool:
    """True when a parsed JSON document's string or key holds a lone surrogate: `"\\ud800"` parses, but no
    UTF-8 (a database, a certificate, a schema validator) takes it (RFC 8259 §8.2)."""
    try:
        json.dumps(document, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
