"""The audit log is append-only and hash-chained; `flask audit verify` finds tampering."""

from __future__ import annotations

import json

from sqlalchemy import text
from sqlalchemy.exc import DatabaseError

from app.audit import service
from app.extensions import db


def write_records(count: int) -> None:
    for index in range(count):
        service.record("test.action", f"target-{index}", {"n": index}, actor="tester")
    db.session.commit()


def drop_guard() -> None:
    """What a DBA with full rights could do: remove the triggers and then edit rows."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_change"))
    else:
        db.session.execute(text("DROP TRIGGER audit_records_no_update"))
        db.session.execute(text("DROP TRIGGER audit_records_no_delete"))
    db.session.commit()


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


def test_verify_detects_an_edited_record(app, runner):
    write_records(4)
    drop_guard()
    db.session.execute(text("UPDATE audit_records SET target = 'forged' WHERE seq = 2"))
    db.session.commit()
    report = service.verify()
    assert any("record 2" in p and "edited" in p for p in report.problems)
    result = runner.invoke(args=["audit", "verify"])
    assert result.exit_code == 1


def test_verify_detects_a_deleted_record(app):
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
    only_logins = client.get("/audit/?action=auth.").get_data(as_text=True)
    assert "auth.login" in only_logins and "test.action" not in only_logins


def test_console_shows_details_as_written_and_escaped(admin_console):
    service.record("node.suspend", "36000000002025000001", {"reason": "安全检查 <b>now</b> → later"}, actor="tester")
    db.session.commit()
    page = admin_console.client.get("/audit/?actor=tester").get_data(as_text=True)
    assert "安全检查 &lt;b&gt;now&lt;/b&gt; → later" in page and "\\u5b89" not in page
    assert "<b>now" not in page
    assert "起始日期" in page and "来源地址" in page


def test_an_anchor_copied_elsewhere_catches_the_newest_records_cut_off(app, runner):
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


def test_an_anchor_that_does_not_match_is_reported(app, runner):
    write_records(3)
    forged = "2:" + "0" * 64
    result = runner.invoke(args=["audit", "verify", "--anchor", forged])
    assert result.exit_code == 1 and "record 2: is not the record anchored with that number" in result.output
    malformed = runner.invoke(args=["audit", "verify", "--anchor", "2-abc"])
    assert malformed.exit_code == 2 and "is not SEQ:HASH" in malformed.output
