"""A record whose number was edited in the database (text or a fraction on SQLite, NULL on PostgreSQL once its
NOT NULL is dropped) stops no later write: new records follow the newest record numbered as records are, and
`flask audit verify` reports the edited one."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select, text

from app.audit import service
from app.audit.models import AuditRecord
from app.extensions import db
from tests.conftest import Console
from tests.test_audit import drop_guard, number_edited_into_text, write_records  # noqa: F401 (a fixture)
from tests.test_audit_export import export as export_from_console
from tests.test_audit_export import exports, read_csv
from tests.test_audit_pages import insert_forged_copy, seq_unconstrained  # noqa: F401 (a fixture)


def newest_seq() -> int:
    """The greatest whole number (SQLite's max() takes text as the greatest)."""
    return max(seq for seq in db.session.scalars(select(AuditRecord.seq)) if type(seq) is int)


def seqs_written_after(seq: int) -> list:
    """The numbers of the records `write_records` wrote (actor "tester") after number `seq`, as stored: whole
    numbers and fractions (SQLite's text sorts after them)."""
    return [number for number in db.session.scalars(text(
        "SELECT seq FROM audit_records WHERE actor = 'tester' AND seq > :seq ORDER BY seq"), {"seq": seq})
        if isinstance(number, int | float)]


def test_a_number_edited_into_a_formula_stops_no_sign_in(app, admin_console):
    """SQLite only (PostgreSQL's integer column refuses text, checked there): text sorts after every number, so the
    newest-first read found it, and every audited write failed (`str + int`: each sign-in answered 500)."""
    write_records(5)
    last = newest_seq()
    if not number_edited_into_text(last - 1):  # '4a' for 4
        return
    db.session.execute(text(f"UPDATE audit_records SET seq = '=HYPERLINK(1)' WHERE seq = '{last - 1}a'"))
    db.session.commit()  # SQLite's guard is gone for good (`edit_unguarded`)
    assert Console(app.test_client()).login("minister").status_code == 302
    write_records(2)
    assert seqs_written_after(last) == [last + 2, last + 3]  # the sign-in took last + 1
    expected = [f"records {last - 1}..{last - 1} are missing (deleted)",
                f"record {last}: does not follow the record before it", "record =HYPERLINK(1): unreadable (edited)"]
    assert service.verify().problems == expected


def test_a_number_edited_into_a_fraction_numbers_no_later_record(app, drop_guard):  # noqa: F811
    """SQLite only (PostgreSQL's integer column rounds it): the newest record numbered 50.5 had the next ones
    numbered 51.5, 52.5, each of which verify reported as edited. They follow the last whole number instead."""
    write_records(5)
    last = newest_seq()
    drop_guard()
    db.session.execute(text(f"UPDATE audit_records SET seq = {last}.5 WHERE seq = {last}"))
    db.session.commit()
    if db.engine.dialect.name == "postgresql":
        assert newest_seq() == last + 1  # rounded: a whole number, as a record's
        return
    write_records(2)
    assert [(seq, type(seq)) for seq in seqs_written_after(last - 1)] == [(last, int), (last + 0.5, float),
                                                                           (last + 1, int)]
    assert service.verify().problems == [f"record {last}.5: unreadable (edited)"]


def test_a_record_with_no_number_stops_no_write(app, runner, seq_unconstrained):  # noqa: F811
    """PostgreSQL sorts NULL first in a descending order: the newest-first read found it, and every audited write
    failed (`None += 1`). SQLite sorts it last, but both now read past it."""
    write_records(3)
    last = newest_seq()
    seq_unconstrained()
    insert_forged_copy(last, numbered=None)
    write_records(2)
    assert seqs_written_after(last) == [last + 1, last + 2]
    assert service.verify().problems == ["records with no number: 1 (inserted or edited)"]


def anchored(runner) -> str:
    result = runner.invoke(args=["audit", "anchor", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["anchor"]


def test_the_anchor_is_the_newest_record_numbered_as_records_are(app, runner, seq_unconstrained):  # noqa: F811
    """`flask audit anchor` printed a number edited into text (SQLite) or none at all (PostgreSQL: "None:..."),
    which `verify --anchor` cannot take; it is the newest record the chain numbers."""
    write_records(3)
    last = newest_seq()
    seq_unconstrained()
    insert_forged_copy(last, numbered=None)
    if db.engine.dialect.name == "sqlite":
        insert_forged_copy(last, numbered="=HYPERLINK(1)")
    digest = db.session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == last))
    assert anchored(runner) == f"{last}:{digest}"
    result = runner.invoke(args=["audit", "anchor"])
    assert result.output == f"{last}:{digest}\n"
    verified = runner.invoke(args=["audit", "verify", "--json", "--anchor", f"{last}:{digest}"])
    assert not [problem for problem in json.loads(verified.output)["problems"] if "anchored" in problem]


def test_the_export_is_bounded_by_the_newest_record_numbered_as_records_are(admin_console, runner,
                                                                            seq_unconstrained):  # noqa: F811
    """The export holds what the list counted: the edited records too (SQLite's text sorted as the newest, and
    the file then held its own record as well; PostgreSQL's NULL compared with no bound and was left out), and
    not its own record; its detail names the newest record numbered as records are."""
    write_records(3)
    last = newest_seq()
    seq_unconstrained()
    insert_forged_copy(last, numbered=None)
    forged = 1
    if db.engine.dialect.name == "sqlite":
        insert_forged_copy(last, numbered="=HYPERLINK(1)")
        forged = 2
    listed = db.session.scalar(select(func.count()).select_from(AuditRecord))
    rows = read_csv(export_from_console(admin_console.client).data)
    assert len(rows) == listed and "audit.export" not in {row["action"] for row in rows}
    assert len([row for row in rows if not row["seq"].isdigit()]) == forged
    if forged == 2:  # a number edited into a formula is no formula in the file either
        assert "'=HYPERLINK(1)" in {row["seq"] for row in rows}
    [entry] = exports()
    assert entry.detail["up_to_seq"] == newest_seq() - 1 and entry.seq == newest_seq()


@pytest.fixture
def hash_unconstrained(app, drop_guard):  # noqa: F811
    """`hash_unconstrained()` lifts the guard and, on PostgreSQL, hash's NOT NULL; there, where the suite shares one
    database, the records go and the constraint is back after the test."""
    dropped = []

    def drop() -> None:
        drop_guard()
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("ALTER TABLE audit_records ALTER COLUMN hash DROP NOT NULL"))
            db.session.commit()
            dropped.append(True)

    yield drop
    if dropped:
        db.session.rollback()
        db.session.execute(text("TRUNCATE audit_records RESTART IDENTITY"))
        db.session.execute(text("ALTER TABLE audit_records ALTER COLUMN hash SET NOT NULL"))
        db.session.commit()


@pytest.mark.parametrize("stored_hash", ["x'00ff'", "NULL"])
def test_a_newest_hash_edited_into_no_text_stops_no_write(app, admin_console, hash_unconstrained, stored_hash):
    """The next record's prev_hash is the newest record's hash. One edited into what is no text (a blob
    on SQLite, NULL on PostgreSQL once its NOT NULL is dropped) stopped every audited write: JSON cannot hold a
    blob, and NOT NULL refused a NULL prev_hash, so each sign-in answered 500. The next record follows it as `verify`
    reads it, and verify reports only the edited record."""
    if (db.engine.dialect.name == "postgresql") != (stored_hash == "NULL"):
        pytest.skip("PostgreSQL's text column holds no blob; SQLite keeps its NOT NULL")
    write_records(3)
    last = newest_seq()
    hash_unconstrained()
    db.session.execute(text(f"UPDATE audit_records SET hash = {stored_hash} WHERE seq = :seq"), {"seq": last})
    db.session.commit()
    assert Console(app.test_client()).login("minister").status_code == 302
    write_records(2)
    assert seqs_written_after(last) == [last + 2, last + 3]  # the sign-in took last + 1
    assert service.verify().problems == [f"record {last}: unreadable (edited)"]


def test_the_anchor_of_a_newest_record_whose_hash_was_edited_is_refused(app, runner, hash_unconstrained):
    """`flask audit anchor` printed `9:x'00ff'` (SQLite) or `9:` (PostgreSQL), exit 0: an anchor `verify --anchor`
    refuses as "not SEQ:HASH as `flask audit anchor` prints it". It refuses to anchor such a record."""
    write_records(3)
    last = newest_seq()
    hash_unconstrained()
    stored_hash = "NULL" if db.engine.dialect.name == "postgresql" else "x'00ff'"
    db.session.execute(text(f"UPDATE audit_records SET hash = {stored_hash} WHERE seq = :seq"), {"seq": last})
    db.session.commit()
    result = runner.invoke(args=["audit", "anchor"])
    assert result.exit_code == 1 and f"The newest record, {last}, holds no hash" in result.output, result.output
    as_json = runner.invoke(args=["audit", "anchor", "--json"])
    assert as_json.exit_code == 1 and json.loads(as_json.output)["error"]["code"] == "audit_newest_edited"
