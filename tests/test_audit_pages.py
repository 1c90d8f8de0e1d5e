"""`flask audit verify` reads every record wherever its pages end; `flask audit list` streams what it lists."""

from __future__ import annotations

import inspect
import json
import re

import pytest
from sqlalchemy import func, select, text

from app.audit import service, stored
from app.audit.models import AuditRecord
from app.extensions import db
from tests.test_audit import write_records


def _rebuild_sqlite_table_without_seq_constraints() -> None:
    """SQLite cannot drop a constraint: the table is made again without them, as a DBA would."""
    create = db.session.scalar(text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'"))
    create = re.sub(r",\s*CONSTRAINT uq_audit_records_seq UNIQUE \(seq\)", "", create)
    create = create.replace("seq INTEGER NOT NULL", "seq INTEGER")
    db.session.execute(text("ALTER TABLE audit_records RENAME TO audit_records_before"))
    db.session.execute(text(create))
    db.session.execute(text("INSERT INTO audit_records SELECT * FROM audit_records_before"))
    db.session.execute(text("DROP TABLE audit_records_before"))


@pytest.fixture
def seq_unconstrained(app):
    """`seq_unconstrained()` drops seq's unique and NOT NULL constraints, what a DBA with full rights could do; on
    PostgreSQL, where the suite shares one database, the records go and the constraints are back after the test."""
    dropped = []

    def drop() -> None:
        if db.engine.dialect.name == "postgresql":
            db.session.execute(text("ALTER TABLE audit_records DROP CONSTRAINT uq_audit_records_seq"))
            db.session.execute(text("ALTER TABLE audit_records ALTER COLUMN seq DROP NOT NULL"))
        else:
            _rebuild_sqlite_table_without_seq_constraints()
        db.session.commit()
        dropped.append(True)

    yield drop
    if dropped and db.engine.dialect.name == "postgresql":
        db.session.rollback()
        db.session.execute(text("TRUNCATE audit_records RESTART IDENTITY"))
        db.session.execute(text("ALTER TABLE audit_records ALTER COLUMN seq SET NOT NULL"))
        db.session.execute(text("ALTER TABLE audit_records ADD CONSTRAINT uq_audit_records_seq UNIQUE (seq)"))
        db.session.commit()


def insert_forged_copy(of: int, numbered: object) -> None:
    """A forged record numbered `numbered` (NULL for None), following what record `of` follows, its hash changed."""
    db.session.execute(text(
        "INSERT INTO audit_records (seq, at, actor, action, target, detail, remote_addr, prev_hash, hash)"
        " SELECT :seq, at, 'minister', 'node.revoke', '36000000002025000001', '{\"reason\": \"forged\"}',"
        " '10.0.0.9', prev_hash, 'f' || substr(hash, 2) FROM audit_records WHERE seq = :of"),
        {"seq": numbered, "of": of})
    db.session.commit()


def anchor(seq: int) -> str:
    return f"{seq}:{db.session.scalar(select(AuditRecord.hash).where(AuditRecord.seq == seq))}"


def test_verify_reports_a_number_stored_twice_where_a_page_ends(app, runner, monkeypatch, seq_unconstrained):
    """verify began each page after the last number it had read: a second record with the number a page ended at
    (its unique constraint dropped) was never read, and the chain read intact, anchors and all."""
    write_records(7)
    last = db.session.scalar(select(func.max(AuditRecord.seq)))
    assert db.session.scalar(select(func.count()).select_from(AuditRecord)) == last
    anchors = [anchor(4), anchor(last)]
    seq_unconstrained()
    insert_forged_copy(4, numbered=4)
    expected = ["record 4: appears twice (inserted)"]
    assert service.verify(batch_size=4).problems == expected  # the page ends at the first record 4
    for batch_size in (1, 2, 3, 5, last, None):
        assert service.verify(batch_size=batch_size).problems == expected, batch_size
    monkeypatch.setattr(service, "PAGE_SIZE", 4)
    result = runner.invoke(args=["audit", "verify", *(f"--anchor={value}" for value in anchors)])
    assert result.exit_code == 1 and result.output.splitlines()[:-1] == expected, result.output
    assert result.output.endswith("CHAIN BROKEN\n")
    as_json = runner.invoke(args=["audit", "verify", "--json", *(f"--anchor={value}" for value in anchors)])
    assert as_json.exit_code == 1 and json.loads(as_json.output)["problems"] == expected, as_json.output
    assert json.loads(as_json.output)["checked"] == last + 1


def test_verify_reports_records_with_no_number(app, seq_unconstrained):
    """A record whose number is NULL (its NOT NULL constraint dropped) compares with no number: PostgreSQL sorted it
    last, after every page, SQLite first, where verify's paging began again at each such record."""
    write_records(3)
    seq_unconstrained()
    insert_forged_copy(1, numbered=None)
    insert_forged_copy(2, numbered=None)
    expected = ["records with no number: 2 (inserted or edited)"]
    for batch_size in (1, 2, None):
        report = service.verify(batch_size=batch_size)
        assert report.problems == expected and report.last_seq == db.session.scalar(
            select(func.max(AuditRecord.seq))), batch_size


def test_newest_records_are_read_as_they_are_listed(app, runner):
    """`flask audit list --limit 1000000` built the list of every record before printing the first; the records
    now come one at a time, newest first, from a result still open while the first is in hand."""
    write_records(3)
    seqs = db.session.scalars(select(AuditRecord.seq).order_by(AuditRecord.seq.desc())).all()
    newest = stored.newest(1_000_000)
    assert inspect.isgenerator(newest)
    assert next(newest).seq == seqs[0]
    if db.engine.dialect.name == "postgresql":  # the rows are on the server until fetched
        assert db.session.scalar(text("SELECT count(*) FROM pg_cursors")) == 1
    assert [record.seq for record in newest] == seqs[1:]
    if db.engine.dialect.name == "postgresql":
        assert db.session.scalar(text("SELECT count(*) FROM pg_cursors")) == 0
    listed = runner.invoke(args=["audit", "list", "--json", "--limit", "1000000"])
    assert listed.exit_code == 0 and [json.loads(line)["seq"] for line in listed.output.splitlines()] == seqs
