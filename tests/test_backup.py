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
from sqlalchemy import select, text
from sqlalchemy.engine import make_url

from app import create_app
from app.audit.models import AuditRecord
from app.auth import service as users
from app.backup.service import BACKING_UP, RESTORING, BackupRefused, sqlite_file
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


@pytest.mark.parametrize(("use", "postgres_tool", "postgres_code", "nothing_to"),
                         [(BACKING_UP, "pg_dump -Fc", "use_pg_dump", "back up"),
                          (RESTORING, "pg_restore", "use_pg_restore", "restore to")])
def test_only_a_sqlite_file_is_taken_and_each_refusal_names_its_command(use, postgres_tool, postgres_code,
                                                                       nothing_to, tmp_path):
    """Backup and restore share one reading of DATABASE_URL; each refusal still speaks of its own command."""
    with pytest.raises(BackupRefused) as refused:
        sqlite_file(make_url("postgresql://postgres@127.0.0.1:5432/registry"), use)
    assert refused.value.code == postgres_code and postgres_tool in str(refused.value)
    with pytest.raises(BackupRefused) as refused:
        sqlite_file(make_url("mysql://root@127.0.0.1/registry"), use)
    assert refused.value.code == "not_sqlite" and "mysql" in str(refused.value)
    with pytest.raises(BackupRefused) as refused:
        sqlite_file(make_url("sqlite://"), use)
    assert refused.value.code == "not_sqlite" and f"no file to {nothing_to}" in str(refused.value)
    absent = tmp_path / "not-yet" / "mpim.db"
    assert sqlite_file(make_url(f"sqlite:///{absent}"), use) == absent


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


# flask db-restore FILE: the documented restore copied the file over mpim.db, then ran `flask audit verify`, which
# passed a damaged page outside the audit table, a newer schema, an empty or a foreign database, after the data in
# place was gone.

def restore(application, *args, **kwargs):
    return application.test_cli_runner().invoke(args=["db-restore", *map(str, args)], **kwargs)


def restored(registry, target) -> dict:
    """`db-restore --yes --json` of `target`, which must succeed: what it printed."""
    result = restore(registry, target, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout)


def usernames(application) -> set[str]:
    with application.app_context():
        names = set(db.session.scalars(text("SELECT username FROM users")))
        db.session.remove()
        db.engine.dispose()
    return names


@pytest.fixture
def backed_up(elsewhere, tmp_path):
    """A backup holding `keeper`, and since then `later` added to the database in place."""
    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    assert backup(elsewhere, target).exit_code == 0
    created = elsewhere.test_cli_runner().invoke(args=["users", "create", "--role", "ministry_admin",
                                                       "--username", "later"])
    assert created.exit_code == 0, created.output
    with elsewhere.app_context():
        db.engine.dispose()
    assert usernames(elsewhere) == {"keeper", "later"}
    return target


def live(tmp_path) -> Path:
    return tmp_path / "srv" / "registry" / "mpim.db"


def assert_nothing_changed(elsewhere, tmp_path) -> None:
    assert usernames(elsewhere) == {"keeper", "later"}
    assert sorted(path.name for path in live(tmp_path).parent.iterdir()
                  if "before-restore" in path.name or path.name.endswith(".tmp")) == []


def test_a_restore_keeps_the_database_it_replaces_and_the_backups_data_is_served(elsewhere, backed_up, tmp_path):
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    described = json.loads(result.stdout)
    assert described["restored"] == str(live(tmp_path)) and described["schema"] == "current"
    assert described["replaced_newest"]["seq"] > described["backup_newest"]["seq"]  # what the restore loses
    assert f"audit record #{described['backup_newest']['seq']}" in result.stderr
    assert usernames(elsewhere) == {"keeper"}
    kept = Path(described["kept_as"])
    assert kept.parent == live(tmp_path).parent and kept.name.startswith("mpim.db.before-restore-")
    with sqlite3.connect(f"{kept.as_uri()}?mode=ro", uri=True) as before:
        assert {row[0] for row in before.execute("SELECT username FROM users")} == {"keeper", "later"}
    before.close()
    assert sorted(path.name for path in live(tmp_path).parent.iterdir() if path.name.endswith(".tmp")) == []
    with elsewhere.app_context():
        record = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
        assert (record.action, record.actor, record.target) == ("database.restore", "cli", str(live(tmp_path)))
        assert record.seq == described["backup_newest"]["seq"] + 1 and record.detail["kept_as"] == str(kept)
        db.engine.dispose()
    verified = elsewhere.test_cli_runner().invoke(args=["audit", "verify", "--json"])
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]


def test_a_restore_names_the_numbers_to_publish_and_sign_above(elsewhere, tmp_path):
    """After a restore the CRL numbers and the routing version go back to the backup's, and the next steps need
    the replaced database's numbers (`--above N`), which the operator had to dig out of the file kept aside.
    The restore reads them there and prints the three commands with them."""
    def flask(*args: str):
        result = elsewhere.test_cli_runner().invoke(args=list(args))
        assert result.exit_code == 0, (args, result.output, result.exception)
        with elsewhere.app_context():
            db.engine.dispose()
        return result

    flask("ca", "init", "--key-type", "ec")
    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    assert backup(elsewhere, target).exit_code == 0
    flask("routing", "publish", "--above", "11")  # v12
    flask("ca", "crl", "--regenerate", "--above", "30")  # CRL 31
    flask("ca", "root-crl", "--above", "4")  # root CRL 5

    result = restore(elsewhere, target, "--yes")
    assert result.exit_code == 0, (result.output, result.exception)
    commands = ["flask routing publish --above 12", "flask ca crl --regenerate --above 31",
                "flask ca root-crl --above 5"]
    lines = result.stdout.splitlines()
    assert [line.strip() for line in lines if line.strip().startswith("flask ")] == commands, result.stdout

    flask("routing", "publish", "--above", "14")  # v15, on the restored database
    described = json.loads(restore(elsewhere, target, "--yes", "--json").stdout)
    assert described["replaced_numbers"] == {"route_version": 15, "crl": 1, "root_crl": 1}
    # No CRL was signed since that backup: `root-crl --above 1` sent the operator for the offline root key for
    # nothing.
    assert described["next_commands"] == ["flask routing publish --above 15"]


def test_a_restore_names_the_exported_root_key_where_the_root_crl_needs_it(elsewhere, tmp_path):
    """With the root key offline, the printed `flask ca root-crl --above N` was refused (`root_offline`) as
    printed: it now names ROOT_KEY, the exported key, and run with it, signs above the nodes' number."""
    ok(elsewhere, "ca", "init", "--key-type", "ec")
    exported = tmp_path / "offline" / "root.key"
    exported.parent.mkdir()
    ok(elsewhere, "ca", "root-offline", str(exported))
    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    assert backup(elsewhere, target).exit_code == 0
    ok(elsewhere, "ca", "root-crl", "--above", "4", "--root-key", str(exported))  # root CRL 5

    described = json.loads(restore(elsewhere, target, "--yes", "--json").stdout)
    assert described["next_commands"] == [
        "flask ca root-crl --above 5 --root-key ROOT_KEY  # ROOT_KEY: the root key exported by flask ca root-offline"]
    run_as_printed(elsewhere, described["next_commands"], {"ROOT_KEY": exported})
    with elsewhere.app_context():
        number = db.session.scalar(text("SELECT crl_number FROM crl_state WHERE id = 2"))
        db.session.remove()
        db.engine.dispose()
    assert number == 6


def test_a_restore_over_a_database_without_a_ca_names_no_number(elsewhere, backed_up, tmp_path):
    described = json.loads(restore(elsewhere, backed_up, "--yes", "--json").stdout)
    assert described["replaced_numbers"] == {"route_version": None, "crl": None, "root_crl": None}
    assert described["next_commands"] == []


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def database_modes(database: Path) -> dict[str, int]:
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in database.parent.iterdir()
            if path.name in {database.name, f"{database.name}-wal", f"{database.name}-shm"}}


def test_the_database_the_registry_creates_is_readable_by_its_owner_only(umask_022, tmp_path, monkeypatch):
    """It holds password hashes, token hashes and the audit log; under the usual umask 022 it was 0644."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    application = sqlite_app(tmp_path / "instance")
    database = tmp_path / "instance" / "mpim.db"
    assert application.test_cli_runner().invoke(args=["db", "upgrade"]).exit_code == 0
    modes = database_modes(database)
    assert "mpim.db" in modes and set(modes.values()) == {0o600}, modes
    with application.app_context():
        db.engine.dispose()  # the next connection is a service starting

    os.chmod(database, 0o644)  # as a release before this made it: made 0600 when opened, its -wal and -shm too
    with application.app_context():
        db.session.execute(text("SELECT count(*) FROM users"))  # as a running service holds it
        assert database_modes(database) == {"mpim.db": 0o600, "mpim.db-wal": 0o600, "mpim.db-shm": 0o600}
        db.session.remove()
        db.engine.dispose()


def test_a_restore_never_leaves_the_database_readable_by_others(umask_022, elsewhere, backed_up, tmp_path):
    os.chmod(live(tmp_path), 0o644)  # as a release before this left it
    os.chmod(backed_up, 0o644)
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert stat.S_IMODE(live(tmp_path).stat().st_mode) == 0o600
    assert stat.S_IMODE(Path(json.loads(result.stdout)["kept_as"]).stat().st_mode) == 0o600


def test_a_restore_not_confirmed_changes_nothing(elsewhere, backed_up, tmp_path):
    result = restore(elsewhere, backed_up, input="n\n")
    assert result.exit_code == 1
    assert "Restore?" in result.stderr and "replaces:" in result.stderr
    assert_nothing_changed(elsewhere, tmp_path)


def damage_users_page(path: Path) -> None:
    """A damaged page outside the audit table (the page of `users`), which `flask audit verify` never reads."""
    with sqlite3.connect(path) as connection:
        page_size = connection.execute("PRAGMA page_size").fetchone()[0]
        root = connection.execute("SELECT rootpage FROM sqlite_master WHERE name = 'users'").fetchone()[0]
    connection.close()
    with open(path, "r+b") as handle:
        handle.seek(page_size * (root - 1) + 1)  # the page's first free block: read as always, found by the check
        handle.write(b"\x0f\xf0")


def schema_ahead(path: Path) -> None:
    """What a newer release's migration leaves: a revision this code does not know."""
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099_from_a_newer_release'")
    connection.close()


def foreign(path: Path) -> None:
    path.unlink()
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(("spoil", "code"), [
    (damage_users_page, "backup_corrupt"),
    (schema_ahead, "backup_schema_unknown"),
    (foreign, "not_a_registry_database"),
    (empty, "not_a_registry_database"),
    (truncated, "backup_failed"),
])
def test_a_backup_that_is_not_a_sound_registry_database_of_a_known_schema_is_refused_before_anything_changes(
        elsewhere, backed_up, tmp_path, spoil, code):
    spoil(backed_up)
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == code
    assert_nothing_changed(elsewhere, tmp_path)


@pytest.mark.parametrize("writing", [False, True])
def test_a_restore_while_another_process_has_the_database_open_is_refused(elsewhere, backed_up, tmp_path, writing):
    """A gunicorn worker or the scheduler holds an open connection even when idle; one may be writing."""
    other = hold_write_lock(live(tmp_path)) if writing else sqlite3.connect(live(tmp_path))
    try:
        other.execute("SELECT count(*) FROM users").fetchone()
        result = restore(elsewhere, backed_up, "--yes", "--json")
    finally:
        other.close()
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == "database_in_use"
    assert_nothing_changed(elsewhere, tmp_path)


def test_a_restore_goes_to_the_file_database_url_names(backed_up, tmp_path, monkeypatch):
    elsewhere_file = tmp_path / "data" / "registry.db"
    elsewhere_file.parent.mkdir()
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{elsewhere_file}")
    application = sqlite_app(tmp_path / "another-instance")
    result = restore(application, backed_up, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    described = json.loads(result.stdout)
    assert described["restored"] == str(elsewhere_file) and described["kept_as"] is None
    assert usernames(application) == {"keeper"}
    assert not (tmp_path / "another-instance" / "mpim.db").exists()


@pytest.mark.skipif(not os.environ.get("DATABASE_URL"), reason="PostgreSQL: run with DATABASE_URL")
def test_postgresql_is_refused_with_pg_restore_named(app, runner, tmp_path):
    source = tmp_path / "backup.db"
    source.write_bytes(b"")
    result = runner.invoke(args=["db-restore", str(source), "--yes", "--json"])
    assert result.exit_code == 1, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "use_pg_restore" and "pg_restore" in error["message"]


def test_the_backups_newest_record_is_the_newest_the_chain_numbers(elsewhere, backed_up, tmp_path):
    """The plan named the backup's newest audit record by SQLite's order, which puts a number edited into text above
    every number: "audit record #1a" for a backup whose newest record is another. It is the newest whole number,
    as the chain numbers records (`holds_a_number`)."""
    with sqlite3.connect(backed_up) as edited:
        for (trigger,) in edited.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                         "AND tbl_name = 'audit_records'").fetchall():
            edited.execute(f'DROP TRIGGER "{trigger}"')
        newest = edited.execute("SELECT max(seq) FROM audit_records").fetchone()[0]
        if newest == 1:  # a second record, so that one is left with a whole number
            columns = "at, actor, action, target, detail, remote_addr, prev_hash, hash"
            edited.execute(f"INSERT INTO audit_records (seq, {columns}) SELECT 2, {columns} FROM audit_records")
            newest = 2
        edited.execute(f"UPDATE audit_records SET seq = '{newest - 1}a' WHERE seq = {newest - 1}")
    edited.close()
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["backup_newest"]["seq"] == newest
    assert f"audit record #{newest} at " in result.stderr


# What the replaced database holds that the backup lacks: the restore steps' commands named only the numbers, so
# the CRL signed above the nodes' one no longer listed what had been revoked since the backup.

def cli(application, *args: str, **kwargs):
    result = application.test_cli_runner().invoke(args=list(args), **kwargs)
    with application.app_context():
        db.engine.dispose()
    return result


def ok(application, *args: str, **kwargs):
    result = cli(application, *args, **kwargs)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result


@pytest.fixture
def registry(elsewhere):
    """`elsewhere` with a CA, the divisions and four admitted nodes, each holding a certificate."""
    from app.admission import applications
    from app.divisions import service as divisions
    from tests.factories import node_document

    ok(elsewhere, "ca", "init", "--key-type", "ec")
    with elsewhere.app_context():
        divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), divisions.DEFAULT_REVISION, actor="tests")
        keeper = users.get_user("keeper")
        for _ in range(4):
            applications.approve(applications.submit_by_user(node_document("360100"), by=keeper), by=keeper)
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    return elsewhere


def node_certificates(application) -> dict[str, str]:
    """node id -> the serial of its certificate."""
    with application.app_context():
        rows = db.session.execute(text("SELECT node_id, serial FROM certificates WHERE kind = 'node'")).all()
        db.session.remove()
        db.engine.dispose()
    return dict(rows)


def run_as_printed(application, commands: list[str], files: dict[str, Path]) -> None:
    """Each printed command as an operator runs it: NAME is who acts, FILE the node's PEM (named in the comment by
    its serial), a confirmation answered yes."""
    import shlex

    for command in commands:
        words = shlex.split(command, comments=True)
        assert words[0] == "flask", command
        words = ["keeper" if word == "NAME" else str(files["ROOT_KEY"]) if word == "ROOT_KEY" else word
                 for word in words[1:]]
        if "FILE" in words:
            words[words.index("FILE")] = str(files[command.split("serial ")[1].split(",")[0]])
        ok(application, *words, input="y\n")


def test_a_restore_writes_out_every_certificate_to_record_a_node_renewed_twice_included(registry, tmp_path):
    """The printed `flask ca record FILE` named the node's tls/node.pem, which holds its newest certificate only:
    for a node renewed twice since the backup, the first command recorded the newest, the second was refused as on
    record already, and the other certificate issued since stayed off the record (and off the CRL, revoked). The
    restore writes each one out beside the file it keeps aside, and the commands name those files."""
    from tests.factories import NodeKeys

    target = tmp_path / "copy.db"
    ok(registry, "db-backup", str(target))
    renewed = sorted(node_certificates(registry))[0]
    issued = []
    for turn in range(2):
        csr = tmp_path / f"renewal-{turn}.csr"
        csr.write_text(NodeKeys().csr)
        done = ok(registry, "ca", "renew", renewed, "--csr", str(csr), "--user", "keeper", "--json")
        issued.append(json.loads(done.stdout)["serial"])

    described = restored(registry, target)
    records = [command for command in described["next_commands"] if command.startswith("flask ca record")]
    assert records == [f"flask ca record {described['kept_as']}.certificates/{serial}.pem  # node {renewed}"
                       for serial in issued]
    run_as_printed(registry, described["next_commands"], {})
    with registry.app_context():
        on_record = set(db.session.scalars(text("SELECT serial FROM certificates WHERE node_id = :node"),
                                           {"node": renewed}))
        db.session.remove()
        db.engine.dispose()
    assert set(issued) <= on_record


def crl_serials(application) -> tuple[int, set[str]]:
    from cryptography import x509

    with application.app_context():
        der = db.session.scalar(text("SELECT der FROM crl_state WHERE id = 1"))
        db.session.remove()
        db.engine.dispose()
    crl = x509.load_der_x509_crl(der)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    return number, {format(entry.serial_number, "x") for entry in crl}


def test_a_restore_names_what_to_record_and_revoke_again_before_the_crl_above_the_nodes_one(registry, tmp_path):
    """Run in their order, the printed commands signed a CRL numbered above the nodes' one that no longer listed a
    certificate revoked since the backup: nodes trusted its key again. They now first put back on record the
    certificates issued since, and revoke again what was revoked, nodes as nodes."""
    from app.admission import applications
    from tests.factories import node_document

    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    ok(registry, "db-backup", str(target))
    gone, paused, leaked, kept = sorted(node_certificates(registry))
    serial = node_certificates(registry)
    ok(registry, "nodes", "revoke", gone, "--reason", "left the network", "--user", "keeper")
    ok(registry, "nodes", "suspend", paused, "--reason", "audit; pending", "--user", "keeper")
    ok(registry, "ca", "revoke", serial[leaked], "--reason", "key_compromise", "--user", "keeper")
    with registry.app_context():  # admitted after the backup: the restored registry does not know it
        keeper = users.get_user("keeper")
        late = applications.approve(applications.submit_by_user(node_document("360100"), by=keeper), by=keeper)
        late_id = late.node_id
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    late_serial = node_certificates(registry)[late_id]
    held, revoked = crl_serials(registry)
    assert {serial[gone], serial[leaked]} <= revoked

    described = restored(registry, target)
    numbers = described["replaced_numbers"]
    assert described["next_commands"] == [
        f"flask routing publish --above {numbers['route_version']}",
        f"flask ca record {described['kept_as']}.certificates/{late_serial}.pem  # node {late_id}",
        f"flask ca revoke {late_serial} --reason cessation_of_operation --user NAME",
        f"flask ca revoke {serial[leaked]} --reason key_compromise --user NAME",
        f"flask nodes revoke {gone} --reason 'left the network' --user NAME",
        f"flask nodes suspend {paused} --reason 'audit; pending' --user NAME",
        f"flask ca crl --regenerate --above {held}"]
    assert numbers["crl"] == held

    run_as_printed(registry, described["next_commands"], {})
    number, listed = crl_serials(registry)
    assert number > held  # step 3's revocations counted on from the backup's number, step 4 above them all
    assert {serial[gone], serial[leaked], late_serial} <= listed and serial[kept] not in listed
    with registry.app_context():
        statuses = dict(db.session.execute(text("SELECT node_id, status FROM nodes")).all())
        db.session.remove()
        db.engine.dispose()
    assert (statuses[gone], statuses[paused], statuses[kept]) == ("revoked", "suspended", "active")


def test_a_restore_names_a_node_resumed_since_the_backup(registry, tmp_path):
    """A node suspended in the backup and resumed since came back suspended, and nothing said so: the admin's
    resumption was lost without a word. The printed commands now resume it again."""
    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    paused = sorted(node_certificates(registry))[0]
    ok(registry, "nodes", "suspend", paused, "--reason", "audit", "--user", "keeper")
    ok(registry, "db-backup", str(target))
    ok(registry, "nodes", "resume", paused, "--reason", "audit done", "--user", "keeper")

    described = restored(registry, target)
    numbers = described["replaced_numbers"]
    assert described["next_commands"] == [
        f"flask routing publish --above {numbers['route_version']}",
        f"flask nodes resume {paused} --reason 'audit done' --user NAME"]
    assert {"node_id": paused, "status": "active", "reason": "audit done"} in \
        described["lost_since_backup"]["node_changes"]

    run_as_printed(registry, described["next_commands"], {})
    with registry.app_context():
        status = db.session.scalar(text("SELECT status FROM nodes WHERE node_id = :node"), {"node": paused})
        db.session.remove()
        db.engine.dispose()
    assert status == "active"


@pytest.mark.parametrize("root_key", ["online", "offline"])
def test_a_restore_that_loses_the_intermediates_revocation_revokes_it_again_in_place_of_a_root_crl(registry,
                                                                                                     tmp_path,
                                                                                                     root_key):
    """`flask ca root-crl --above N`, as printed, signed a root CRL above the nodes' one without the intermediate:
    nodes trusted its leaked key again. With the root key offline, as operations.md advises, the printed
    command lacked `--root-key` and was refused (`root_offline`) in the middle of the restore's steps."""
    from cryptography import x509

    target = tmp_path / "backups" / "mpim-registry.db"
    target.parent.mkdir()
    exported = tmp_path / "offline" / "root.key"
    signing = []
    if root_key == "offline":
        exported.parent.mkdir()
        ok(registry, "ca", "root-offline", str(exported))
        signing = ["--root-key", str(exported)]
    ok(registry, "db-backup", str(target))
    ok(registry, "ca", "revoke-intermediate", "--reason", "key_compromise", *signing, "--yes")
    described = restored(registry, target)
    root_number = described["replaced_numbers"]["root_crl"]
    assert described["next_commands"] == [
        f"flask ca revoke-intermediate --reason key_compromise --above {root_number} --user NAME"
        if root_key == "online" else
        f"flask ca revoke-intermediate --reason key_compromise --above {root_number} --root-key ROOT_KEY --user NAME"
        "  # ROOT_KEY: the root key exported by flask ca root-offline"]

    run_as_printed(registry, described["next_commands"], {"ROOT_KEY": exported})
    with registry.app_context():
        der = db.session.scalar(text("SELECT der FROM crl_state WHERE id = 2"))
        db.session.remove()
        db.engine.dispose()
    root_crl = x509.load_der_x509_crl(der)
    assert root_crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == root_number + 1
    assert len(list(root_crl)) == 1


def test_a_restore_ends_the_console_sessions_the_backup_holds(elsewhere, tmp_path):
    """A session signed out, or ended by an administrator, after the backup was alive again once it was restored:
    its cookie, copied before the sign-out, opened the console again."""
    from tests.conftest import Console

    elsewhere.config["SESSION_COOKIE_SECURE"] = False
    console = Console(elsewhere.test_client())
    assert console.login("keeper", "Correct-Horse-9").status_code == 302
    cookie = console.client.get_cookie("session").value
    assert console.client.get("/").status_code == 200
    target = tmp_path / "copy.db"
    ok(elsewhere, "db-backup", str(target))
    ok(elsewhere, "users", "end-sessions", "keeper")
    with elsewhere.app_context():
        db.session.remove()
        db.engine.dispose()

    result = restore(elsewhere, target, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    with elsewhere.app_context():
        rows = db.session.execute(text("SELECT id, end_reason FROM console_sessions")).all()
        # stored as every other time of the column is (naive UTC text on SQLite), not as sqlite3's "+00:00" form
        stored = db.session.scalars(text("SELECT CAST(ended_at AS TEXT) FROM console_sessions")).all()
        record = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
        db.session.remove()
        db.engine.dispose()
    assert [reason for _, reason in rows] == ["database_restore"]
    assert len(stored) == 1 and "+" not in stored[0], stored
    assert record.action == "database.restore" and record.detail["sessions_ended"] == [rows[0][0]]
    console.client.set_cookie("session", cookie)
    assert console.client.get("/").status_code == 302
    with elsewhere.app_context():
        db.session.remove()
        db.engine.dispose()
    verified = cli(elsewhere, "audit", "verify", "--json")
    assert verified.exit_code == 0 and json.loads(verified.stdout)["ok"]


def test_a_backup_of_another_ca_is_refused_before_anything_changes(elsewhere, tmp_path, monkeypatch):
    """/healthz said database_mismatch only once the other registry's database was in place."""
    ok(elsewhere, "ca", "init", "--key-type", "ec")
    other = sqlite_app(tmp_path / "other")
    ok(other, "db", "upgrade")
    ok(other, "ca", "init", "--key-type", "ec")
    target = tmp_path / "other.db"
    ok(other, "db-backup", str(target))
    before = live(tmp_path).read_bytes()

    result = restore(elsewhere, target, "--yes", "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "backup_of_another_ca"
    assert "MPIM_CA_DIR" in error["message"] and str(tmp_path / "srv" / "registry" / "ca") in error["message"]
    assert live(tmp_path).read_bytes() == before
    assert [path.name for path in live(tmp_path).parent.iterdir() if "restore" in path.name] == []

    # A new host, with no CA directory yet, takes it (the CA directory is restored beside it).
    fresh = sqlite_app(tmp_path / "fresh")
    result = restore(fresh, target, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)


def test_a_backup_holding_no_ca_is_refused_beside_a_ca_directory(elsewhere, backed_up, tmp_path):
    """A database with no CRL beside a CA directory is what /healthz calls empty or another registry's."""
    ok(elsewhere, "ca", "init", "--key-type", "ec")
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 1, result.output
    assert json.loads(result.stderr)["error"]["code"] == "backup_of_another_ca"


def test_json_without_yes_is_a_usage_error_and_changes_nothing(elsewhere, backed_up, tmp_path):
    """It prompted, and aborted with no JSON at all."""
    result = restore(elsewhere, backed_up, "--json")
    assert result.exit_code == 2, result.output
    assert "--yes" in result.stderr and "Restore?" not in result.stderr
    assert_nothing_changed(elsewhere, tmp_path)


@pytest.mark.parametrize(("content", "said"), [
    (b"PGDMP\x01\x0f\x00\x04\x08\x01\x01\x01" + b"\x00" * 200, "pg_restore"),
    (b"not a database at all, just text\n" * 20, "not an SQLite database"),
])
def test_a_file_that_is_no_sqlite_database_is_named_so(elsewhere, backed_up, tmp_path, content, said):
    """A pg_dump file given to SQLite's db-restore said "could not be copied: file is not a database"."""
    backed_up.write_bytes(content)
    result = restore(elsewhere, backed_up, "--yes", "--json")
    assert result.exit_code == 1, result.output
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "not_a_registry_database" and said in error["message"], error
    assert_nothing_changed(elsewhere, tmp_path)


def test_a_restore_revokes_the_enrollment_tokens_revoked_or_used_since_the_backup(registry, tmp_path):
    """A token revoked since the backup (it leaked, say) was active again once the backup was restored, and one
    used since could be used again: the database it replaced says so, so the restore revokes them in the restored
    one, and its audit record lists them."""
    from app.admission import tokens
    from app.admission.models import EnrollmentToken

    made = [json.loads(ok(registry, "tokens", "create", "--division", "360100", "--user", "keeper", "--json").stdout)
            for _ in range(3)]
    ids = [token["id"] for token in made]
    target = tmp_path / "copy.db"
    ok(registry, "db-backup", str(target))
    ok(registry, "tokens", "revoke", str(ids[0]), "--user", "keeper")
    with registry.app_context():
        tokens.consume(tokens.find_by_raw(made[1]["token"]))  # as an application submitted with it does
        db.session.commit()
        db.session.remove()
        db.engine.dispose()

    result = restore(registry, target, "--yes", "--json")
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.loads(result.stdout)["lost_since_backup"]["enrollment_tokens_spent"] == ids[:2]
    with registry.app_context():
        state = {row.id: row.revoked_at is not None for row in db.session.scalars(select(EnrollmentToken))}
        record = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc())).first()
        db.session.remove()
        db.engine.dispose()
    assert state == {ids[0]: True, ids[1]: True, ids[2]: False}
    assert record.action == "database.restore" and record.detail["tokens_revoked"] == ids[:2]
