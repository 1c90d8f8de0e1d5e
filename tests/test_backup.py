"""`flask db-backup PATH`: a copy of the database the registry is configured with, checked before it is kept
(operations: Backup).

The one-liner the operations guide gave opened `instance/mpim.db` relative to the working directory, and
sqlite3.connect creates a file that is missing: with MPIM_INSTANCE_PATH set, or run from elsewhere, it wrote an
empty backup and exited 0."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from app import create_app
from app.auth import service as users
from app.extensions import db


def sqlite_app(instance: Path):
    """An app whose database is the default one of `instance` (MPIM_INSTANCE_PATH), whatever the suite runs on."""
    return create_app({"TESTING": True, "MPIM_INSTANCE_PATH": str(instance), "SECRET_KEY": "test-secret-key",
                       "MPIM_CA_PASSPHRASE": "test-ca-passphrase"})


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """A registry under a non-default instance path, run from another directory, with data in its database."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    application = sqlite_app(tmp_path / "srv" / "registry")
    runner = application.test_cli_runner()
    assert runner.invoke(args=["db", "upgrade"]).exit_code == 0
    created = runner.invoke(args=["users", "ensure-admin", "--username", "keeper"],
                            env={"MPIM_ADMIN_PASSWORD": "Correct-Horse-9"})
    assert created.exit_code == 0, created.output
    with application.app_context():
        db.engine.dispose()
    yield application
    with application.app_context():
        db.engine.dispose()


def backup(application, *args):
    return application.test_cli_runner().invoke(args=["db-backup", *map(str, args)])


def test_a_backup_of_the_configured_database_restores_with_its_data(elsewhere, tmp_path):
    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    result = backup(elsewhere, target, "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    described = json.loads(result.stdout)
    assert described["source"] == str(tmp_path / "srv" / "registry" / "mpim.db")
    assert described["backup"] == str(target) and described["integrity"] == "ok" and described["revision"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o600  # password hashes and the audit log
    assert sorted(path.name for path in target.parent.iterdir()) == [target.name]  # no temporary file left
    assert not (tmp_path / "cwd" / "instance").exists()  # nothing created where the command ran

    restored = tmp_path / "restored"
    restored.mkdir()
    shutil.copyfile(target, restored / "mpim.db")
    again = sqlite_app(restored)
    with again.app_context():
        assert users.get_user("keeper").role == "ministry_admin"
        db.engine.dispose()
    verified = again.test_cli_runner().invoke(args=["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]
    with again.app_context():
        db.engine.dispose()


def test_the_backup_is_audited(elsewhere, tmp_path):
    from sqlalchemy import select

    from app.audit.models import AuditRecord

    target = tmp_path / "copy.db"
    assert backup(elsewhere, target).exit_code == 0
    with elsewhere.app_context():
        record = db.session.scalars(select(AuditRecord).where(AuditRecord.action == "database.backup")).one()
        assert (record.actor, record.target) == ("cli", str(target))
        db.engine.dispose()


def test_a_missing_database_is_refused_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    application = sqlite_app(tmp_path / "srv")
    target = tmp_path / "copy.db"
    result = backup(application, target, "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "database_missing" and str(tmp_path / "srv" / "mpim.db") in error["message"]
    assert not target.exists() and not (tmp_path / "srv" / "mpim.db").exists()


def test_a_database_never_migrated_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    (tmp_path / "srv").mkdir()
    sqlite3.connect(tmp_path / "srv" / "mpim.db").close()  # what the old one-liner left: an empty file
    application = sqlite_app(tmp_path / "srv")
    target = tmp_path / "copy.db"
    result = backup(application, target, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == "not_a_registry_database"
    assert not target.exists()


def test_an_existing_target_is_kept_unless_overwrite(elsewhere, tmp_path):
    target = tmp_path / "copy.db"
    target.write_text("an older backup")
    result = backup(elsewhere, target, "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == "backup_exists"
    assert target.read_text() == "an older backup"
    result = backup(elsewhere, target, "--overwrite")
    assert result.exit_code == 0, result.output
    with sqlite3.connect(f"{target.as_uri()}?mode=ro", uri=True) as copy:
        assert copy.execute("SELECT username FROM users").fetchall() == [("keeper",)]
    copy.close()


def test_the_live_database_is_never_the_target(elsewhere, tmp_path):
    source = tmp_path / "srv" / "registry" / "mpim.db"
    before = source.read_bytes()
    result = backup(elsewhere, source, "--overwrite", "--json")
    assert result.exit_code == 1 and json.loads(result.stderr)["error"]["code"] == "backup_is_database"
    assert source.read_bytes() == before


@pytest.mark.skipif(not os.environ.get("DATABASE_URL"), reason="PostgreSQL: run with DATABASE_URL")
def test_postgresql_is_refused_with_pg_dump_named(app, runner, tmp_path):
    target = tmp_path / "copy.db"
    result = runner.invoke(args=["db-backup", str(target), "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "use_pg_dump" and "pg_dump" in error["message"]
    assert not target.exists()


def hold_write_lock(database: Path) -> sqlite3.Connection:
    """Another process's long write (a migration, a job): the database's write lock, held until closed."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_a_backup_while_another_process_holds_the_write_lock_is_refused_and_keeps_nothing(elsewhere, tmp_path):
    """It kept the copy, then its audit record failed after the busy timeout with a traceback (even with --json),
    and the next run found `backup_exists`."""
    target = tmp_path / "copy.db"
    holder = hold_write_lock(tmp_path / "srv" / "registry" / "mpim.db")
    try:
        result = backup(elsewhere, target, "--json")
    finally:
        holder.close()
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == "database_busy"
    assert not target.exists() and list(tmp_path.glob(".copy.db.*")) == []
    assert backup(elsewhere, target).exit_code == 0  # the next run is not refused as `backup_exists`
