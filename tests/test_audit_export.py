"""The audit log leaves the system as CSV (the console's export button and `flask audit export`): the filter the
admin sees, readable in a Chinese spreadsheet, no cell a spreadsheet would run, and the export itself audited
(so a POST with the CSRF token: no other site can make an admin write the record)."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from pathlib import Path

from sqlalchemy import func, select

from app.audit import service
from app.audit.models import AuditRecord
from app.extensions import db
from tests.conftest import PASSWORD, Console, csrf_token


def seed_records() -> None:
    service.record("node.suspend", "36000000002025000001", {"reason": "维护"}, actor="minister")
    service.record("node.resume", "36000000002025000001", {}, actor="minister")
    service.record("user.create", "=HYPERLINK(\"http://evil\")", {"role": "auditor"}, actor="@admin")
    service.record("token.create", "-2+3", {"division": "440000"}, actor="minister")
    db.session.commit()


KEYS = ["seq", "at_utc", "at_local (Asia/Shanghai)", "actor", "action", "action_label", "target", "remote_addr",
        "detail", "prev_hash", "hash"]
CHINESE = ["序号", "时间（UTC）", "时间（Asia/Shanghai）", "操作人", "操作代码", "操作", "对象", "来源地址", "详情",
           "上一条记录的哈希", "本条记录的哈希"]
ENGLISH = ["No.", "Time (UTC)", "Time (Asia/Shanghai)", "Actor", "Action code", "Action", "Target", "Address",
           "Detail", "Previous record's hash", "Record hash"]


def read_csv(data: bytes, header: list[str] = CHINESE) -> list[dict]:
    """The rows under the stable keys, once the file's first row is checked to be `header` (the console's
    file is headed in the reader's language, the CLI's by the keys)."""
    assert data.startswith("\ufeff".encode()), "no byte-order mark: Excel would read the UTF-8 as GBK"
    rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"))))
    assert rows[0] == header
    return [dict(zip(KEYS, row, strict=True)) for row in rows[1:]]


def export(client, follow_redirects: bool = False, **filters: str):
    """What the audit page's export button sends: the filters as hidden fields, and the CSRF token."""
    token = csrf_token(client.get("/").get_data(as_text=True))
    return client.post("/audit/export.csv", data={**filters, "csrf_token": token}, follow_redirects=follow_redirects)


def exports() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action == "audit.export")))


def test_the_export_holds_what_the_filter_selects_newest_first_and_is_audited(admin_console):
    seed_records()
    response = export(admin_console.client, action="node.", target="2025000001")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"].startswith("attachment; filename=audit-")
    assert response.headers["Cache-Control"] == "no-store"  # the whole log: as a signed-in page (auth review)
    rows = read_csv(response.data)
    assert [row["action"] for row in rows] == ["node.resume", "node.suspend"]
    assert rows[1]["detail"] == '{"reason": "维护"}' and rows[1]["action_label"] == "暂停节点"
    stored = db.session.scalar(select(AuditRecord).where(AuditRecord.action == "node.suspend"))
    assert rows[1]["hash"] == stored.hash and rows[1]["seq"] == str(stored.seq)
    assert rows[1]["at_utc"] == stored.at.isoformat(timespec="seconds").replace("+00:00", "Z")
    local = datetime.fromisoformat(rows[1]["at_local (Asia/Shanghai)"])
    assert (local - stored.at.replace(tzinfo=None, microsecond=0)).total_seconds() == 8 * 3600
    [entry] = exports()
    assert entry.actor == "minister" and entry.detail["filters"] == {"action": "node.", "target": "2025000001"}
    assert service.verify().ok


def test_no_exported_cell_is_a_formula_a_spreadsheet_would_run(admin_console):
    seed_records()
    rows = read_csv(export(admin_console.client, action="user.create").data)
    assert rows[0]["actor"] == "'@admin"
    assert rows[0]["target"] == "'=HYPERLINK(\"http://evil\")"
    rows = read_csv(export(admin_console.client, action="token.").data)
    assert rows[0]["target"] == "'-2+3"
    service.record("node.suspend", "＝1+1", {}, actor="minister")  # as a Chinese input method types it
    db.session.commit()
    rows = read_csv(export(admin_console.client, target="1+1").data)
    assert rows[0]["target"] == "'＝1+1"


def test_the_list_offers_the_export_with_its_filter_and_count(admin_console):
    seed_records()
    page = admin_console.client.get("/audit/?actor=minister&action=node.").get_data(as_text=True)
    form = re.search(r'<form method="post" action="/audit/export.csv"[^>]*>(.*?)</form>', page, re.S).group(1)
    assert dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', form)).keys() == {
        "csrf_token", "actor", "action"}
    assert '<input type="hidden" name="actor" value="minister">' in form
    assert '<input type="hidden" name="action" value="node.">' in form
    assert "导出全部 2 条记录（CSV）" in form


def test_opening_the_export_address_writes_nothing_and_shows_the_list_it_would_export(admin_console):
    """A GET changed state: any site could send a signed-in auditor to /audit/export.csv?target=... (SameSite=Lax
    cookies go with a top-level navigation) and write an audit.export record in their name, filter text chosen
    by that site. A GET now leads to the list with the same filters, one click from the file."""
    seed_records()
    written = db.session.scalar(select(func.count()).select_from(AuditRecord))
    response = admin_console.client.get("/audit/export.csv?target=ATTACKER-CHOSEN&action=node.&page=2&x=1")
    assert db.session.scalar(select(func.count()).select_from(AuditRecord)) == written and exports() == []
    assert response.status_code == 303
    assert response.headers["Location"] == "/audit/?action=node.&target=ATTACKER-CHOSEN"


def test_an_export_without_the_forms_csrf_token_is_refused_and_writes_nothing(admin_console):
    seed_records()
    for data in ({"target": "ATTACKER-CHOSEN"}, {"target": "ATTACKER-CHOSEN", "csrf_token": "forged"}):
        response = admin_console.client.post("/audit/export.csv", data=data)
        assert response.status_code == 400 and response.mimetype == "text/html"
        assert 'href="/lang/en?next=/audit/"' in response.get_data(as_text=True)  # the switch leads to the list
    assert exports() == []


def test_a_nul_in_an_exported_filter_is_a_400_that_writes_nothing(admin_console):
    """The list's address is refused with a NUL in it (PostgreSQL refuses it in any text); the export's form
    carries the same filters in its body, where nothing looked."""
    seed_records()
    response = export(admin_console.client, target="a\x00b")
    assert response.status_code == 400
    assert "NUL" in response.get_data(as_text=True)
    assert exports() == []


def test_the_file_holds_as_many_records_as_the_link_counted(admin_console):
    """Not also the export's own record, which is written before the first line goes out."""
    seed_records()
    page = admin_console.client.get("/audit/").get_data(as_text=True)
    counted = int(re.search(r"导出全部 (\d+) 条记录", page).group(1))
    rows = read_csv(export(admin_console.client).data)
    assert len(rows) == counted and "audit.export" not in {row["action"] for row in rows}
    [entry] = exports()
    assert entry.detail["up_to_seq"] == int(rows[0]["seq"])


def test_a_date_that_is_no_date_exports_nothing_and_says_why(admin_console):
    seed_records()
    response = export(admin_console.client, since="2025-02-30", follow_redirects=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    assert "2025-02-30" in response.get_data(as_text=True)
    assert exports() == []


def test_a_provincial_admin_cannot_export_the_audit_log(app, make_user, client):
    seed_records()
    make_user("jx", "provincial_admin", scopes=("360000",))
    console = Console(client)
    assert console.login("jx").status_code == 302
    assert export(client).status_code == 403
    assert exports() == []


def test_an_auditor_exports_too(app, make_user, client):
    seed_records()
    make_user("reader", "auditor")
    console = Console(client)
    assert console.login("reader").status_code == 302
    rows = read_csv(export(client, actor="minister").data)
    assert {row["actor"] for row in rows} == {"minister"} and len(rows) == 3


def test_the_cli_exports_the_same_rows_and_is_audited_as_cli(app, runner):
    seed_records()
    result = runner.invoke(args=["audit", "export", "--action", "node.", "--since", "2000-01-01"])
    assert result.exit_code == 0, result.output
    rows = read_csv(result.stdout_bytes, KEYS)  # scripts read the keys: unchanged unless asked
    assert [row["action"] for row in rows] == ["node.resume", "node.suspend"]
    assert [row["action_label"] for row in rows] == ["Node resumed", "Node suspended"]
    [entry] = exports()
    assert entry.actor == "cli" and entry.detail["filters"] == {"action": "node.", "since": "2000-01-01"}


def test_the_english_console_heads_its_file_in_english(admin_console):
    seed_records()
    admin_console.client.get("/lang/en")
    rows = read_csv(export(admin_console.client, action="node.").data, ENGLISH)
    assert [row["action_label"] for row in rows] == ["Node resumed", "Node suspended"]


def test_the_cli_writes_the_column_names_when_asked(app, runner):
    seed_records()
    english = runner.invoke(args=["audit", "export", "--action", "node.", "--header", "labels"])
    assert english.exit_code == 0, english.output
    assert [row["action"] for row in read_csv(english.stdout_bytes, ENGLISH)] == ["node.resume", "node.suspend"]
    chinese = runner.invoke(args=["audit", "export", "--action", "node.", "--header", "labels",
                                  "--language", "zh_CN"])
    assert [row["action_label"] for row in read_csv(chinese.stdout_bytes, CHINESE)] == ["恢复节点", "暂停节点"]
    assert "--header [keys|labels]" in runner.invoke(args=["audit", "export", "--help"]).output


def test_the_cli_refuses_a_date_that_is_no_date(app, runner):
    seed_records()
    result = runner.invoke(args=["audit", "export", "--until", "2025-13-01"])
    assert result.exit_code == 2 and "'2025-13-01' is not a date" in result.output
    assert exports() == []



def test_an_admin_filters_the_log_in_the_browser_and_downloads_what_it_shows(page, live_server, make_user):
    make_user("minister")
    seed_records()
    page.goto(f"{live_server}/login")
    page.fill("input[name=username]", "minister")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:has-text('仪表盘')")
    page.goto(f"{live_server}/audit/")
    page.fill("input[name=action]", "node.")
    page.click("form.filters button[type=submit]")
    page.wait_for_selector("button:has-text('导出全部 2 条记录（CSV）')")
    listed = page.url
    with page.expect_download() as download:
        page.click("button:has-text('导出全部 2 条记录（CSV）')")
    rows = read_csv(Path(download.value.path()).read_bytes())
    assert download.value.suggested_filename.startswith("audit-")
    assert [row["action"] for row in rows] == ["node.resume", "node.suspend"]
    assert [row["action_label"] for row in rows] == ["恢复节点", "暂停节点"]
    assert page.url == listed and page.is_visible("table.list")  # the file came; the list stays
    db.session.expire_all()
    [entry] = exports()
    assert entry.actor == "minister" and entry.detail["filters"] == {"action": "node."}


def test_the_action_filter_takes_the_words_the_list_shows(admin_console):
    """An auditor types "暂停" (the label), not only "node." (the code's prefix); the export follows the list."""
    seed_records()
    page = admin_console.client.get("/audit/?action=暂停").get_data(as_text=True)
    assert "node.suspend" in page.replace("<wbr>", "") and "node.resume" not in page.replace("<wbr>", "")
    rows = read_csv(export(admin_console.client, action="暂停").data)
    assert [row["action"] for row in rows] == ["node.suspend"]
    admin_console.client.get("/lang/en")
    rows = read_csv(export(admin_console.client, action="suspended").data, ENGLISH)
    assert [row["action"] for row in rows] == ["node.suspend"]
    rows = read_csv(export(admin_console.client, action="node.").data, ENGLISH)
    assert {row["action"] for row in rows} == {"node.suspend", "node.resume"}


def test_the_cli_action_filter_takes_the_words_of_its_language(app, runner):
    """`flask audit export --action 暂停 --language zh_CN` wrote an empty file: the words were matched against the
    English labels whatever --language said, while the console in Chinese finds the records."""
    seed_records()
    chinese = runner.invoke(args=["audit", "export", "--action", "暂停", "--language", "zh_CN"])
    assert chinese.exit_code == 0, chinese.output
    rows = read_csv(chinese.stdout_bytes, KEYS)
    assert [(row["action"], row["action_label"]) for row in rows] == [("node.suspend", "暂停节点")]
    english = runner.invoke(args=["audit", "export", "--action", "suspended"])
    assert [row["action"] for row in read_csv(english.stdout_bytes, KEYS)] == ["node.suspend"]
    neither = runner.invoke(args=["audit", "export", "--action", "suspended", "--language", "zh_CN"])
    assert read_csv(neither.stdout_bytes, KEYS) == []  # the words of the language asked for, not of another
    assert [entry.detail["filters"] for entry in exports()] == [{"action": "暂停"}, {"action": "suspended"},
                                                                {"action": "suspended"}]


def test_the_cli_file_is_utf_8_whatever_the_terminal_speaks(app):
    """On a server with a GBK or GB18030 locale the export was written in the terminal's encoding: GBK failed
    at the byte-order mark (after the export was audited), GB18030 wrote a file that is not the UTF-8 promised."""
    import os
    import subprocess
    import sys

    seed_records()
    db.session.remove()
    environment = {**os.environ, "FLASK_APP": "wsgi.py", "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
                   "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"]}
    for encoding in ("gbk", "gb18030"):
        result = subprocess.run([sys.executable, "-m", "flask", "audit", "export", "--action", "node."],
                                env={**environment, "PYTHONIOENCODING": encoding}, capture_output=True, timeout=120,
                                cwd=Path(__file__).resolve().parent.parent)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        rows = read_csv(result.stdout, KEYS)
        assert [row["action"] for row in rows] == ["node.resume", "node.suspend"] and "维护" in rows[1]["detail"]


def _is_time_text(year: str):
    return lambda cell: year in cell and not cell.endswith("Z")  # PostgreSQL's text, in its session's zone


# What the file shows of each edited record (tests/test_audit.py's TAMPERINGS): what cannot be read, as stored.
EDITED_CELLS = {
    "detail = '{not json'": {"detail": "{not json"},
    "detail = '5'": {"detail": "5"},
    "at = 'yesterday'": {"at_utc": "yesterday", "at_local (Asia/Shanghai)": ""},
    "at = 12345": {"at_utc": "12345", "at_local (Asia/Shanghai)": ""},
    "actor = x'00'": {"actor": "x'00'"},
    "at = '9999-12-31 23:30:00.000000'": {"at_utc": "9999-12-31T23:30:00Z", "at_local (Asia/Shanghai)": ""},
    "at = 'infinity'": {"at_utc": "infinity", "at_local (Asia/Shanghai)": ""},
    "at = '-infinity'": {"at_utc": "'-infinity", "at_local (Asia/Shanghai)": ""},  # as any cell starting with -
    "at = '10000-01-01'": {"at_utc": _is_time_text("10000-01-01"), "at_local (Asia/Shanghai)": ""},
    "at = '0044-03-15 BC'": {"at_utc": lambda cell: cell.startswith("0044-03-1") and cell.endswith(" BC"),
                             "at_local (Asia/Shanghai)": ""},
    "at = '9999-12-31 23:30:00+00'": {"at_utc": _is_time_text("-12-31"), "at_local (Asia/Shanghai)": ""},
    "detail = 'null'": {"detail": ""},
    "action = '=1+2'": {"action": "'=1+2", "action_label": "'=1+2"},  # no formula either
}


def test_the_export_writes_each_record_it_cannot_read_as_stored_and_goes_on(admin_console, runner):
    """The console's file ended at the first record edited into what no record holds (the download cut short,
    without a word), `flask audit export` in a traceback: the records an auditor most needs to see."""
    from tests.test_audit import tamper_records

    written, edited = tamper_records()
    console = export(admin_console.client)
    assert console.status_code == 200
    cli = runner.invoke(args=["audit", "export"])
    assert cli.exit_code == 0, (cli.output, cli.exception)
    for body, header in ((console.data, CHINESE), (cli.stdout_bytes, KEYS)):
        rows = {row["seq"]: row for row in read_csv(body, header)}
        assert {str(seq) for seq in written} <= set(rows)
        for seq, (clause, _) in edited.items():
            for column, expected in EDITED_CELLS[clause].items():
                cell = rows[str(seq)][column]
                assert expected(cell) if callable(expected) else cell == expected, (clause, column, cell)
        assert rows[str(written[0])]["target"] == "target-0" and rows[str(written[0])]["detail"] == '{"n": 0}'


def test_an_export_past_the_consoles_limit_is_refused_names_the_cli_and_writes_nothing(app, admin_console):
    """A sync gunicorn worker is killed once one request outlasts its timeout (30 s): a long log's download was
    cut off halfway, its export already audited. Past MPIM_AUDIT_EXPORT_MAX_ROWS the console says so, at the
    list with the filters kept, and points to the CLI, which has no such limit; a narrower filter exports."""
    seed_records()
    app.config["MPIM_AUDIT_EXPORT_MAX_ROWS"] = 3
    total = db.session.scalar(select(func.count()).select_from(AuditRecord))
    assert total > 3
    listed = admin_console.client.get("/audit/").get_data(as_text=True)
    assert 'action="/audit/export.csv"' not in listed and "flask audit export" in listed
    assert "=HYPERLINK" in listed and '<table class="list">' in listed  # the records are listed all the same
    response = export(admin_console.client)
    page = response.get_data(as_text=True)
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert f"{total}" in page and "flask audit export" in page and "超过控制台一次导出的上限（3 条）" in page
    assert "=HYPERLINK" in page and '<table class="list">' in page
    assert exports() == []
    narrowed = export(admin_console.client, action="node.")
    assert narrowed.status_code == 200 and len(read_csv(narrowed.data)) == 2
    assert len(exports()) == 1
