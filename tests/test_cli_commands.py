"""What the `flask` commands of the registry print: a list in full, the signed bytes as signed, a scheduled job
that has nothing to do yet, arguments read as the console reads them, and a help text for every command."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert

from app.admission import applications
from app.admission.models import Application
from app.extensions import db
from tests.factories import node_document


def test_applications_list_lists_every_application_past_a_thousand(app, runner, make_user):
    """It stopped at the first 1,000, exiting 0 with no sign of the rest, in --json too."""
    make_user("minister")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    db.session.execute(insert(Application), [
        {"id": f"a{number:031d}", "division_code": "360000", "org_name": "江西省公安厅", "system_name": "警务通",
         "vendor": "vendor", "endpoint": f"https://im{number}.jx.example", "contact_name": "张三",
         "contact_phone": "13800000000", "contact_email": "im@jx.example", "capabilities": [],
         "created_at": start + timedelta(seconds=number)} for number in range(1001)])
    db.session.commit()
    listed = runner.invoke(args=["applications", "list", "--user", "minister", "--json"])
    assert listed.exit_code == 0 and listed.stderr == "", listed.stderr
    ids = [json.loads(line)["application_id"] for line in listed.stdout.splitlines()]
    assert len(ids) == 1001 and ids[-1] == f"a{0:031d}"  # newest first, down to the oldest
    plain = runner.invoke(args=["applications", "list", "--user", "minister"])
    assert plain.exit_code == 0 and len(plain.stdout.splitlines()) == 1001


def test_nodes_list_refuses_a_province_no_tile_names_as_the_console_does(app, runner, make_user):
    """99, 990000 and 00 have a province's shape but name none: the console says so at its box; the command
    printed "no nodes" and exited 0, as for a province that has none."""
    make_user("minister")
    for province in ("99", "990000", "00", "9900"):
        refused = runner.invoke(args=["nodes", "list", "--user", "minister", "--province", province])
        assert refused.exit_code == 2 and "Invalid value for '--province'" in refused.stderr, province
        assert f"{province!r} names no province" in refused.stderr and refused.stdout == "", province
    for province in ("36", "3600", "360000", "81"):  # Hong Kong's tile: a province without nodes is no refusal
        listed = runner.invoke(args=["nodes", "list", "--user", "minister", "--province", province])
        assert (listed.exit_code, listed.stdout) == (0, "no nodes\n"), province


def test_nodes_list_reads_a_province_with_blanks_around_it_as_the_console_box_does(app, runner, make_user):
    """The console strips its box; the command refused " 36 " as naming no province."""
    minister = make_user("minister")
    for division in ("360100", "440100"):
        applications.approve(applications.submit_by_user(node_document(division, endpoint=f"https://im{division}.example"),
                                                         by=minister), by=minister)
    db.session.commit()
    for province in (" 36 ", "\t360000\n"):
        listed = runner.invoke(args=["nodes", "list", "--user", "minister", "--province", province, "--json"])
        assert listed.exit_code == 0 and listed.stderr == "", (province, listed.stderr)
        assert [json.loads(line)["division_code"] for line in listed.stdout.splitlines()] == ["360100"], province


def test_routing_show_json_prints_the_signed_bytes_which_routing_verify_accepts(app, runner, tmp_path):
    """Its help says it prints the signed table body itself; it added a newline, so the saved output failed
    `routing verify` ("signature INVALID")."""
    from app.routing import service as routing

    assert runner.invoke(args=["routing", "publish", "--force"]).exit_code == 0
    shown = runner.invoke(args=["routing", "show", "--json"])
    head = routing.head()
    assert shown.exit_code == 0 and shown.stdout_bytes == head.body
    (tmp_path / "body.json").write_bytes(shown.stdout_bytes)
    (tmp_path / "sig.b64").write_text(head.signature)
    verified = runner.invoke(args=["routing", "verify", str(tmp_path / "body.json"), str(tmp_path / "sig.b64")])
    assert verified.exit_code == 0 and verified.stdout.startswith("signature valid"), verified.output


def test_the_health_poll_job_before_ca_init_has_nothing_to_poll_and_says_no_ca(app, runner, tmp_path):
    """On a fresh database, before `flask ca init`, it failed (CANotReady) every 30 s though nothing can have
    been admitted yet; the other jobs needing the CA answer "no CA". A registry whose CA files are missing
    still fails it: its admitted nodes go unpolled."""
    from sqlalchemy import delete

    from app.pki.models import CRLState

    app.config["MPIM_CA_DIR"] = str(tmp_path / "away")
    app.extensions.pop("mpim_authority", None)  # as in a process starting now
    missing = runner.invoke(args=["scheduler", "run-job", "health.poll", "--json"])
    assert missing.exit_code == 1 and json.loads(missing.stdout)["message"].startswith("CANotReady"), missing.output
    db.session.execute(delete(CRLState))  # the database of no CA: before `flask ca init`
    db.session.commit()
    for job in ("health.poll", "ca.crl_refresh"):
        done = runner.invoke(args=["scheduler", "run-job", job, "--json"])
        assert done.exit_code == 0, done.output
        assert (json.loads(done.stdout)["ok"], json.loads(done.stdout)["message"]) == (True, "no CA"), job


def test_every_command_has_a_help_text_which_help_shows(app, runner):
    """The node lifecycle commands set `__doc__` after click had read it, so `--help` showed no description,
    and fourteen other commands had none at all."""
    import click

    def walk(group: click.Group, path: tuple[str, ...] = ()):
        for name, command in sorted(group.commands.items()):
            yield (*path, name), command
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name))

    assert [" ".join(path) for path, command in walk(app.cli) if not (command.help or "").strip()] == []
    shown = runner.invoke(args=["nodes", "suspend", "--help"])
    assert shown.exit_code == 0 and "Suspend a node (ministry admins; needs a reason)." in shown.stdout
    listed = runner.invoke(args=["nodes", "--help"]).stdout
    for name in ("suspend", "resume", "revoke", "request-suspension", "decline-suspension", "withdraw-suspension",
                 "list", "show", "resolve"):
        line = next(line for line in listed.splitlines() if line.strip().startswith(name + " "))
        assert line.strip() != name and len(line.split(None, 1)) == 2, line


def test_tokens_revoke_takes_a_token_number_in_ascii_digits_only(app, runner, make_user):
    """' ５ ' (fullwidth, blanks around) revoked token 5: click's int() reads both; the CLI's numbers are ASCII."""
    from app.admission import tokens

    minister = make_user("minister")
    token, _ = tokens.create_token("360000", by=minister)
    db.session.commit()
    fullwidth = "".join(chr(0xFF10 + int(digit)) for digit in str(token.id))
    for typed in (f" {fullwidth} ", fullwidth, f" {token.id}", f"+{token.id}"):
        refused = runner.invoke(args=["tokens", "revoke", typed, "--user", "minister"])
        assert refused.exit_code == 2 and "is not a whole number in ASCII digits" in refused.stderr, typed
    db.session.expire_all()
    assert token.state() != "revoked"
    revoked = runner.invoke(args=["tokens", "revoke", str(token.id), "--user", "minister", "--json"])
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["state"] == "revoked", revoked.output


def test_tokens_create_takes_a_division_code_with_blanks_around_as_the_console_does(app, runner, make_user):
    """A pasted " 360000 " was refused by the command, while the console's box strips the blanks."""
    make_user("minister")
    created = runner.invoke(args=["tokens", "create", "--division", " 360000\u3000", "--user", "minister", "--json"])
    assert created.exit_code == 0, created.output
    assert json.loads(created.stdout)["division"] == "360000"


def test_health_poll_json_gives_the_late_alerts_the_plain_summary_names(app, runner, make_user):
    """A node down through a maintenance window that has ended is alerted late: the plain line said "still down
    after maintenance: NODE"; --json left it out."""
    import socket

    from app.database import utcnow
    from app.health import maintenance, service
    from app.health.models import NodeHealth
    from tests.test_admission_review import admit
    from tests.test_health_state import Result

    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]  # closed below: nothing listens there, each poll is refused
    minister = make_user("minister")
    node = admit(make_user("jx-admin", "provincial_admin", ("360000",)), minister,
                 endpoint=f"https://127.0.0.1:{port}")
    maintenance.set_maintenance(node.node_id, utcnow() + timedelta(hours=1), "upgrade", by=minister)
    db.session.commit()
    for _ in range(3):  # down inside the window: the alert is held back
        service.apply_round([Result(node.node_id, False, failure="refused")])
    db.session.get(NodeHealth, node.node_id).maintenance_until = utcnow() - timedelta(seconds=1)  # it ran out
    db.session.commit()
    polled = runner.invoke(args=["health", "poll", "--once", "--json"])
    assert polled.exit_code == 0, polled.output
    report = json.loads(polled.stdout)
    assert [(alert["node_id"], alert["new"], alert["after_maintenance"]) for alert in report["late_alerts"]] == [
        (node.node_id, "down", True)]
    assert report["polled"] == 1 and report["changes"] == []


def test_every_user_option_says_which_console_user_it_is(app):
    """`flask ca renew --help` and `flask ca revoke --help` showed a bare `--user TEXT [required]`."""
    import click

    def walk(group: click.Group, path: tuple[str, ...] = ()):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, (*path, name))
            else:
                yield (*path, name), command

    bare = [" ".join(path) for path, command in walk(app.cli) for param in command.params
            if "--user" in getattr(param, "opts", ()) and not (param.help or "").strip()]
    assert bare == []
    for command in ("renew", "revoke"):
        shown = app.test_cli_runner().invoke(args=["ca", command, "--help"]).output
        assert "The console user acting (audited)." in shown, shown
