"""Every `flask` command of the registry needs the schema its code was written for: against a database that
`flask db upgrade` has not created, or not brought up to date, it says so in one line and exits 1, before
doing any of its work; `flask db ...` itself, and Flask's own commands, run as ever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from app import create_app
from app.extensions import db

ROOT = Path(__file__).resolve().parent.parent
# One command of each group, and the ones `make db` runs after `flask db upgrade`.
COMMANDS = [["users", "ensure-admin"], ["ca", "init", "--generate-passphrase"], ["divisions", "import"],
            ["audit", "verify"], ["tokens", "list", "--user", "admin"], ["applications", "list", "--user", "admin"],
            ["nodes", "list", "--user", "admin"], ["health", "status"], ["routing", "show"], ["scheduler", "jobs"]]


def unmigrated_app(tmp_path: Path, url: str | None = None):
    """An app on a SQLite database no migration has run on (whatever DATABASE_URL the suite runs with)."""
    return create_app({"TESTING": True, "MPIM_INSTANCE_PATH": str(tmp_path / "instance"),
                       "SQLALCHEMY_DATABASE_URI": url or f"sqlite:///{tmp_path / 'mpim.db'}",
                       "SECRET_KEY": "test-secret-key", "MPIM_CA_PASSPHRASE": "test-ca-passphrase"})


@pytest.fixture
def unmigrated(tmp_path):
    application = unmigrated_app(tmp_path)
    yield application
    with application.app_context():
        db.engine.dispose()


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
def test_a_command_on_a_database_never_migrated_says_to_migrate(unmigrated, args):
    result = unmigrated.test_cli_runner().invoke(args=args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # not "no such table: users"
    assert result.output == "Error: The database is not migrated: run flask db upgrade first.\n"
    assert not (Path(unmigrated.config["MPIM_INSTANCE_PATH"]) / "ca").exists()  # `ca init` wrote nothing


def test_help_and_flask_db_need_no_schema_and_make_db_runs_in_order(unmigrated):
    """`make db`: `flask db upgrade`, then the commands that need its tables."""
    runner = unmigrated.test_cli_runner()
    assert runner.invoke(args=["users", "create", "--help"]).exit_code == 0
    result = runner.invoke(args=["db", "current"])
    assert result.exit_code == 0, result.output
    for args in (["db", "upgrade"], ["divisions", "import"], ["users", "ensure-admin"],
                 ["ca", "init", "--if-missing", "--generate-passphrase"], ["audit", "verify"]):
        result = runner.invoke(args=args)
        assert result.exit_code == 0, (args, result.output, result.exception)


def test_a_database_one_migration_behind_is_refused_and_one_ahead_is_not(app, runner):
    """A newer release may already have migrated the database (a rolling upgrade): that is fine, as for /healthz."""
    head = db.session.scalar(text("SELECT version_num FROM alembic_version"))
    behind = ("Error: The database schema is older than this version of the registry: run flask db upgrade first.\n")
    try:
        for recorded, exit_code in (("0010_nodes_status_org_index", 1), ("0099_from_a_newer_release", 0)):
            db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": recorded})
            db.session.commit()
            result = runner.invoke(args=["audit", "verify"])
            assert result.exit_code == exit_code, (recorded, result.output, result.exception)
            assert result.output == behind if exit_code else "chain intact" in result.output
    finally:
        db.session.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
        db.session.commit()
    assert runner.invoke(args=["audit", "verify"]).exit_code == 0


def test_a_database_that_cannot_be_opened_is_named_as_such_not_as_unmigrated(tmp_path):
    application = unmigrated_app(tmp_path, f"sqlite:///{tmp_path / 'no-such-directory' / 'mpim.db'}")
    result = application.test_cli_runner().invoke(args=["audit", "verify"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.output.startswith("Error: The database cannot be opened: ") and result.output.count("\n") == 1
    assert "unable to open database file" in result.output


def test_the_real_flask_executable_answers_one_line_and_runs_its_own_commands(tmp_path):
    """Through FlaskGroup, as an operator types it; Flask's `routes` reads no table and still runs."""
    environment = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    environment.update(FLASK_APP="wsgi.py", MPIM_INSTANCE_PATH=str(tmp_path / "instance"))

    def flask(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flask", *args], env=environment, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    result = flask("users", "ensure-admin")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "Error: The database is not migrated: run flask db upgrade first.\n"
    result = flask("routes")
    assert result.returncode == 0 and "audit.export" in result.stdout, result.stderr


@pytest.mark.parametrize("args", [["users", "list"], ["ca", "crl"], ["audit", "verify"], ["health", "status"]],
                         ids=" ".join)
def test_with_json_the_refusal_is_the_error_object_as_every_other_refusal(unmigrated, args):
    """The README says a refusal under --json is one {"error": ...} line on stderr; the schema check printed
    click's plain line whatever the command was asked for."""
    result = unmigrated.test_cli_runner().invoke(args=[*args, "--json"])
    assert result.exit_code == 1 and result.stdout == "", result.output
    assert json.loads(result.stderr) == {"error": {
        "code": "not_migrated", "message": "The database is not migrated: run flask db upgrade first."}}
