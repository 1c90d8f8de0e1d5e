"""The audit log is append-only and hash-chained; `flask audit verify` finds tampering."""

from __future__ import annotations

import html
import json
import re
import threading
from datetime import datetime

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DatabaseError

from app.audit import service
from app.audit.models import AuditRecord
from app.extensions import db
from tests.test_audit_export import KEYS, export, read_csv


def write_records(count: int) -> None:
    for index in range(count):
        service.record("test.action", f"target-{index}", {"n": index}, actor="tester")
    db.session.commit()


@pytest.fixture(autouse=True)
def guard_is_back_after_each_test(request):
    """PostgreSQL: the suite shares one database, so a test that removes the append-only guard must put it back;
    a test that left it disabled had every later test of the run edit and delete records unguarded."""
    if "app" not in request.fixturenames:
        yield
        return
    request.getfixturevalue("app")  # set up first, so torn down after this check
    yield
    if db.engine.dialect.name == "postgresql":
        db.session.rollback()
        state = db.session.scalar(text("SELECT tgenabled FROM pg_trigger WHERE tgname = 'audit_records_no_change'"))
        assert state == "O", f"the append-only trigger is left {state!r} (O: enabled)"


def remove_guard() -> None:
    """What a DBA with full rights could do: remove the triggers and then edit rows."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_change"))
    else:
        db.session.execute(text("DROP TRIGGER audit_records_no_update"))
        db.session.execute(text("DROP TRIGGER audit_records_no_delete"))
    db.session.commit()


def restore_guard() -> None:
    """PostgreSQL, where the suite shares one database: the trigger enabled again. SQLite's file is the test's own."""
    db.session.rollback()
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_no_change"))
        db.session.commit()


@pytest.fixture
def drop_guard(app):
    """`drop_guard()` removes the append-only guard (`remove_guard`) for the rest of the test; it is back after."""
    dropped = []
    yield lambda: (remove_guard(), dropped.append(True))
    if dropped:
        restore_guard()


def test_chain_verifies(app, runner):
    write_records(5)
    assert service.verify().ok
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 0 and "chain intact" in result.output


def test_database_refuses_update_and_delete(app):
    write_records(2)
    for statement in ("UPDATE audit_records SET actor = 'mallory'", "DELETE FROM audit_records"):
        try:
            db.session.execute(text(statement))
            db.session.commit()
            raise AssertionError(f"{statement} was allowed")
        except DatabaseError as error:
            db.session.rollback()
            assert "append-only" in str(error)


def test_verify_detects_an_edited_record(app, runner, drop_guard):
    write_records(4)
    drop_guard()
    db.session.execute(text("UPDATE audit_records SET target = 'forged' WHERE seq = 2"))
    db.session.commit()
    report = service.verify()
    assert any("record 2" in p and "edited" in p for p in report.problems)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1


def test_verify_detects_a_deleted_record(app, drop_guard):
    write_records(4)
    drop_guard()
    db.session.execute(text("DELETE FROM audit_records WHERE seq = 3"))
    db.session.commit()
    problems = service.verify().problems
    assert any("missing" in p for p in problems)
    assert any("record 4" in p and "does not follow" in p for p in problems)


def test_console_filters_and_paginates(admin_console):
    write_records(45)
    client = admin_console.client
    first = client.get("/audit/?actor=tester").get_data(as_text=True)
    assert "target-44" in first and "target-0<" not in first and 'rel="next"' in first
    third = client.get("/audit/?actor=tester&page=3").get_data(as_text=True)
    assert "target-0<" in third
    # An action's code may break after its dots (<wbr>, so a narrow screen fits it); it is read as one word.
    only_logins = client.get("/audit/?action=auth.").get_data(as_text=True).replace("<wbr>", "")
    assert "auth.login" in only_logins and "test.action" not in only_logins


def test_console_shows_details_as_written_and_escaped(admin_console):
    service.record("node.suspend", "36000000002025000001", {"reason": "安全检查 <b>now</b> → later"}, actor="tester")
    db.session.commit()
    page = admin_console.client.get("/audit/?actor=tester").get_data(as_text=True)
    assert "安全检查 &lt;b&gt;now&lt;/b&gt; → later" in page and "\\u5b89" not in page
    assert "<b>now" not in page
    assert "起始日期" in page and "来源地址" in page


def test_an_anchor_copied_elsewhere_catches_the_newest_records_cut_off(app, runner, drop_guard):
    """The chain is intact after its tail is deleted; the anchor an operator copied is not."""
    write_records(5)
    anchor = runner.invoke(args=["audit", "anchor"]).output.strip()
    seq, digest = anchor.split(":")
    listed = json.loads(runner.invoke(args=["audit", "list", "--json", "--limit", "1"]).output)
    assert (listed["seq"], listed["hash"]) == (int(seq), digest)
    verified = json.loads(runner.invoke(args=["audit", "verify", "--json", "--anchor", anchor]).output)
    assert verified["ok"] and (verified["last_seq"], verified["last_hash"]) == (int(seq), digest)

    drop_guard()
    db.session.execute(text("DELETE FROM audit_records WHERE seq >= :seq"), {"seq": int(seq) - 1})
    db.session.commit()
    assert service.verify().ok  # what the chain alone can tell
    result = runner.invoke(args=["audit", "verify", "--anchor", anchor])
    cut_off = f"record {seq}: anchored, but the chain ends at {int(seq) - 2} (cut off)"
    assert result.exit_code == 1 and cut_off in result.output


def _hash_of(seq: int) -> str:
    return db.session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == seq))


def test_an_anchor_that_does_not_match_is_reported(app, runner):
    write_records(3)
    forged = "2:" + "0" * 64
    result = runner.invoke(args=["audit", "verify", "--anchor", forged])
    assert result.exit_code == 1 and "record 2: is not the record anchored with that number" in result.output
    malformed = runner.invoke(args=["audit", "verify", "--anchor", "2-abc"])
    assert malformed.exit_code == 2 and "is not SEQ:HASH" in malformed.output
    # A true anchor of the same record given beside it does not cover for it (the last one given won).
    true = f"2:{_hash_of(2)}"
    both = runner.invoke(args=["audit", "verify", "--anchor", forged, "--anchor", true])
    assert both.exit_code == 1 and "record 2: is not the record anchored with that number" in both.output
    alone = runner.invoke(args=["audit", "verify", "--anchor", true])
    assert alone.exit_code == 0, alone.output


def test_an_anchor_numbered_in_other_digits_is_malformed_not_a_traceback(app, runner):
    """"²" passes isdigit() and int() refuses it (a ValueError out of the command); "٢" int() reads as 2."""
    write_records(3)
    for seq in ("²", "٢", "２"):
        result = runner.invoke(args=["audit", "verify", "--anchor", f"{seq}:" + "0" * 64])
        assert result.exit_code == 2 and "is not SEQ:HASH" in result.output, seq


def test_recording_early_never_deadlocks_with_a_lock_taken_later(app):
    """The audit chain's lock is taken at commit, after every other lock the transaction holds.

    Before, `record()` took it at once and held it until commit: a transaction that recorded and then
    waited for a certificate's lock, against one holding that lock and about to record, waited in a
    circle (PostgreSQL aborted one of them as a deadlock). Here each thread waits for the other to
    reach that point, so the circle would form whatever the timing."""
    from app.database import serialise

    recorded_first, locked_first = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def record_then_lock() -> None:
        with app.app_context():
            try:
                service.record("test.first", "a", actor="tester")
                recorded_first.set()
                assert locked_first.wait(10)
                serialise("certificate:1")
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    def lock_then_record() -> None:
        with app.app_context():
            try:
                assert recorded_first.wait(10)
                serialise("certificate:1")
                locked_first.set()
                service.record("test.second", "b", actor="tester")
                db.session.commit()
            except BaseException as error:
                errors.append(error)
            finally:
                db.session.remove()

    threads = [threading.Thread(target=record_then_lock), threading.Thread(target=lock_then_record)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    tested = select(AuditRecord.action).where(AuditRecord.action.startswith("test.")).order_by(AuditRecord.seq)
    assert list(db.session.scalars(tested)) == ["test.second", "test.first"]  # in commit order
    assert service.verify().ok


def _tested_actions() -> list[str]:
    tested = select(AuditRecord.action).where(AuditRecord.action.startswith("test.")).order_by(AuditRecord.seq)
    return list(db.session.scalars(tested))


def test_a_rollback_takes_its_entries_with_it(app):
    service.record("test.kept-before", actor="tester")
    db.session.commit()
    service.record("test.rolled-back", actor="tester")
    db.session.rollback()
    service.record("test.closed", actor="tester")
    db.session.remove()  # the end of a request that never committed
    service.record("test.kept-after", actor="tester")
    db.session.commit()
    assert _tested_actions() == ["test.kept-before", "test.kept-after"]
    assert service.verify().ok


def test_a_savepoint_rollback_takes_only_the_entries_recorded_inside_it(app):
    service.record("test.outer", actor="tester")
    savepoint = db.session.begin_nested()
    service.record("test.inner-rolled-back", actor="tester")
    savepoint.rollback()
    with db.session.begin_nested():
        service.record("test.inner-kept", actor="tester")
    service.record("test.outer-again", actor="tester")
    db.session.commit()
    assert _tested_actions() == ["test.outer", "test.inner-kept", "test.outer-again"]
    assert service.verify().ok


def test_cli_list_marks_its_times_as_utc(app, runner):
    write_records(1)
    line = runner.invoke(args=["audit", "list", "--limit", "1"]).output.splitlines()[0]
    newest = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
    assert f"{newest.at:%Y-%m-%d %H:%M:%S}Z" in line  # the console shows local time; the CLI says which it is


def _recorded_actions() -> set[str]:
    """Every action the code records: `audit.record("x.y", ...)` and the `action="x.y"` handed on to it."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "app"
    pattern = re.compile(r'(?:audit\.record\(\s*|\baction(?::\s*str)?\s*=\s*)"([a-z_]+\.[a-z_]+)"')
    return {match for path in root.rglob("*.py") if "appnode" not in path.parts
            for match in pattern.findall(path.read_text())}


def test_every_recorded_action_has_words_in_the_console():
    from app.labels import AUDIT_ACTIONS

    actions = _recorded_actions()
    assert {"auth.login", "node.suspend", "user.password_change", "certificate.revoke"} <= actions
    assert actions - AUDIT_ACTIONS.keys() == set()


def test_console_names_each_action_in_words_and_keeps_the_code(admin_console):
    service.record("node.suspend", "36000000002025000001", {"reason": "安全检查"}, actor="tester")
    db.session.commit()
    client = admin_console.client
    page = client.get("/audit/?actor=tester").get_data(as_text=True).replace("<wbr>", "")
    assert "暂停节点" in page and ">node.suspend</code>" in page  # the code is what the filter takes
    dashboard = client.get("/").get_data(as_text=True)
    assert "暂停节点" in dashboard and "登录" in dashboard
    client.get("/lang/en")
    assert "Node suspended" in client.get("/audit/?actor=tester").get_data(as_text=True)


def test_console_times_say_their_zone(admin_console):
    """The console shows Asia/Shanghai time and the CLI UTC; a page must say which its times are."""
    write_records(1)
    client = admin_console.client
    for path in ("/", "/audit/", "/nodes/"):
        assert "所示时间均为 Asia/Shanghai 时间（UTC+08:00）" in client.get(path).get_data(as_text=True), path
    audit_page = client.get("/audit/").get_data(as_text=True)
    assert re.search(r"<th[^>]*>时间 <span[^>]*>\(UTC\+08:00\)</span></th>", audit_page)
    client.get("/lang/en")
    assert "Times are Asia/Shanghai time (UTC+08:00)." in client.get("/").get_data(as_text=True)


def test_console_dates_at_the_ends_of_the_calendar_bound_nothing(admin_console):
    """0001-01-01 in Asia/Shanghai is a moment before year 1 in UTC, and the day after 9999-12-31 is no
    date at all; each answered 500."""
    write_records(1)
    for query in ({"since": "0001-01-01"}, {"until": "9999-12-31"}, {"since": "0001-01-01", "until": "9999-12-31"}):
        response = admin_console.client.get("/audit/", query_string={"actor": "tester", **query})
        assert response.status_code == 200 and "target-0<" in response.get_data(as_text=True), query


def test_audit_list_refuses_a_limit_no_database_takes(app, runner):
    """--limit 10**30 is past SQLite's and PostgreSQL's integers (a traceback); PostgreSQL refuses -1,
    which SQLite reads as no limit at all."""
    write_records(2)
    for limit in ("0", "-1", str(10**30), "１０"):  # fullwidth: click.IntRange read it as 10
        result = runner.invoke(args=["audit", "list", "--limit", limit])
        assert result.exit_code == 2 and "--limit" in result.output, limit


def test_console_says_when_a_filter_date_is_no_date(admin_console):
    """A hand-typed URL (the inputs are date pickers) with 2025-02-30 listed every record, unfiltered,
    while the box still showed the date."""
    write_records(2)
    for query in ({"since": "2025-02-30"}, {"until": "tomorrow"}, {"since": "2025-02-30", "until": "2025-13-01"}):
        page = admin_console.client.get("/audit/", query_string={"actor": "tester", **query}).get_data(as_text=True)
        for value in query.values():
            assert f"“{value}”不是日期（YYYY-MM-DD），更正前不列出任何记录。" in page, query
        assert "target-0<" not in page and "target-1<" not in page, query
    page = admin_console.client.get("/audit/", query_string={"actor": "tester", "since": "2000-01-01"}).get_data(
        as_text=True)
    assert "target-0<" in page and "不是日期" not in page


def test_a_token_expiry_is_recorded_as_other_records_times_are(app, make_user):
    """token.create wrote expires_at to the microsecond (2026-12-09 06:50:12.345678+00:00), unlike a certificate's
    not_after or a timeout's last_active; an auditor reads seconds, and the token expires at what its record says."""
    from datetime import UTC, datetime

    from app.admission import tokens

    token, _ = tokens.create_token("360000", by=make_user("minister"))
    db.session.commit()
    [created] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "token.create"))
    [ca_init] = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "ca.init"))
    shape = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00")
    assert shape.fullmatch(ca_init.detail["root_not_after"])  # how the other records write a moment
    assert shape.fullmatch(created.detail["expires_at"]), created.detail["expires_at"]
    expires_at = token.expires_at if token.expires_at.tzinfo else token.expires_at.replace(tzinfo=UTC)
    assert datetime.fromisoformat(created.detail["expires_at"]) == expires_at


# Edits made in the database with its append-only guard removed, each as (SET clause, what `verify` finds). Text
# where a number or a time belongs, or a detail that is not JSON, only SQLite stores (any value in any column);
# PostgreSQL's typed columns refuse those, but keep times no Python datetime holds (`infinity`, a date BC, past
# 9999), which its driver cannot read. Each case runs on the database it is possible on.
TAMPERINGS = {
    "sqlite": [("detail = '{not json'", "unreadable"), ("detail = '5'", "edited"),  # stored as a number: JSON still
               ("at = 'yesterday'", "unreadable"), ("at = 12345", "unreadable"), ("actor = x'00'", "unreadable"),
               ("at = '9999-12-31 23:30:00.000000'", "edited")],  # a time, but none in Asia/Shanghai
    "postgresql": [("at = 'infinity'", "unreadable"), ("at = '-infinity'", "unreadable"),
                   ("at = '10000-01-01'", "unreadable"), ("at = '0044-03-15 BC'", "unreadable"),
                   ("at = '9999-12-31 23:30:00+00'", "unreadable")],
}
COMMON_TAMPERINGS = [("detail = 'null'", "edited"), ("action = '=1+2'", "edited")]
FINDINGS = {"unreadable": "unreadable (edited)", "edited": "content does not match its hash (edited)"}


def edit_unguarded(statements: list[str]) -> None:
    """Run `statements` with the append-only guard removed (`remove_guard`); on PostgreSQL, where the suite shares
    one database, the guard is back afterwards."""
    remove_guard()
    try:
        for statement in statements:
            db.session.execute(text(statement))
        db.session.commit()
    finally:
        restore_guard()


def tamper_records() -> tuple[list[int], dict[int, tuple[str, str]]]:
    """Write records and edit every other one of them, one tampering each (this database's and the common ones);
    the seqs written, and {seq: (clause, finding)} of those edited."""
    cases = TAMPERINGS[db.engine.dialect.name] + COMMON_TAMPERINGS
    first = (db.session.scalar(select(func.max(AuditRecord.seq))) or 0) + 1
    write_records(2 * len(cases) + 1)
    edited = {first + 1 + 2 * index: case for index, case in enumerate(cases)}
    edit_unguarded([f"UPDATE audit_records SET {clause} WHERE seq = {seq}" for seq, (clause, _) in edited.items()])
    return list(range(first, first + 2 * len(cases) + 1)), edited


def test_verify_reports_each_record_it_cannot_read_and_goes_on(app, runner):
    """A detail that is not JSON, a time that is no time, a blob for a name: verify ended in a traceback (exit 1,
    and --json printed no JSON) at the first such record, the very edits it exists to find."""
    _, edited = tamper_records()
    expected = [f"record {seq}: {FINDINGS[finding]}" for seq, (_, finding) in edited.items()]
    assert service.verify().problems == expected
    assert service.verify(batch_size=2).problems == expected
    result = runner.invoke(args=["audit", "verify", "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["problems"] == expected, result.output
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1 and result.output.splitlines() == [*expected, result.output.splitlines()[-1]]
    assert result.output.endswith("CHAIN BROKEN\n")


def number_edited_into_text(seq: int, more: str = "") -> bool:
    """Record `seq`'s number edited into text ('5a'), with `more` of the SET clause; False on PostgreSQL, whose
    integer column refuses it (checked here: the test then has nothing more to check there)."""
    edit = f"UPDATE audit_records SET seq = '{seq}a'{more} WHERE seq = {seq}"
    if db.engine.dialect.name == "postgresql":
        with pytest.raises(DatabaseError, match="integer"):
            edit_unguarded([edit])
        return False
    edit_unguarded([edit])
    return True


def test_verify_reports_a_number_that_is_no_number(app, runner):
    """SQLite only: PostgreSQL's integer column refuses text, so there this edit cannot be made (the test then
    checks that the database refused it). SQLite sorts text after every number: the record is missing from its
    place, its successor does not follow, and the record itself is reported last."""
    write_records(5)
    seq = db.session.scalar(select(func.max(AuditRecord.seq))) - 2
    if not number_edited_into_text(seq):
        return
    expected = [f"records {seq}..{seq} are missing (deleted)",
                f"record {seq + 1}: does not follow the record before it", f"record {seq}a: unreadable (edited)"]
    assert service.verify().problems == expected
    assert service.verify(batch_size=1).problems == expected
    result = runner.invoke(args=["audit", "verify", "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["problems"] == expected, result.output


def test_verify_reports_a_record_numbered_before_the_first(app, runner):
    """verify began after number 0: a record inserted under number 0 (no trigger stops an insert) or renumbered
    below it was never looked at, and the chain read intact with a forged record in the log."""
    write_records(3)
    last = db.session.scalar(select(func.max(AuditRecord.seq)))
    db.session.execute(text(
        "INSERT INTO audit_records (seq, at, actor, action, target, detail, remote_addr, prev_hash, hash)"
        " SELECT 0, at, 'minister', 'user.create', 'mallory', detail, remote_addr, prev_hash, hash"
        " FROM audit_records WHERE seq = :last"), {"last": last})
    db.session.commit()
    before = "numbered before the first record (inserted or renumbered)"
    assert service.verify().problems == [f"record 0: {before}"]
    edit_unguarded([f"UPDATE audit_records SET seq = -seq WHERE seq = {last - 1}"])
    expected = [f"record {1 - last}: {before}", f"record 0: {before}", f"records {last - 1}..{last - 1} are missing "
                "(deleted)", f"record {last}: does not follow the record before it"]
    assert service.verify().problems == expected
    assert service.verify(batch_size=1).problems == expected
    result = runner.invoke(args=["audit", "verify", "--json"])
    assert result.exit_code == 1 and json.loads(result.output)["problems"] == expected, result.output


UNREADABLE_MARK = "无法读取（已被改动）"  # "unreadable (edited)", as verify says it
# What the audit page, the dashboard and `flask audit list` show of each edited record (TAMPERINGS): the column, and
# what the database holds there, as it shows it (the text, or a test of it: PostgreSQL writes a time in its
# session's zone); None where the record is readable, and shown as any record is.
SHOWN_AS_STORED = {
    "detail = '{not json'": ("detail", "{not json"),
    "at = 'yesterday'": ("at", "yesterday"),
    "at = 12345": ("at", "12345"),
    "actor = x'00'": ("actor", "x'00'"),
    "at = 'infinity'": ("at", "infinity"),
    "at = '-infinity'": ("at", "-infinity"),
    "at = '10000-01-01'": ("at", lambda text: "10000-01-01" in text),
    "at = '0044-03-15 BC'": ("at", lambda text: text.startswith("0044-03-1") and text.endswith(" BC")),
    "at = '9999-12-31 23:30:00+00'": ("at", lambda text: "-12-31" in text),
}
PAGE_COLUMNS = ("seq", "at", "actor", "action", "target", "remote_addr", "detail")


def _matches(expected, text: str) -> bool:
    return expected(text) if callable(expected) else text == expected


def _cells(row_html: str) -> list[str]:
    return re.findall(r"<td[^>]*>(.*?)</td>", row_html, re.S)


def _as_stored(cell: str) -> str | None:
    """What a cell shows as the database holds it, unescaped; None when it shows a value as usual."""
    match = re.search(r'<code class="stored">(.*?)</code>', cell, re.S)
    return html.unescape(match.group(1)) if match else None


def _shown(cell: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()


def audit_page_rows(client, **query) -> dict[str, list[str]]:
    """Every row the audit page lists for `query`, over all its pages, by the number in its first cell (as the page
    shows it); the total the page states is what it lists, and no row is on two pages."""
    rows: dict[str, list[str]] = {}
    number = 1
    while True:
        response = client.get("/audit/", query_string={**query, "page": number})
        assert response.status_code == 200, (query, number)
        page = response.get_data(as_text=True)
        for row in re.findall(r"<tr[^>]*>(<td.*?)</tr>", page, re.S):
            cells = _cells(row)
            seq = _shown(cells[0]).split()[0]
            assert seq not in rows, (seq, query)
            rows[seq] = cells
        if 'rel="next"' not in page:
            break
        number += 1
    total = re.search(r"共 (\d+) 条", page)
    assert int(total.group(1) if total else 0) == len(rows), query
    return rows


def check_shown(clause: str, finding: str, cells: dict[str, str], marked: str) -> None:
    """A record edited by `clause` is marked unreadable where it is one (`marked`: the cell the mark is in), and
    shows in its column what the database holds; every other column, as usual."""
    assert (UNREADABLE_MARK in cells[marked]) == (finding == "unreadable"), (clause, cells[marked])
    column, expected = SHOWN_AS_STORED.get(clause, (None, None))
    for name, cell in cells.items():
        if name == column:
            assert _as_stored(cell) is not None and _matches(expected, _as_stored(cell)), (clause, name, cell)
        else:
            assert _as_stored(cell) is None, (clause, name, cell)


def test_console_lists_each_record_it_cannot_read_marked_as_stored(admin_console):
    """The audit page answered 500 at a record edited into what no record holds, where a ministry admin looks
    first once verify reports one: each is listed, marked, with what the database holds; the rest as usual."""
    written, edited = tamper_records()
    rows = audit_page_rows(admin_console.client)
    assert {str(seq) for seq in written} <= rows.keys()
    for seq in written:
        cells = dict(zip(PAGE_COLUMNS, rows[str(seq)], strict=True))
        assert _shown(cells["target"]) == f"target-{seq - written[0]}"  # what could be read, shown as always
        if seq not in edited:
            assert UNREADABLE_MARK not in cells["seq"] and not any(map(_as_stored, cells.values())), cells
            assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", _shown(cells["at"])), cells["at"]
            continue
        clause, finding = edited[seq]
        check_shown(clause, finding, cells, marked="seq")
        if clause == "at = '9999-12-31 23:30:00.000000'":  # SQLite: a time, but past 9999 in Asia/Shanghai
            assert _shown(cells["at"]) == "9999-12-31 23:30:00 UTC"
        if clause == "action = '=1+2'":
            assert _shown(cells["action"]) == "=1+2"
        if clause == "detail = '5'":
            assert _shown(cells["detail"]) == "5"
    admin_console.client.get("/lang/en")
    page = admin_console.client.get("/audit/").get_data(as_text=True)
    assert page.count("unreadable (edited)") == sum(finding == "unreadable" for _, finding in edited.values())


def test_console_filters_records_it_cannot_read_by_what_is_stored(admin_console, runner):
    """Actor, action and target compare what the database holds; a time that is no time (unreadable) is on no day,
    so a date filter lists no such record, where the database's own order put text after every day, a number
    before, infinity after. The export and `flask audit export` select as the page does."""
    written, edited = tamper_records()
    client = admin_console.client
    seqs = {str(seq) for seq in written}
    edit_of = {str(seq): clause for seq, (clause, _) in edited.items()}
    unreadable_time = {seq for seq, clause in edit_of.items() if clause.startswith("at = ")
                       and edited[int(seq)][1] == "unreadable"}
    by_tester = seqs - {seq for seq, clause in edit_of.items() if clause.startswith("actor = ")}
    assert audit_page_rows(client, actor="tester").keys() == by_tester
    assert audit_page_rows(client, action="test.").keys() == seqs - {
        seq for seq, clause in edit_of.items() if clause.startswith("action = ")}
    assert seqs <= audit_page_rows(client, target="target-").keys()
    since = audit_page_rows(client, actor="tester", since="2000-01-01")
    assert since.keys() == by_tester - unreadable_time
    until = audit_page_rows(client, actor="tester", until="2999-12-31")
    assert until.keys() == by_tester - {seq for seq, clause in edit_of.items() if clause.startswith("at = ")}
    for query, listed in (({"since": "2000-01-01"}, since), ({"until": "2999-12-31"}, until)):
        exported = export(client, actor="tester", **query)
        assert exported.status_code == 200
        assert {line.split(",")[0] for line in exported.get_data(as_text=True).splitlines()[1:]} == listed.keys()
        result = runner.invoke(args=["audit", "export", "--actor", "tester", *(f"--{key}={value}" for key, value in
                                                                             query.items())])
        assert result.exit_code == 0 and {line.split(",")[0] for line in result.output.splitlines()[1:]} == \
            listed.keys(), result.output


def test_dashboard_lists_recent_records_it_cannot_read_marked_as_stored(admin_console):
    """The dashboard's recent activity answered 500 as the audit page did, so no page of the console opened."""
    written, edited = tamper_records()
    response = admin_console.client.get("/")
    assert response.status_code == 200
    section = response.get_data(as_text=True).split('id="recent-activity"', 1)[1].split("</section>", 1)[0]
    rows = [dict(zip(("at", "actor", "action", "target"), _cells(row), strict=True))
            for row in re.findall(r"<tr[^>]*>(<td.*?)</tr>", section, re.S)]
    assert [_shown(row["target"]) for row in rows] == [f"target-{seq - written[0]}" for seq in written[::-1][:8]]
    recent_edits = [seq for seq in written[::-1][:8] if seq in edited]
    assert any(edited[seq][1] == "unreadable" for seq in recent_edits)
    for seq, row in zip(written[::-1], rows, strict=False):
        if seq in edited:
            check_shown(*edited[seq], row, marked="at")
        else:
            assert UNREADABLE_MARK not in row["at"] and not any(map(_as_stored, row.values())), row


def test_cli_lists_each_record_it_cannot_read_marked_as_stored(app, runner):
    """`flask audit list` ended in a traceback at such a record (--json too, after the lines before it): each is
    listed with what the database holds, marked; --json names the columns that could not be read."""
    written, edited = tamper_records()
    result = runner.invoke(args=["audit", "list", "--limit", str(len(written))])
    assert result.exit_code == 0, (result.output, result.exception)
    lines = result.output.splitlines()
    assert len(lines) == len(written)
    listed = runner.invoke(args=["audit", "list", "--json", "--limit", str(len(written))])
    assert listed.exit_code == 0, (listed.output, listed.exception)
    items = [json.loads(line) for line in listed.output.splitlines()]
    assert [item["seq"] for item in items] == written[::-1]
    for seq, line, item in zip(written[::-1], lines, items, strict=True):
        assert line.split()[0] == str(seq) and f" target-{seq - written[0]}" in line, line
        assert item["target"] == f"target-{seq - written[0]}" and item["hash"] == _hash_of(seq)
        clause, finding = edited.get(seq, ("", ""))
        column, expected = SHOWN_AS_STORED.get(clause, (None, None))
        assert item["unreadable"] == ([column] if finding == "unreadable" else []), (clause, item)
        assert line.endswith(f"  unreadable (edited): {column}") == (finding == "unreadable"), (clause, line)
        if column is None:
            assert item["at"] == datetime.fromisoformat(item["at"]).isoformat(), item
            continue
        assert _matches(expected, item[column]), (clause, item)
        if column != "detail":  # which the lines leave out; what cannot be read, quoted as JSON: no control character
            quoted = re.search(r'"((?:[^"\\]|\\.)*)"', line)
            assert quoted and _matches(expected, json.loads(quoted.group(0))), (clause, line)


def test_console_and_cli_list_a_record_whose_number_is_no_number(admin_console, runner):
    """SQLite only (PostgreSQL's integer column refuses text, checked here too): SQLite sorts text after every
    number, so the newest first list it first; its other values, and the HTML its detail holds, as stored."""
    write_records(3)
    seq = db.session.scalar(select(func.max(AuditRecord.seq))) - 1
    if not number_edited_into_text(seq, ", detail = '<b>x'"):
        return
    page = admin_console.client.get("/audit/").get_data(as_text=True)
    assert "<b>x" not in page
    rows = audit_page_rows(admin_console.client, actor="tester")
    assert list(rows) == [f"{seq}a", str(seq + 1), str(seq - 1)]
    first = dict(zip(PAGE_COLUMNS, rows[f"{seq}a"], strict=True))
    assert UNREADABLE_MARK in first["seq"] and _as_stored(first["seq"]) == f"{seq}a"
    assert _as_stored(first["detail"]) == "<b>x" and _shown(first["target"]) == "target-1"
    lines = runner.invoke(args=["audit", "list", "--limit", "3"]).output.splitlines()
    assert lines[0].split()[0] == f'"{seq}a"' and lines[0].endswith("  unreadable (edited): seq, detail"), lines
    item = json.loads(runner.invoke(args=["audit", "list", "--json", "--limit", "1"]).output)
    assert (item["seq"], item["detail"], item["unreadable"]) == (f"{seq}a", "<b>x", ["seq", "detail"])


def test_anchor_prints_the_newest_record_even_when_its_time_or_detail_was_edited(app, runner):
    """The anchor is what an operator copies away to catch records cut off later; it read the whole newest
    record, so a newest record whose time was edited (SQLite: 'yesterday'; PostgreSQL: infinity) ended it in a
    traceback. It needs only the number and the hash."""
    write_records(3)
    newest = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
    seq, digest = newest.seq, newest.hash
    edit = "at = 'yesterday'" if db.engine.dialect.name == "sqlite" else "at = 'infinity'"
    edit_unguarded([f"UPDATE audit_records SET {edit}, detail = 'null' WHERE seq = {seq}"])
    db.session.expire_all()

    result = runner.invoke(args=["audit", "anchor"])
    as_json = runner.invoke(args=["audit", "anchor", "--json"])

    assert (result.exit_code, result.output) == (0, f"{seq}:{digest}\n"), result.output
    assert as_json.exit_code == 0 and json.loads(as_json.output)["anchor"] == f"{seq}:{digest}"


def test_times_inside_a_records_detail_are_shown_in_the_consoles_zone(admin_console, runner):
    """token.create's "expires_at" read "2026-12-13 07:18:53+00:00" (UTC, as stored) on a page, and in a file,
    that say all their times are Asia/Shanghai; a time in a detail is shown there now, as the record's own. The
    record keeps what it holds (the chain hashes it), and what is no time with its offset is left as written."""
    from datetime import UTC

    detail = {"expires_at": datetime(2026, 12, 13, 7, 18, 53, tzinfo=UTC), "until": "2026-12-13T23:30:00.250Z",
              "windows": [{"from": "2026-12-13 07:00:00+00:00"}], "local": "2026-12-13 07:18:53",
              "day": "2026-12-13", "note": "upgrade at 2026-12-13 07:18:53+00:00", "hours": 4}
    service.record("token.create", "mpet_abcdef", detail, actor="tester")
    db.session.commit()
    shown = {"expires_at": "2026-12-13 15:18:53+08:00", "until": "2026-12-14T07:30:00.250+08:00",
             "windows": [{"from": "2026-12-13 15:00:00+08:00"}], "local": "2026-12-13 07:18:53",
             "day": "2026-12-13", "note": "upgrade at 2026-12-13 07:18:53+00:00", "hours": 4}
    page = admin_console.client.get("/audit/?actor=tester").get_data(as_text=True)
    cell = re.search(r'<td class="detail"><code>(.*?)</code></td>', page, re.S).group(1)
    assert json.loads(html.unescape(cell)) == shown
    [row] = read_csv(export(admin_console.client, actor="tester").data)
    assert json.loads(row["detail"]) == shown
    result = runner.invoke(args=["audit", "export", "--actor", "tester"])
    assert result.exit_code == 0, result.output
    [row] = read_csv(result.stdout_bytes, KEYS)
    assert json.loads(row["detail"]) == shown
    stored = db.session.scalar(select(AuditRecord).where(AuditRecord.action == "token.create"))
    assert stored.detail["expires_at"] == "2026-12-13 07:18:53+00:00"
    assert service.verify().ok



def test_verifying_an_empty_audit_log_warns(tmp_path, monkeypatch):
    """An empty or foreign database passed `flask audit verify` (0 records checked, chain intact) with nothing to
    say it was not the registry's log: after a restore by hand that was the only check."""
    from tests.test_backup import sqlite_app

    monkeypatch.delenv("DATABASE_URL", raising=False)
    application = sqlite_app(tmp_path)
    runner = application.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    result = runner.invoke(args=["audit", "verify", "--json"])
    with application.app_context():
        db.engine.dispose()
    assert result.exit_code == 0 and json.loads(result.stdout)["checked"] == 0
    assert "warning: the audit log holds no record" in result.stderr
