"""Merge a {msgid: translation} mapping into the zh-CN catalog.

Usage: `python -m app.translations.fill FILE.py`. Babel resolves zh_CN to zh_Hans_CN, hence the folder name.

FILE.py defines a dict named ZH: msgid -> translation; a plural's key is (singular, plural) and its value a
one-form tuple; a message with a context (pgettext) is keyed "context\x04msgid", gettext's own spelling, so
that one word translated differently in two contexts (a token's "Revoke" 撤销, a certificate's 吊销) is never
overwritten by the other's. Extraction itself is `make i18n-extract`; this only saves typing.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

from babel.messages.pofile import read_po, write_po

CATALOG = Path(__file__).parent / "zh_Hans_CN" / "LC_MESSAGES" / "messages.po"


def main(mapping_file: str) -> None:
    mapping = runpy.run_path(mapping_file)["ZH"]
    with CATALOG.open("rb") as handle:
        catalog = read_po(handle, locale="zh_Hans_CN")
    for message in catalog:
        key = f"{message.context}\x04{message.id}" if message.context else message.id
        if message.id and key in mapping:
            message.string = mapping[key]
            message.flags.discard("fuzzy")
    with CATALOG.open("wb") as handle:
        write_po(handle, catalog, width=120, omit_header=False)
    missing = [m.id for m in catalog if m.id and not m.string]
    print(f"{len(missing)} untranslated", *missing, sep="\n  ")


if __name__ == "__main__":
    main(sys.argv[1])
