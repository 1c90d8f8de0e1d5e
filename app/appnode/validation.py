"""The Appendix A schemas (schemas/*.schema.json) and the checking of documents against them.

Two validators of one schema: jsonschema-rs on the hot path, the pure-Python `jsonschema` to name the failure.
Plain Python: no Flask, no database.
"""

from __future__ import annotations

import json
import re
import unicodedata
from functools import cache
from pathlib import Path

import jsonschema_rs
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from jsonschema.validators import extend
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.errors import ValidationFailed
from app.readable import BIDI_CONTROLS, misleading, one_line

SCHEMA_DIR = Path(__file__).with_name("schemas")
SCHEMA_BASE = "https://schemas.mpim.invalid/appnode/v1/"
KINDS = ("envelope", "sender", "text", "image", "voice", "file", "message", "download", "group_op", "read_state",
         "sticker", "presence", "ephemeral", "ack", "error", "health")
MESSAGE_LIMIT = 160  # characters of a validator's message kept in the refusal
INVISIBLE = ("Zs", "Zl", "Zp", "Cf")  # Unicode categories of blanks and format characters, zero-width ones among them
NAME_SHOWN = 60  # characters of a refused name the refusal shows (escaped)


# One of the error codes of docs/protocol.md §5.3 (`protocol.ERRORS`).
class SchemaViolation(ValidationFailed):
    code, status = "schema_violation", 422


@cache
def registry() -> Registry:
    """Every schema in schemas/, by its `$id`, so `$ref: "text.schema.json"` resolves without a network."""
    resources = []
    for path in sorted(SCHEMA_DIR.glob("*.schema.json")):
        contents = json.loads(path.read_text("utf-8"))
        resources.append((contents["$id"], Resource.from_contents(contents)))
    return Registry().with_resources(resources).crawl()


def schema(kind: str) -> dict:
    if kind not in KINDS and kind != "common":
        raise ValueError(f"unknown schema kind {kind!r}")
    return registry().contents(f"{SCHEMA_BASE}{kind}.schema.json")


@cache
def schema_pattern(pattern: str) -> re.Pattern:
    """A schema's `pattern` as ECMA-262 reads it, as JSON Schema and jsonschema-rs do: `$` ends the text (Python's
    `$` also matches before a final newline, so "lisi@…\n" passed), and `\\d`, `\\w` are ASCII."""
    translated, in_class, escaped = [], False, False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == "[":
            in_class = True
        elif char == "]":
            in_class = False
        elif char == "$" and not in_class:
            char = r"\Z"
        translated.append(char)
    return re.compile("".join(translated), re.ASCII)


def _pattern_keyword(validator, pattern: str, instance, _schema):
    if validator.is_type(instance, "string") and not schema_pattern(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaPatternValidator = extend(Draft202012Validator, {"pattern": _pattern_keyword})


def _without_dialect(contents: dict) -> dict:
    # jsonschema picks the class for a referenced schema by its `$schema`: with it, the first `$ref` would leave
    # EcmaPatternValidator for the stock Draft202012Validator and its Python `$`.
    return {key: value for key, value in contents.items() if key != "$schema"}


@cache
def _ecma_registry() -> Registry:
    resources = [(uri, Resource.from_contents(_without_dialect(registry().contents(uri)),
                                              default_specification=DRAFT202012))
                 for uri in (f"{SCHEMA_BASE}{name}.schema.json" for name in (*KINDS, "common"))]
    return Registry().with_resources(resources).crawl()


@cache
def validator(kind: str) -> Draft202012Validator:
    """Compiled once per kind; format assertion stays off, so patterns carry the formats."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r}")
    return EcmaPatternValidator(_without_dialect(schema(kind)), registry=_ecma_registry())


@cache
def fast_validator(kind: str):
    """The same schema compiled by jsonschema-rs: about 200 times faster on the hot path (every envelope a
    node sends or receives). The pure-Python validator stays the reference and names the failure."""
    if kind not in KINDS:
        raise ValueError(f"unknown schema kind {kind!r}")
    resources = [(uri, registry().contents(uri)) for uri in
                 (f"{SCHEMA_BASE}{name}.schema.json" for name in (*KINDS, "common"))]
    return jsonschema_rs.validator_for(schema(kind), registry=jsonschema_rs.Registry(resources))


def validate(kind: str, document) -> None:
    """Raise SchemaViolation naming the JSON path of the (most relevant) failure, or return."""
    if fast_validator(kind).is_valid(document):
        return
    error = best_match(validator(kind).iter_errors(document))
    if error is not None:
        path = _failing_path(error)
        if error.validator == "not" and error.validator_value == {}:
            message = "not allowed here"
        elif (message := _unreadable(error) or _out_of_bounds(error)) is None:  # bounded as made: not cut
            message = error.message
            if len(message) > MESSAGE_LIMIT:
                message = message[:MESSAGE_LIMIT] + "..."
        raise SchemaViolation(f"{path}: {message}", field=path[1:].lstrip(".") or None)
    # The two validators disagree only by a bug of one of them; the document is refused either way.
    raise SchemaViolation(f"$: not a valid {kind}")


@cache
def _label_patterns() -> dict[str, str]:
    """The patterns of texts people read as labels (§8), by what a refusal calls such a text."""
    names = schema("common")["$defs"]
    return {names["name"]["pattern"]: "a name", names["long_name"]["pattern"]: "a name",
            names["file_name"]["pattern"]: "a file name"}


@cache
def _text_patterns() -> dict[str, tuple[str, re.Pattern]]:
    """The patterns of free texts (a message's text, a group's notice), by what a refusal calls such a text and
    the characters it may not hold: each pattern is `^[^CLASS]+$` (or `*`), CLASS the control characters."""
    patterns = {schema("text")["properties"]["text"]["pattern"]: "a text",
                schema("group_op")["properties"]["group_info"]["properties"]["notice"]["pattern"]: "a notice"}
    return {pattern: (what, re.compile("[" + pattern[len("^[^"):pattern.index("]") + 1]))
            for pattern, what in patterns.items()}


def _out_of_bounds(error: ValidationError) -> str | None:
    """A text or list over (or under) its length, said with its length and the limit: the validator's message
    (`'<the whole value>' is too long`) put the reason after the value, where a cut to MESSAGE_LIMIT lost it."""
    value, limit = error.instance, error.validator_value
    if error.validator in ("maxLength", "minLength") and isinstance(value, str):
        if not value:
            return f"empty: at least {limit} character{'s' if limit != 1 else ''}"
        bound = "at most" if error.validator == "maxLength" else "at least"
        return f"{_shown_name(value)} is {len(value)} characters long; {bound} {limit}"
    if error.validator in ("maxItems", "minItems") and isinstance(value, list):
        bound = "at most" if error.validator == "maxItems" else "at least"
        return f"{len(value)} items; {bound} {limit}"
    return None


def _unreadable(error: ValidationError) -> str | None:
    """Why a label (§8) was refused by its pattern, in words naming the character (its pattern, a line of
    character ranges, told nobody which one); None for any other failure."""
    if error.validator != "pattern" or not isinstance(error.instance, str):
        return None
    value = error.instance
    if error.validator_value in _text_patterns():
        text, forbidden = _text_patterns()[error.validator_value]
        found = forbidden.search(value)
        return (f"{_shown_name(value)} holds a control character (U+{ord(found.group()):04X}), which {text} may not "
                f"hold" if found else None)
    what = _label_patterns().get(error.validator_value)
    if what is None:
        return None
    shown = _shown_name(value)
    for ch in value:
        if ch == "/" and what == "a file name":
            kind = "a slash"
        elif ch == "\\" and what == "a file name":
            kind = "a backslash"
        elif ch in BIDI_CONTROLS:
            kind = "a bidi control"
        elif misleading(ch):
            kind = "a control character"
        else:
            continue
        return f"{shown} holds {kind} (U+{ord(ch):04X}), which {what} may not hold"
    if what == "a file name" and value in (".", ".."):
        return f"{shown} names a directory, not a file"
    if what == "a file name" and value.rpartition(".")[0]:
        return f"{shown} has nothing to read before its extension"
    return f"{shown} has nothing to read: only spaces or invisible characters"


def _shown_name(value: str) -> str:
    """The refused name quoted, escaped as `one_line` does and, blanks other than a space and invisible characters
    too (a refusal for them showed them as nothing), cut after NAME_SHOWN characters of that, never inside an
    escape, the rest counted."""
    shown: list[str] = []
    length = 0
    for index, ch in enumerate(value):
        piece = f"\\u{ord(ch):04x}" if ch != " " and unicodedata.category(ch) in INVISIBLE else one_line(ch)
        if length + len(piece) > NAME_SHOWN:
            return f'"{"".join(shown)}"… ({len(value) - index} more)'
        shown.append(piece)
        length += len(piece)
    return f'"{"".join(shown)}"'


def _failing_path(error: ValidationError) -> str:
    """The instance's path, pointing at the missing or unexpected member itself where there is one."""
    path = error.json_path
    instance = error.instance
    if error.validator == "required" and isinstance(instance, dict):
        missing = [name for name in error.validator_value if name not in instance]
        name = next((n for n in missing if error.message.startswith(repr(n))), missing[0] if missing else None)
        return _child(path, name) if name else path
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        known = error.schema.get("properties", {})
        extra = next((key for key in instance if key not in known), None)
        return _child(path, extra) if extra is not None else path
    return path


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if key.isidentifier() else f"{path}[{json.dumps(key[:40])}]"
