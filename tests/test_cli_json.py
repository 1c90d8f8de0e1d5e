"""SPEC §4: every console action has a CLI twin under `flask`, printing machine-readable output with `--json`.

With --json a command prints one JSON object on stdout when it succeeds, and a refusal as the error object
(`{"error": {"code": …, "message": …}}`) on stderr with the exit code the text refusal has. A verification's
verdict (`routing verify`, as `audit verify`) and a job's outcome are results, not refusals: on stdout, exit 1
when they are not good. The last test walks `app.cli` so that a command added later cannot forget --json."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import click
from cryptography import x509
from sqlalchemy import delete, select, text, update

from app.audit.models import AuditRecord
from app.auth import service as users
from app.auth.console_sessions import live_sessions
from app.auth.models import User
from app.extensions import db
from app.pki import authority, revocation
from app.pki import service as pki
from app.pki.models import Certificate, CRLState
from app.routing import service as routing
from tests.conftest import Console

# What may go without --json: Flask-Migrate's commands, a CSV writer, and the scheduler's foreground process.
WITHOUT_JSON = {("db",), ("audit", "export"), ("scheduler", "run")}


def success(result) -> dict:
    """The one JSON object a command printed on stdout, and nothing on stderr."""
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == "" and result.stdout.count("\n") == 1, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def refusal(result, exit_code: int = 1) -> dict:
    """The error object a refusal printed on stderr, with nothing on stdout."""
    assert result.exit_code == exit_code and isinstance(result.exception, SystemExit), (result.stdout,
                                                                                         result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, (result.stdout, result.stderr)
    return json.loads(result.stderr)["error"]


def take_ca_away(app, tmp_path: Path) -> None:
    """As on a server where `flask ca init` has not run: the CA directory is empty."""
    app.config["MPIM_CA_DIR"] = str(tmp_path / "fresh")
    app.extensions.pop("mpim_authority", None)


# --- users -------------------------------------------------------------------------------------

def test_users_ensure_admin_json(app, runner, monkeypatch):
    monkeypatch.setenv("MPIM_ADMIN_PASSWORD", "short")
    weak = refusal(runner.invoke(args=["users", "ensure-admin", "--json"]))
    assert weak["code"] and weak["message"]
    assert db.session.scalar(select(User).where(User.role == "ministry_admin")) is None

    monkeypatch.delenv("MPIM_ADMIN_PASSWORD")
    created = success(runner.invoke(args=["users", "ensure-admin", "--username", "first", "--json"]))
    assert created == {"created": True, "username": "first", "role": "ministry_admin",
                       "password": created["password"]}
    assert Console(app.test_client()).login("first", created["password"]).status_code == 302  # the one printed
    assert success(runner.invoke(args=["users", "ensure-admin", "--json"])) == {"created": False}

    db.session.execute(update(User).where(User.username == "first").values(role="auditor"))
    db.session.commit()
    monkeypatch.setenv("MPIM_ADMIN_PASSWORD", "Operators-Own-Pass-1")
    chosen = success(runner.invoke(args=["users", "ensure-admin", "--username", "second", "--json"]))
    assert chosen == {"created": True, "username": "second", "role": "ministry_admin"}  # never echoed back


def test_users_unlock_json(app, runner, make_user):
    make_user("alice", "auditor")
    for _ in range(app.config["MPIM_LOGIN_MAX_FAILURES"]):
        Console(app.test_client()).login("alice", "Wrong-Horse-99")
    assert users.is_locked("alice")
    unlocked = success(runner.invoke(args=["users", "unlock", "alice", "--json"]))
    assert unlocked["username"] == "alice" and isinstance(unlocked["addresses"], list)
    assert not users.is_locked("alice")
    assert refusal(runner.invoke(args=["users", "unlock", "ghost", "--json"]))["code"] == "user_not_found"


def test_users_end_sessions_json(app, runner, make_user):
    make_user("alice")
    assert Console(app.test_client()).login("alice").status_code == 302
    [row] = live_sessions(users.get_user("alice"))
    ended = success(runner.invoke(args=["users", "end-sessions", "alice", "--json"]))
    assert ended == {"username": "alice", "ended": [row.id]}
    assert live_sessions(users.get_user("alice")) == []
    assert success(runner.invoke(args=["users", "end-sessions", "alice", "--json"])) == {"username": "alice",
                                                                                        "ended": []}
    assert refusal(runner.invoke(args=["users", "end-sessions", "nobody", "--json"]))["code"] == "user_not_found"


# --- divisions ---------------------------------------------------------------------------------

def test_divisions_show_json_is_what_it_always_printed(runner):
    plain = runner.invoke(args=["divisions", "show", "360102"])
    shown = success(runner.invoke(args=["divisions", "show", "360102", "--json"]))
    assert shown == json.loads(plain.stdout) and shown["name"] == "东湖区"
    assert "东湖区" in plain.stdout  # not \u escapes, with or without --json
    assert refusal(runner.invoke(args=["divisions", "show", "999999", "--json"]))["code"] == "division_not_found"


# --- audit -------------------------------------------------------------------------------------

def empty_audit_log() -> None:
    """What a DBA with full rights could do: lift the append-only guard and delete every record."""
    if db.engine.dialect.name == "postgresql":
        db.session.execute(text("ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_change"))
        db.session.execute(delete(AuditRecord))
        db.session.execute(text("ALTER TABLE audit_records ENABLE TRIGGER audit_records_no_change"))
    else:
        db.session.execute(text("DROP TRIGGER audit_records_no_delete"))
        db.session.execute(delete(AuditRecord))
    db.session.commit()


def test_audit_anchor_json(app, runner):
    newest = db.session.scalars(select(AuditRecord).order_by(AuditRecord.seq.desc()).limit(1)).one()
    anchor = success(runner.invoke(args=["audit", "anchor", "--json"]))
    assert anchor == {"seq": newest.seq, "hash": newest.hash, "anchor": f"{newest.seq}:{newest.hash}"}
    assert runner.invoke(args=["audit", "verify", "--anchor", anchor["anchor"]]).exit_code == 0
    empty_audit_log()
    assert refusal(runner.invoke(args=["audit", "anchor", "--json"]))["code"] == "audit_log_empty"


# --- scheduler ---------------------------------------------------------------------------------

def test_scheduler_run_job_json(app, runner, monkeypatch):
    from app.scheduler import registry

    def failing():
        raise RuntimeError("gave up")

    monkeypatch.setattr(registry, "jobs", [registry.Job("test.ok", lambda: "did it", 3600),
                                           registry.Job("test.failing", failing, 3600)])
    done = success(runner.invoke(args=["scheduler", "run-job", "test.ok", "--json"]))
    assert done == {"job": "test.ok", "ok": True, "started_at": done["started_at"], "seconds": done["seconds"],
                    "message": "did it"}
    assert isinstance(done["seconds"], float) and done["started_at"].endswith("+00:00")
    failed = runner.invoke(args=["scheduler", "run-job", "test.failing", "--json"])  # an outcome, not a refusal
    assert failed.exit_code == 1 and failed.stdout.count("\n") == 1
    assert json.loads(failed.stdout)["ok"] is False
    assert json.loads(failed.stdout)["message"] == "RuntimeError: gave up"
    unknown = refusal(runner.invoke(args=["scheduler", "run-job", "test.none", "--json"]), exit_code=2)
    assert unknown["code"] == "job_not_found" and "test.none" in unknown["message"]


# --- ca ----------------------------------------------------------------------------------------

def test_ca_root_offline_json(app, runner, tmp_path):
    (tmp_path / "taken.key").write_text("something else")
    exists = refusal(runner.invoke(args=["ca", "root-offline", str(tmp_path / "taken.key"), "--json"]))
    assert exists["code"] == "export_exists" and (pki.ca_directory() / "root.key").exists()
    moved = success(runner.invoke(args=["ca", "root-offline", str(tmp_path / "root.key"), "--json"]))
    assert moved == {"exported_to": str(tmp_path / "root.key"), "root_key_online": False}
    assert (tmp_path / "root.key").exists() and not (pki.ca_directory() / "root.key").exists()


def crl_described(state: CRLState) -> dict:
    crl = x509.load_der_x509_crl(state.der)
    return {"crl_number": state.crl_number, "issuer": crl.issuer.rfc4514_string(),
            "this_update": state.this_update.isoformat(), "next_update": state.next_update.isoformat(),
            "revoked": len(crl)}


def test_ca_crl_json_describes_the_crl(app, client, runner, make_user):
    make_user("minister")
    signer = db.session.scalars(select(Certificate).where(Certificate.kind == "route_signer")).one()
    assert runner.invoke(args=["ca", "revoke", signer.serial, "--reason", "superseded", "--user",
                               "minister"]).exit_code == 0
    db.session.expire_all()
    described = success(runner.invoke(args=["ca", "crl", "--json"]))
    state = revocation.current_crl()
    assert described == {**crl_described(state), "url": described["url"], "pem_url": described["pem_url"]}
    assert described["revoked"] == 1 and described["crl_number"] == 2
    assert client.get(urlsplit(described["url"]).path).data == state.der  # where relying parties fetch it
    assert client.get(urlsplit(described["pem_url"]).path).data.decode() == state.pem
    assert described["url"] == pki.ca_config().crl_url  # the distribution point certificates name

    again = success(runner.invoke(args=["ca", "crl", "--regenerate", "--json"]))
    db.session.expire_all()
    assert again["crl_number"] == 3 and again == {**crl_described(revocation.current_crl()),
                                                  "url": described["url"], "pem_url": described["pem_url"]}

    db.session.execute(delete(CRLState))
    db.session.commit()
    # The CA directory holds a CA the database has no CRL of: restore the matching database (`flask ca init` refuses)
    assert refusal(runner.invoke(args=["ca", "crl", "--json"]))["code"] == "database_mismatch"


def test_ca_root_crl_json_describes_the_root_crl(app, client, runner, tmp_path):
    first = revocation.current_crl(revocation.ROOT_CRL).crl_number
    described = success(runner.invoke(args=["ca", "root-crl", "--json"]))  # no summary line on stderr either
    db.session.expire_all()
    state = revocation.current_crl(revocation.ROOT_CRL)
    assert state.crl_number == first + 1
    assert described == {**crl_described(state), "url": pki.ca_config().root_crl_url,
                         "pem_url": described["pem_url"]}
    assert described["revoked"] == 0 and client.get(urlsplit(described["pem_url"]).path).data.decode() == state.pem

    authority.root_offline(pki.ca_directory(), tmp_path / "root.key")
    assert refusal(runner.invoke(args=["ca", "root-crl", "--json"]))["code"] == "root_offline"


def test_ca_rotate_route_signer_json(app, runner, tmp_path):
    before = routing.head()
    rotated = success(runner.invoke(args=["ca", "rotate-route-signer", "--json"]))
    db.session.expire_all()
    row = db.session.get(Certificate, rotated["serial"])
    assert rotated["kind"] == "route_signer" and rotated["sha256"] == row.sha256 and rotated["state"] == "valid"
    head = routing.head()
    assert head.signer_sha256 == rotated["sha256"] and (before is None or head.version > before.version)

    take_ca_away(app, tmp_path)
    assert refusal(runner.invoke(args=["ca", "rotate-route-signer", "--json"]))["code"] == "ca_not_initialised"


def test_ca_init_json_says_whether_it_created_the_ca(app, runner, tmp_path):
    """`ca init --if-missing --json` over a CA printed "CA exists already", which no JSON reader takes."""
    assert success(runner.invoke(args=["ca", "init", "--if-missing", "--json"])) == {"created": False}
    assert refusal(runner.invoke(args=["ca", "init", "--json"]))["code"]  # a second CA over the first: refused
    db.session.execute(delete(CRLState))
    db.session.commit()
    take_ca_away(app, tmp_path)
    created = success(runner.invoke(args=["ca", "init", "--if-missing", "--json"]))
    assert created == {"created": True, "root": created["root"], "intermediate": created["intermediate"],
                       "route_signer": created["route_signer"], "management": created["management"]}
    assert created["root"] == pki.fingerprint(pki.authority().root_certificate)


def test_ca_init_without_a_passphrase_says_passphrase_missing(app, runner, tmp_path):
    """It said `ca_not_initialised`, the code of a CA nobody created, where /healthz and the operations guide
    call this state `passphrase_missing`."""
    db.session.execute(delete(CRLState))
    db.session.commit()
    take_ca_away(app, tmp_path)
    app.config["MPIM_CA_PASSPHRASE"] = ""
    app.config["MPIM_CA_PASSPHRASE_FILE"] = str(tmp_path / "no-such-file")
    error = refusal(runner.invoke(args=["ca", "init", "--json"]))
    assert error["code"] == "passphrase_missing" and "MPIM_CA_PASSPHRASE" in error["message"]


# --- routing -----------------------------------------------------------------------------------

def test_routing_verify_json_gives_the_verdict_with_the_same_exit_codes(app, runner, tmp_path):
    assert runner.invoke(args=["routing", "publish", "--force"]).exit_code == 0
    head = routing.head()
    body, signature = tmp_path / "t.json", tmp_path / "t.sig"
    body.write_bytes(head.body)
    signature.write_text(head.signature)
    args = ["routing", "verify", str(body), str(signature), "--json"]

    valid = success(runner.invoke(args=args))
    assert valid == {"valid": True, "kind": "table", "version": head.version, "signer": head.signer_sha256,
                     "current_signer": head.signer_sha256}

    assert runner.invoke(args=["ca", "rotate-route-signer"]).exit_code == 0
    db.session.expire_all()
    earlier = runner.invoke(args=args)
    assert earlier.exit_code == 1 and earlier.stdout.count("\n") == 1
    verdict = json.loads(earlier.stdout)
    assert verdict["valid"] is False and verdict["reason"] == "earlier_signer"
    assert verdict["signer"] == head.signer_sha256 and verdict["current_signer"] == routing.head().signer_sha256
    assert "earlier route signer" in verdict["message"]

    body.write_bytes(head.body.replace(b'"version":', b'"version":9'))
    forged = runner.invoke(args=args)
    assert forged.exit_code == 1 and forged.stdout.count("\n") == 1
    verdict = json.loads(forged.stdout)
    assert (verdict["valid"], verdict["reason"], verdict["signer"]) == (False, "invalid_signature", None)
    assert "INVALID" in verdict["message"]

    take_ca_away(app, tmp_path)
    assert refusal(runner.invoke(args=args))["code"] == "ca_not_initialised"


def test_routing_show_json_without_a_table_is_a_refusal(app, runner):
    """It printed "no table published yet" on stdout, where a JSON reader expects the table."""
    assert routing.head() is None
    assert refusal(runner.invoke(args=["routing", "show", "--json"]))["code"] == "no_table_published"
    plain = runner.invoke(args=["routing", "show"])  # a refusal on stderr too, as every other command's
    assert (plain.exit_code, plain.stdout, plain.stderr) == (1, "", "error: no table published yet\n")


# --- every command ------------------------------------------------------------------------------

def commands(group: click.Group, path: tuple[str, ...] = ()):
    """Every (path, command) under `group`, a group's commands included, the group itself not."""
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))
        else:
            yield (*path, name), command


def allowed_without_json(path: tuple[str, ...]) -> bool:
    return any(path[:len(allowed)] == allowed for allowed in WITHOUT_JSON)


def test_every_command_takes_json_but_the_few_allowed(app):
    """A command that forgets --json fails here: SPEC §4 promises it for every console action's twin."""
    listed = dict(commands(app.cli))
    for allowed in WITHOUT_JSON:  # the allow-list names commands that exist, or it hides nothing
        assert any(path[:len(allowed)] == allowed for path in listed), allowed
    missing = [" ".join(path) for path, command in listed.items() if not allowed_without_json(path) and not any(
        isinstance(param, click.Option) and "--json" in param.opts and param.is_flag for param in command.params)]
    assert missing == []



def test_a_usage_error_under_json_is_the_error_object_too(app, runner):
    """A missing argument, an unknown option or a value click refuses was click's plain "Usage: … Error: …" on
    stderr even with --json, where a script reads the error object; the exit code stays click's 2."""
    for args in (["ca", "revoke", "--json"],  # no SERIAL
                 ["ca", "revoke", "00ff", "--reason", "no-such-reason", "--user", "minister", "--json"],
                 ["users", "list", "--no-such-option", "--json"],
                 ["audit", "list", "--json", "--limit", "１２"]):  # a fullwidth number (cli_arguments.Digits)
        error = refusal(runner.invoke(args=args), exit_code=2)
        assert error["code"] == "usage_error" and error["message"], (args, error)
    plain = runner.invoke(args=["ca", "revoke"])
    assert plain.exit_code == 2 and "Usage:" in plain.stderr


def test_text_that_is_not_utf8_under_json_is_the_error_object(app, runner):
    """The UTF-8 check (cli_arguments.require_utf8) runs inside the command: its refusal was click's plain
    text too."""
    error = refusal(runner.invoke(args=["users", "unlock", "li\udcffsi", "--json"]), exit_code=2)
    assert error["code"] == "usage_error" and "UTF-8" in error["message"]


def test_a_usage_error_a_command_raises_itself_under_json_is_the_error_object(app, runner, make_user):
    """The check in `make_context` saw only what click's parser refuses: a command's own usage error
    (`users update` with nothing to change) stayed click's text under --json."""
    make_user("alice")
    error = refusal(runner.invoke(args=["users", "update", "alice", "--json"]), exit_code=2)
    assert error["code"] == "usage_error" and "nothing to change" in error["message"]


def test_json_given_as_another_options_value_asks_for_no_json(app, runner, make_user):
    """`--json` as the value of --name is a display name, not the flag: a usage error then is click's text."""
    make_user("alice")
    result = runner.invoke(args=["users", "update", "alice", "--name", "--json", "--role", "bogus"])
    assert result.exit_code == 2 and result.stderr.startswith("Usage:"), result.stderr
