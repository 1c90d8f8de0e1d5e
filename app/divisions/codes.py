"""Pure rules of GB/T 2260 codes: level and parent derivation, file parsing."""

from __future__ import annotations

import csv
import io
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass

from flask_babel import lazy_gettext as _l

from app.errors import ValidationFailed
from app.readable import BLANKS, misleading, one_line, shows_nothing

CODE_PATTERN = re.compile(r"[0-9]{6}")  # fullmatch: `$` would also match before a final newline
# GB/T 2260's provinces are numbered by region, 1 (华北) to 8 (港澳台): 11 北京 to 82 澳门. Only a file is held to
# it; a typed code is checked against the loaded list, which holds no other.
PROVINCE_REGIONS = "12345678"
# The nation: no row of the GB/T 2260 list, but the code the ministry's node id starts with (SPEC §2).
NATION_CODE = "100000"
NATION_NAME = "中华人民共和国"
# A Chinese input method in full-width mode types ３６００００: the digits a console user means.
FULL_WIDTH_DIGITS = str.maketrans("０１２３４５６７８９", "0123456789")


def typed_code(text: str | None) -> str:
    """A code as a console user typed or pasted it: blanks around it dropped, full-width digits read as digits
    (the division search already took them). Anything else is left for `check_code_format` to refuse."""
    return (text or "").strip().translate(FULL_WIDTH_DIGITS)


class MalformedDivisionFile(ValidationFailed):
    code = "malformed_division_file"


def level_of(code: str) -> str:
    if code.endswith("0000"):
        return "province"
    if code.endswith("00"):
        return "prefecture"
    return "county"


def province_of(code: str) -> str:
    return code[:2] + "0000"


def prefecture_of(code: str) -> str:
    return code[:4] + "00"


def check_code_format(code: str, field: str = "division_code") -> None:
    """A malformed code is refused quoted as typed, a control character in it written visibly (`one_line`): the
    reader sees what was sent, not Python's repr of it."""
    if not CODE_PATTERN.fullmatch(code or ""):
        raise ValidationFailed(_l("“%(code)s” is not a division code: six digits are needed.",
                                  code=one_line(code or "")),
                               code="invalid_division_code", field=field)


@dataclass(frozen=True)
class DivisionRow:
    code: str
    name: str
    level: str
    parent_code: str | None
    line: int


def parent_of(code: str, known: set[str] | dict) -> str | None:
    """Prefecture if the list has it, else the province (municipal districts, 419001 济源市...)."""
    level = level_of(code)
    if level == "province":
        return None
    if level == "county" and prefecture_of(code) in known:
        return prefecture_of(code)
    return province_of(code)


def _records(reader) -> Iterator[list[str]]:
    """The reader's records; what the csv module itself refuses (a cell over its field limit) is a malformed file,
    not a traceback."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            raise MalformedDivisionFile(f"line {reader.line_num}: {error}.") from error


def parse_division_file(data: bytes) -> list[DivisionRow]:
    """Parse a `code,name` CSV; any defect refuses the whole file with its line number."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise MalformedDivisionFile(f"The file is not UTF-8 text ({error.reason}).") from error
    reader = csv.reader(io.StringIO(text))
    names: dict[str, tuple[str, int]] = {}
    for line, record in enumerate(_records(reader), start=1):
        if not record or all(not cell.strip() for cell in record):
            continue
        if line == 1 and record[0].strip().lower() == "code":
            continue
        if len(record) < 2:
            raise MalformedDivisionFile(f"line {line}: expected 'code,name'.")
        if any(cell.strip() for cell in record[2:]):  # a name with an unquoted comma: its end would be dropped
            raise MalformedDivisionFile(f"line {line}: expected 'code,name', found {len(record)} fields (a name "
                                        "holding a comma is written in double quotes).")
        code, name = record[0].strip(), record[1].strip()
        if not CODE_PATTERN.fullmatch(code):
            raise MalformedDivisionFile(f"line {line}: “{one_line(code)}” is not a six-digit code.")
        if code == NATION_CODE:
            raise MalformedDivisionFile(f"line {line}: {code} is not a province, prefecture or county code.")
        if code[0] not in PROVINCE_REGIONS:
            raise MalformedDivisionFile(f"line {line}: “{code}” is no GB/T 2260 code: a province's first digit is "
                                        "1 to 8.")
        if shows_nothing(name):  # "\u200b" as much as "": a name that shows as nothing is none
            raise MalformedDivisionFile(f"line {line}: division {code} has an empty name.")
        if len(name) > 100:
            raise MalformedDivisionFile(f"line {line}: the name of {code} is longer than 100 characters.")
        if misleading(name):  # a NUL stops the import on PostgreSQL; a bidi override shows another name
            raise MalformedDivisionFile(f"line {line}: the name of {code} holds a control or bidi character.")
        if hidden := next((ch for ch in name if unicodedata.category(ch) == "Cf" or (
                ch in BLANKS and not ch.isspace())), None):
            # "东城\u200b区" shows as 东城区 yet is another name: a rename that reads as none, and not found by the
            # console's search for 东城区; so do a variation selector, a Hangul filler and the other marks that
            # show as nothing (BLANKS). A rule of division names: `misleading` serves every other text too.
            raise MalformedDivisionFile(f"line {line}: the name of {code} holds an invisible character "
                                        f"U+{ord(hidden):04X}.")
        if code in names:
            raise MalformedDivisionFile(f"line {line}: code {code} appears again (first on line {names[code][1]}).")
        names[code] = (name, line)
    if not names:
        raise MalformedDivisionFile("The file lists no divisions.")
    rows = []
    for code, (name, line) in names.items():
        level = level_of(code)
        if level != "province" and province_of(code) not in names:
            raise MalformedDivisionFile(f"line {line}: {code} {name} has no province {province_of(code)} in the file.")
        rows.append(DivisionRow(code, name, level, parent_of(code, names), line))
    return rows
