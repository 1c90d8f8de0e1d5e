"""Every console string has a zh-CN translation; the API stays English."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from babel.messages.pofile import read_po

ROOT = Path(__file__).resolve().parent.parent


def test_every_extracted_string_is_translated(tmp_path):
    pot = tmp_path / "messages.pot"
    subprocess.run([str(Path(sys.executable).with_name("pybabel")), "extract", "-F", "babel.cfg",
                    "-k", "_l", "-k", "lazy_gettext", "-o", str(pot), "."], cwd=ROOT, check=True,
                   capture_output=True)
    with pot.open("rb") as handle:
        wanted = {m.id for m in read_po(handle) if m.id}
    with (ROOT / "app/translations/zh_Hans_CN/LC_MESSAGES/messages.po").open("rb") as handle:
        have = {m.id for m in read_po(handle) if m.id and m.string and "fuzzy" not in m.flags}
    assert not sorted(wanted - have), "run `make i18n-extract` and translate these"


def test_api_errors_are_english_whatever_the_session_language(client):
    body = client.get("/api/v1/divisions/999999").get_json()
    assert body["error"]["message"].startswith("There is no division 999999")
