"""`flask users …`: the console's user actions from the command line (SPEC §4: every console action has a CLI
twin), audited as the console audits them but under the actor "cli", and passwords read from standard input as
an operator's file holds them."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from datetime import timedelta

import pytest
from flask.testing import FlaskCliRunner
from sqlalchemy import select

from app.audit.models import AuditRecord
from app.auth import service
from app.auth.models import LoginThrottle, User
from app.database import utcnow
from app.extensions import db
from tests.conftest import PASSWORD, Console


class ProcessStdinRunner(FlaskCliRunner):
    """Standard input as a real `flask` process has it. CliRunner's reads CRLF as LF (universal newlines) and
    refuses bytes that are not UTF-8; Python's own sys.stdin keeps the CR, and under a UTF-8 locale turns such
    bytes into lone surrogates (surrogateescape), which is how both reached the password."""

    @contextlib.contextmanager
    def isolation(self, *args, **kwargs):
        with super().isolation(*args, **kwargs) as streams:
            sys.stdin = io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="surrogateescape", newline="\n")
            yield streams


@pytest.fixture
def process_runner(app):
    return ProcessStdinRunner(app)


def records(action: str | None = None) -> list[AuditRecord]:
    query = select(AuditRecord).order_by(AuditRecord.seq)
    if action:
        query = query.where(AuditRecord.action == action)
    return list(db.session.scalars(query))


def newest(count: int) -> list[tuple[str, str, str, dict]]:
    """The newest records as (actor, action, target, detail), oldest first."""
    return [(entry.actor, entry.action, entry.target, entry.detail) for entry in records()[-count:]]


def without_actor(entries):
    return [entry[1:] for entry in entries]


def user(username: str) -> User:
    db.session.expire_all()
    return db.session.scalar(select(User).where(User.username == username))


def signs_in(app, username: str, password: str = PASSWORD) -> bool:
    return Console(app.test_client()).login(username, password).status_code == 302


def lock_addresses(*addresses: str) -> None:
    db.session.add_all(LoginThrottle(key=f"addr:{address}", failures=0, locked_until=utcnow() + timedelta(minutes=15))
                       for address in addresses)
    db.session.commit()


# --- users update ------------------------------------------------------------------------------

def test_update_changes_a_user_as_the_edit_form_does_and_records_the_same(app, admin_console, make_user, runner):
    make_user("alice", "provincial_admin", ("360000",))
    make_user("bob", "provincial_admin", ("360000",))
    admin_console.post_form("/users/bob", {"display_name": "王五", "role": "provincial_admin",
                                           "scopes": "360000,440000", "active": "y"})
    by_console = newest(1)

    result = runner.invoke(args=["users", "update", "alice", "--name", "王五", "--scope", "360000,440000"])

    assert result.exit_code == 0, result.output
    assert result.stdout == "updated alice: provincial_admin, scopes 360000,440000, active\n"
    changed = user("alice")
    assert (changed.display_name, changed.role, changed.scope_codes, changed.active) == \
        ("王五", "provincial_admin", "360000,440000", True)
    by_cli = newest(1)
    assert [entry[0] for entry in by_console + by_cli] == ["minister", "cli"]
    assert [entry[1:3] for entry in by_cli] == [("user.update", "alice")]
    assert by_cli[0][3] == by_console[0][3]  # the same before and after


def test_update_disabling_an_account_ends_its_sessions_as_the_edit_form_does(app, admin_console, make_user, runner):
    make_user("alice", "auditor")
    make_user("bob", "auditor")
    alice, bob = Console(app.test_client()), Console(app.test_client())
    assert alice.login("alice").status_code == 302 and bob.login("bob").status_code == 302
    admin_console.post_form("/users/bob", {"display_name": "", "role": "auditor", "scopes": ""})  # active unticked
    by_console = newest(2)

    result = runner.invoke(args=["users", "update", "alice", "--inactive", "--json"])

    by_cli = newest(2)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"username": "alice", "display_name": "", "role": "auditor", "scopes": [],
                                         "active": False, "changed": True}
    assert user("alice").active is False
    assert alice.client.get("/audit/").status_code == 302  # signed out everywhere
    assert [entry[0] for entry in by_cli] == ["cli", "cli"]
    assert [(action, target) for action, target, _detail in without_actor(by_console)] == \
        [("user.update", "bob"), ("auth.session_end", "bob")]
    assert [(action, target) for action, target, _detail in without_actor(by_cli)] == \
        [("user.update", "alice"), ("auth.session_end", "alice")]
    assert by_cli[0][3] == by_console[0][3] and by_cli[1][3]["reason"] == by_console[1][3]["reason"] == "disabled"
    assert signs_in(app, "alice") is False
    assert runner.invoke(args=["users", "update", "alice", "--active"]).exit_code == 0
    assert signs_in(app, "alice")


def test_update_keeps_what_it_is_not_told_to_change(app, make_user, runner):
    make_user("alice", "provincial_admin", ("360000",))
    assert runner.invoke(args=["users", "update", "alice", "--name", "张三"]).exit_code == 0
    kept = user("alice")
    assert (kept.display_name, kept.role, kept.scope_codes, kept.active) == \
        ("张三", "provincial_admin", "360000", True)
    # Another role has no scope: the provincial one goes with the role, without --scope "".
    result = runner.invoke(args=["users", "update", "alice", "--role", "auditor"])
    assert result.exit_code == 0, result.output
    changed = user("alice")
    assert (changed.display_name, changed.role, changed.scope_codes) == ("张三", "auditor", "")
    assert records("user.update")[-1].detail["after"]["scopes"] == ""


def test_update_keeps_a_scope_a_later_revision_retired(app, make_user, runner):
    """As the edit form does (tests/test_retired_scopes.py): with no --scope the account's own codes are kept,
    retired or not, so a provincial admin of a merged county can still be renamed and disabled."""
    from app.divisions import service as divisions

    divisions.import_revision((divisions.DATA_DIR / "gb2260-2019.04.csv").read_bytes(), "2019.04", allow_older=True)
    db.session.commit()
    make_user("xt-admin", "provincial_admin", ("130521",))
    divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), "2023")  # 130521 邢台县 retired
    db.session.commit()
    result = runner.invoke(args=["users", "update", "xt-admin", "--inactive", "--name", "邢台"])
    assert result.exit_code == 0, result.output
    kept = user("xt-admin")
    assert (kept.active, kept.display_name, kept.scope_codes) == (False, "邢台", "130521")


@pytest.mark.parametrize(("args", "stderr", "code"), [
    (["ghost", "--name", "x"], "error: No user named ghost.\n", "user_not_found"),
    (["alice", "--scope", "999999"], None, None),
    (["alice", "--role", "auditor", "--scope", "360000"], "error: Only provincial admins have a division scope.\n",
     "scope_not_allowed"),
    (["alice", "--role", "provincial_admin", "--scope", ""], "error: A provincial admin needs at least one division "
     "code.\n", "scope_required"),
    # Two wrong fields, which the edit form shows together: the command names the first, as before.
    (["alice", "--role", "provincial_admin", "--scope", "", "--name", "江西\x07省厅"], "error: A provincial admin "
     "needs at least one division code.\n", "scope_required"),
])
def test_update_refusals_are_one_line_exit_1_and_change_nothing(app, make_user, runner, args, stderr, code):
    make_user("alice", "provincial_admin", ("360000",))
    before = len(records())
    result = runner.invoke(args=["users", "update", *args])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == "" and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    if stderr:
        assert result.stderr == stderr
    as_json = runner.invoke(args=["users", "update", *args, "--json"])
    assert as_json.exit_code == 1 and as_json.stderr.count("\n") == 1  # one error object
    if code:
        assert json.loads(as_json.stderr)["error"]["code"] == code
    assert len(records()) == before and user("alice").scope_codes == "360000"


def test_update_with_nothing_to_change_is_a_usage_error(make_user, runner):
    make_user("alice", "auditor")
    before = len(records())
    result = runner.invoke(args=["users", "update", "alice"])
    assert result.exit_code == 2 and "--role" in result.stderr
    assert len(records()) == before


# --- users reset-password ----------------------------------------------------------------------

def test_reset_password_from_stdin_is_the_consoles_reset(app, admin_console, make_user, runner):
    make_user("alice")
    make_user("bob")
    alice, bob = Console(app.test_client()), Console(app.test_client())
    assert alice.login("alice").status_code == 302 and bob.login("bob").status_code == 302
    admin_console.post_form("/users/bob", {"reset-password": "Other-Horse-77"}, action="/users/bob/password")
    by_console = newest(2)

    result = runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"], input="Other-Horse-77\n")

    by_cli = newest(2)
    assert result.exit_code == 0, result.output
    assert result.stdout == "reset the password of alice (alice chooses a new one at the next sign-in)\n"
    assert alice.client.get("/audit/").status_code == 302  # signed out everywhere
    assert user("alice").password_must_change is True  # someone else chose it
    assert signs_in(app, "alice", "Other-Horse-77") and not signs_in(app, "alice", PASSWORD)
    assert [entry[0] for entry in by_cli] == ["cli", "cli"]
    assert [entry[1:3] for entry in by_console] == [("user.password_reset", "bob"), ("auth.session_end", "bob")]
    assert [entry[1:3] for entry in by_cli] == [("user.password_reset", "alice"), ("auth.session_end", "alice")]
    assert by_cli[0][3] == by_console[0][3]
    assert by_cli[1][3]["reason"] == by_console[1][3]["reason"] == "password_reset"


def test_reset_password_generates_one_and_prints_it_once(app, make_user, runner):
    make_user("alice")
    result = runner.invoke(args=["users", "reset-password", "alice"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("reset the password of alice; password: ")
    password = result.stdout.split("password: ")[1].split()[0]
    assert signs_in(app, "alice", password)
    as_json = runner.invoke(args=["users", "reset-password", "alice", "--json"])
    assert as_json.exit_code == 0, as_json.output
    item = json.loads(as_json.stdout)
    assert item["username"] == "alice" and item["password"] != password and signs_in(app, "alice", item["password"])
    quiet = runner.invoke(args=["users", "reset-password", "alice", "--password-stdin", "--json"],
                          input="Other-Horse-77\n")
    assert json.loads(quiet.stdout) == {"username": "alice"}  # a password the operator gave is not echoed


def test_reset_password_lets_the_operator_back_into_the_only_ministry_admin(app, make_user, runner):
    """The console refuses an admin's reset of their own password; on the server the operator is nobody's
    session, and this is how a forgotten password of the one ministry admin is replaced."""
    make_user("minister")
    result = runner.invoke(args=["users", "reset-password", "minister", "--password-stdin"], input="Other-Horse-77\n")
    assert result.exit_code == 0, result.output
    assert signs_in(app, "minister", "Other-Horse-77")


@pytest.mark.parametrize(("username", "password", "stderr", "code"), [
    ("ghost", "Other-Horse-77", "error: No user named ghost.\n", "user_not_found"),
    ("alice", "short", "error: Passwords need at least 10 characters.\n", "weak_password"),  # and too plain
    ("alice", PASSWORD, "error: The new password must differ from the last 5 passwords of this account.\n",
     "password_reused"),
])
def test_reset_password_refusals_are_one_line_exit_1_and_change_nothing(app, make_user, runner, username, password,
                                                                        stderr, code):
    make_user("alice")
    before = len(records())
    result = runner.invoke(args=["users", "reset-password", username, "--password-stdin"], input=password + "\n")
    assert (result.exit_code, result.stdout, result.stderr) == (1, "", stderr)
    as_json = runner.invoke(args=["users", "reset-password", username, "--password-stdin", "--json"],
                            input=password + "\n")
    assert as_json.exit_code == 1 and json.loads(as_json.stderr)["error"]["code"] == code  # one error object
    assert len(records()) == before and signs_in(app, "alice")


# --- users clear-address-locks -----------------------------------------------------------------

def test_clear_address_locks_is_the_users_pages_button(app, admin_console, runner):
    lock_addresses("10.0.0.1", "10.0.0.2")
    admin_console.post_form("/users/", {}, action="/users/address-locks/clear")
    by_console = newest(1)
    lock_addresses("10.0.0.1", "10.0.0.2")

    result = runner.invoke(args=["users", "clear-address-locks"])

    assert result.exit_code == 0, result.output
    assert result.stdout == "cleared the sign-in lock on 10.0.0.1, 10.0.0.2\n"
    assert service.locked_addresses() == []
    by_cli = newest(1)
    assert by_console[0][0] == "minister" and by_cli[0][0] == "cli"
    assert without_actor(by_cli) == without_actor(by_console) == \
        [("auth.unlock_addresses", "10.0.0.1, 10.0.0.2", {"addresses": ["10.0.0.1", "10.0.0.2"]})]


def test_clear_address_locks_with_none_locked_says_so_and_records_it_as_the_console_does(admin_console, runner):
    admin_console.post_form("/users/", {}, action="/users/address-locks/clear")
    by_console = newest(1)
    result = runner.invoke(args=["users", "clear-address-locks"])
    assert (result.exit_code, result.stdout) == (0, "no address was locked\n")
    assert without_actor(newest(1)) == without_actor(by_console)
    lock_addresses("10.0.0.3")
    as_json = runner.invoke(args=["users", "clear-address-locks", "--json"])
    assert json.loads(as_json.stdout) == {"addresses": ["10.0.0.3"]}


def test_create_refuses_a_username_that_is_a_page_of_the_users_list(runner):
    """The console's /users/new is the create form: an account named so could not be managed there."""
    before = len(records())
    result = runner.invoke(args=["users", "create", "--role", "auditor", "--username", "New"])
    assert result.exit_code == 1
    assert result.stderr == "error: The username \"New\" is the path of a console page and cannot be used.\n"
    as_json = runner.invoke(args=["users", "create", "--role", "auditor", "--username", "new", "--json"])
    assert json.loads(as_json.stderr)["error"]["code"] == "reserved_username"
    assert db.session.scalar(select(User).where(User.username.in_(["New", "new"]))) is None
    assert len(records()) == before


# --- passwords on standard input ---------------------------------------------------------------

def create_with_stdin(runner, data: bytes, username: str = "gbkpw", *extra: str):
    return runner.invoke(args=["users", "create", "--role", "auditor", "--username", username, "--password-stdin",
                               *extra], input=data)


def test_a_password_that_is_not_utf8_is_refused_in_one_line(process_runner, make_user):
    """GBK bytes (a file saved on a Chinese Windows) ended in a UnicodeEncodeError traceback."""
    make_user("alice")
    gbk = "密码密码密码Correct9\n".encode("gbk")
    before = len(records())
    created = create_with_stdin(process_runner, gbk)
    reset = process_runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"], input=gbk)
    for result in (created, reset):
        assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
        assert (result.stdout, result.stderr) == ("", "error: the password on standard input is not UTF-8 text\n")
    as_json = create_with_stdin(process_runner, gbk, "gbkpw", "--json")
    assert json.loads(as_json.stderr) == {"error": {"code": "invalid_encoding", "field": "password",
                                                    "message": "the password on standard input is not UTF-8 text"}}
    assert user("gbkpw") is None and len(records()) == before


@pytest.mark.parametrize("line_end", [b"\r\n", b"\n", b""])
def test_a_password_read_from_stdin_loses_its_line_end_crlf_too(app, process_runner, make_user, line_end):
    """A password file with Windows line ends kept the CR in the password: nobody could sign in with it."""
    make_user("alice")
    typed = "密码-Correct-Horse-9"
    created = create_with_stdin(process_runner, typed.encode() + line_end, "crlf")
    assert created.exit_code == 0, created.output
    assert signs_in(app, "crlf", typed)
    reset = process_runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"],
                                  input=b"Other-Horse-77" + line_end)
    assert reset.exit_code == 0, reset.output
    assert signs_in(app, "alice", "Other-Horse-77")


def test_only_one_line_end_is_taken_off_and_a_byte_order_mark_is_dropped(app, process_runner):
    """Notepad saves UTF-8 with a byte-order mark, which nobody types; spaces are the password's own, and a
    second CR is the password's too, so it is refused: no control character can be typed at the sign-in form."""
    assert create_with_stdin(process_runner, "\ufeffCorrect-Horse-9\n".encode(), "bom").exit_code == 0
    assert signs_in(app, "bom", "Correct-Horse-9")
    assert create_with_stdin(process_runner, b"Correct-Horse-9 \n", "spaced").exit_code == 0
    assert signs_in(app, "spaced", "Correct-Horse-9 ") and not signs_in(app, "spaced", "Correct-Horse-9")
    refused = create_with_stdin(process_runner, b"Correct-Horse-9\r\r\n", "carriage")
    assert refused.exit_code != 0 and "control characters" in refused.output and user("carriage") is None


# --- the actor ---------------------------------------------------------------------------------

def test_unlock_and_ensure_admin_are_recorded_as_the_cli_not_the_system(app, make_user, runner, monkeypatch):
    """"system" is what the server does by itself (the scheduler's jobs); every other CLI action says "cli"."""
    make_user("alice", "auditor")
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):
        Console(app.test_client()).login("alice", "Wrong-Horse-99")
    assert service.is_locked("alice")
    assert runner.invoke(args=["users", "unlock", "alice"]).exit_code == 0
    [unlocked] = records("auth.unlock")
    assert (unlocked.actor, unlocked.target) == ("cli", "alice")

    monkeypatch.delenv("MPIM_ADMIN_PASSWORD", raising=False)
    result = runner.invoke(args=["users", "ensure-admin", "--username", "first"])
    assert result.exit_code == 0, result.output
    [created] = records("user.create")[-1:]
    assert (created.actor, created.target) == ("cli", "first")


def test_a_password_longer_than_the_sign_in_form_takes_is_refused_at_every_door(app, make_user, runner):
    """The sign-in form takes at most 256 characters, and the CLI set any length: a 300-character password
    from --password-stdin was stored, and its user could never sign in with it."""
    make_user("alice")
    long_password = "Correct-Horse-9" * 20  # 300 characters
    before = len(records())
    created = create_with_stdin(runner, (long_password + "\n").encode(), "longpw")
    reset = runner.invoke(args=["users", "reset-password", "alice", "--password-stdin"], input=long_password + "\n")
    for result in (created, reset):
        assert (result.exit_code, result.stderr) == (1, "error: Passwords have at most 256 characters.\n")
    assert len(records()) == before and signs_in(app, "alice")
    assert create_with_stdin(runner, (long_password[:256] + "\n").encode(), "longpw").exit_code == 0
    assert signs_in(app, "longpw", long_password[:256])


def test_update_never_leaves_the_registry_without_an_active_ministry_admin(app, make_user, runner):
    """The console refuses demoting or deactivating oneself, so it always kept a ministry admin; `users update` had
    no such check: it disabled or demoted the only one, and `flask users ensure-admin` (a step of `make run`) then
    failed with "User admin already exists"."""
    make_user("minister")
    make_user("alice", "auditor")
    for change in (["--inactive"], ["--role", "auditor"], ["--role", "provincial_admin", "--scope", "360000"]):
        result = runner.invoke(args=["users", "update", "minister", *change])
        assert (result.exit_code, result.stderr) == (1, "error: This is the last active ministry admin: make "
                                                        "another one first.\n"), result.output
        assert user("minister").active and user("minister").role == "ministry_admin"
    as_json = runner.invoke(args=["users", "update", "minister", "--inactive", "--json"])
    assert json.loads(as_json.stderr)["error"]["code"] == "last_ministry_admin"
    assert runner.invoke(args=["users", "update", "alice", "--role", "ministry_admin"]).exit_code == 0
    assert runner.invoke(args=["users", "update", "minister", "--inactive"]).exit_code == 0  # alice is one now
    result = runner.invoke(args=["users", "update", "alice", "--inactive"])
    assert result.exit_code == 1 and user("alice").active


def test_the_readme_says_unlock_lifts_every_address_lock_as_its_help_does(app, runner):
    """The README said `flask users unlock alice` lifts "its address locks"; an address lock is no user's, and
    the command lifts every one in force (service.unlock), as its help says."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    line = next(line for line in readme.splitlines() if line.startswith("flask users unlock "))
    assert "every address lock in force" in line
    assert "every address lock in force" in runner.invoke(args=["users", "unlock", "--help"]).output


def codes_under_36(count: int) -> list[str]:
    """`count` current division codes of 江西 (36...): 60 of them joined make 419 characters."""
    from app.divisions.models import Division

    return list(db.session.scalars(select(Division.code).where(Division.code.startswith("36"),
                                                                Division.retired.is_(False))
                                   .order_by(Division.code).limit(count)))


@pytest.mark.parametrize("command", ["create", "update"])
def test_a_scope_longer_than_the_column_is_refused_in_one_line_and_changes_nothing(app, make_user, runner, command):
    """The joined codes are kept in a 400-character column: SQLite stored 419 and the console could then neither
    edit nor disable the account; PostgreSQL ended in a traceback naming the SQL parameters, password hash among
    them, and exit code 0."""
    make_user("alice", "provincial_admin", ("360000",))
    codes = codes_under_36(60)
    assert len(",".join(codes)) == 419
    before = len(records())
    args = (["create", "--role", "provincial_admin", "--username", "bob"] if command == "create" else
            ["update", "alice"])
    result = runner.invoke(args=["users", *args, "--scope", ",".join(codes)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert result.stdout == ""
    assert result.stderr == ("error: A division scope holds at most 57 codes (400 characters): the code of a "
                             "province or a city (such as 360000) covers every code under it.\n")
    as_json = runner.invoke(args=["users", *args, "--scope", ",".join(codes), "--json"])
    assert as_json.exit_code == 1
    assert json.loads(as_json.stderr)["error"]["code"] == "too_long"
    assert len(records()) == before and user("alice").scope_codes == "360000" and user("bob") is None
    assert runner.invoke(args=["users", *args, "--scope", ",".join(codes[:57])]).exit_code == 0


def test_a_scope_too_long_that_sqlite_stored_earlier_still_lets_the_account_be_disabled(app, make_user, runner):
    """As a retired code held is kept: the account's own list, unchanged, is not refused, or nothing could disable
    it. (PostgreSQL never stored one.)"""
    if db.engine.dialect.name != "sqlite":
        pytest.skip("only SQLite stored a list longer than its column")
    make_user("alice", "provincial_admin", ("360000",))
    *held, more = codes_under_36(61)
    codes = ",".join(held)
    db.session.execute(User.__table__.update().where(User.username == "alice").values(scope_codes=codes))
    db.session.commit()
    result = runner.invoke(args=["users", "update", "alice", "--inactive"])
    assert result.exit_code == 0, result.output
    assert (user("alice").active, user("alice").scope_codes) == (False, codes)
    refused = runner.invoke(args=["users", "update", "alice", "--scope", f"{codes},{more}"])
    assert refused.exit_code == 1 and "at most 57 codes" in refused.stderr


def test_the_console_disables_an_account_holding_a_scope_too_long_and_takes_codes_typed_with_spaces(
        app, admin_console, make_user):
    """The edit form's own 400-character limit refused the list such an account holds, as the form shows it, so
    the console could not disable it; it also refused 51 codes typed as "a, b, ...", which the service takes."""
    make_user("alice", "provincial_admin", ("360000",))
    if db.engine.dialect.name == "sqlite":  # only SQLite stored a list longer than its column
        held = ",".join(codes_under_36(61))
        db.session.execute(User.__table__.update().where(User.username == "alice").values(scope_codes=held))
        db.session.commit()
        disabled = admin_console.post_form("/users/alice", {"display_name": "", "role": "provincial_admin",
                                                            "scopes": held})
        assert disabled.status_code == 302 and user("alice").active is False
    spaced = ", ".join(codes_under_36(51))
    assert len(spaced) > 400
    saved = admin_console.post_form("/users/alice", {"display_name": "", "role": "provincial_admin",
                                                     "scopes": spaced, "active": "y"})
    assert saved.status_code == 302 and user("alice").scope_codes == spaced.replace(" ", "")


def test_an_edit_that_changes_nothing_records_nothing_and_says_so_at_both_doors(app, admin_console, make_user,
                                                                                  runner):
    """As an unlock with nothing to clear: no `user.update` record whose before is its after, and no "updated"."""
    make_user("alice", "provincial_admin", ("360000",))
    admin_console.client.get("/lang/en")
    before = len(records())
    saved = admin_console.post_form("/users/alice", {"display_name": "", "role": "provincial_admin",
                                                     "scopes": "360000", "active": "y"})
    assert saved.status_code == 302
    page = admin_console.client.get(saved.headers["Location"]).get_data(as_text=True)
    assert "Nothing changed: alice is as it was." in page and "User alice updated." not in page
    admin_console.client.get("/lang/zh_CN")
    admin_console.post_form("/users/alice", {"display_name": "", "role": "provincial_admin", "scopes": "360000",
                                             "active": "y"})
    assert "未作任何更改：用户 alice 保持原样。" in admin_console.client.get("/users/").get_data(as_text=True)

    result = runner.invoke(args=["users", "update", "alice", "--name", "", "--scope", "360000", "--active"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "nothing changed: alice is already provincial_admin, scopes 360000, active\n"
    as_json = runner.invoke(args=["users", "update", "alice", "--active", "--json"])
    assert json.loads(as_json.stdout)["changed"] is False
    assert len(records()) == before

    changed = runner.invoke(args=["users", "update", "alice", "--name", "张三", "--json"])
    assert json.loads(changed.stdout)["changed"] is True and len(records()) == before + 1
