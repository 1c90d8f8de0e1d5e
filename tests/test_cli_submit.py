"""SPEC §4: every console action has a CLI twin. `flask applications submit` is the application form's
(POST /applications/new), `flask nodes change` the change form's (POST /nodes/<id>/change): the same service,
checks, scope and audit record, with the CLI's --json output and its refusals (exit 1, or 2 for usage)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app.admission import applications
from app.admission.models import Application
from app.audit.models import AuditRecord
from app.extensions import db
from tests.conftest import Console
from tests.factories import application_form, make_csr, make_key, node_document

APPLICATION_KEYS = {"application_id", "kind", "status", "division_code", "org_name", "system_name", "vendor",
                    "endpoint", "contact", "capabilities", "node_id", "reason", "created_at"}


@pytest.fixture
def people(make_user):
    make_user("minister")
    make_user("jx-admin", "provincial_admin", ("360000",))
    make_user("gd-admin", "provincial_admin", ("440000",))
    make_user("reader", "auditor")


def csr_file(tmp_path, content: str | bytes | None = None, name: str = "node.csr") -> str:
    path = tmp_path / name
    content = make_csr() if content is None else content
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


def submit_args(tmp_path, user: str = "jx-admin", **overrides) -> list[str]:
    """`applications submit` with every field the console form has, as `tests.factories.application_form`
    fills it; an override of None leaves its option out."""
    values = {"--division": "360100", "--org-name": "南昌市公安局", "--system-name": "洪城警务通",
              "--vendor": "Vendor A", "--endpoint": "https://im.nc.example:8443", "--contact-name": "李四",
              "--contact-phone": "0791-7654321", "--contact-email": "ops@nc.example",
              "--capabilities": "text,image,group"}
    if "csr" not in overrides:
        values["--csr"] = csr_file(tmp_path, name="good.csr")
    values.update({f"--{name.replace('_', '-')}": value for name, value in overrides.items()})
    args = ["applications", "submit"]
    for option, value in values.items():
        if value is not None:
            args += [option, value]
    return [*args, "--user", user]


def success(result) -> dict:
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == "" and result.stdout.count("\n") == 1, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def refusal(result, exit_code: int = 1) -> dict:
    assert result.exit_code == exit_code, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, (result.stdout, result.stderr)
    return json.loads(result.stderr)["error"]


def submit_records() -> list[AuditRecord]:
    return list(db.session.scalars(select(AuditRecord).where(AuditRecord.action.like("application.submit%"))
                                   .order_by(AuditRecord.seq)))


def stored_applications() -> int:
    return db.session.scalar(select(func.count()).select_from(Application))


def test_submit_stores_the_application_and_the_audit_record_the_console_writes(app, runner, people, tmp_path):
    console = Console(app.test_client())
    console.login("jx-admin")
    assert console.post_form("/applications/new", application_form(
        "360100", "https://im.console.example", csr=make_csr())).status_code == 302

    item = success(runner.invoke(args=[*submit_args(tmp_path), "--json"]))
    assert set(item) == APPLICATION_KEYS
    assert item | {"application_id": None, "created_at": None} == {
        "application_id": None, "kind": "admission", "status": "pending", "division_code": "360100",
        "org_name": "南昌市公安局", "system_name": "洪城警务通", "vendor": "Vendor A",
        "endpoint": "https://im.nc.example:8443",
        "contact": {"name": "李四", "phone": "0791-7654321", "email": "ops@nc.example"},
        "capabilities": ["text", "image", "group"], "node_id": None, "reason": None, "created_at": None}
    application = applications.get(item["application_id"])
    assert application.submitted_by.username == "jx-admin" and application.csr_pem.startswith("-----BEGIN")

    by_console, by_cli = submit_records()
    assert (by_cli.action, by_cli.actor, by_cli.target) == ("application.submit", "jx-admin", application.id)
    assert by_cli.detail == {"division": "360100", "endpoint": "https://im.nc.example:8443"}
    assert (by_console.action, by_console.actor, set(by_console.detail)) == (by_cli.action, by_cli.actor,
                                                                             set(by_cli.detail))

    # for people: one line saying what happened; a ministry admin may apply anywhere
    plain = runner.invoke(args=submit_args(tmp_path, "minister", division="440000",
                                           endpoint="https://im.gd.example", csr=csr_file(tmp_path, name="gd.csr")))
    assert plain.exit_code == 0 and plain.stdout.startswith("application ") and "ministry admin" in plain.stdout
    assert stored_applications() == 3


@pytest.mark.parametrize(("user", "overrides", "code", "field", "words"), [
    ("jx-admin", {"division": "999999"}, "unknown_division_code", "division_code", "no division 999999"),
    ("jx-admin", {"division": "36010x"}, "invalid_division_code", "division_code", "six digits"),
    ("jx-admin", {"division": "440000"}, "out_of_scope", "division_code", "outside your scope"),
    ("reader", {}, "role_forbidden", None, "role"),
    ("jx-admin", {"csr": b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"},
     "invalid_csr", "csr", "CSR"),
    ("jx-admin", {"csr": b"\x30\x03\x02\x01\x00"}, "invalid_csr", "csr", "neither a PEM nor a DER"),
    ("jx-admin", {"csr": make_csr(make_key("rsa1024"))}, "invalid_csr", "csr", "below 2048 bits"),
    ("jx-admin", {"csr": b""}, "invalid_csr", "csr", "is empty"),
    ("jx-admin", {"csr": make_csr() + "\x00"}, "invalid_csr", "csr", "nothing but white space"),  # 500 on PG
    ("jx-admin", {"endpoint": "http://im.nc.example"}, "endpoint_not_https", "endpoint", "https://"),
    ("jx-admin", {"endpoint": "https://im.nc.example/a b"}, "invalid_endpoint", "endpoint", "spaces"),
    ("jx-admin", {"vendor": " "}, "missing_field", "vendor", "--vendor is required"),
    ("jx-admin", {"org_name": "江西省\u202e厅安公"}, "invalid_input", "org_name", "--org-name contains control"),
    ("jx-admin", {"contact_phone": "call me"}, "invalid_input", "contact.phone", "--contact-phone is not a phone"),
    ("jx-admin", {"capabilities": "text,telepathy"}, "unknown_capability", "capabilities", "telepathy"),
    ("jx-admin", {"capabilities": ","}, "invalid_input", "capabilities", "non-empty"),
])
def test_a_refused_submit_says_why_and_stores_nothing(runner, people, tmp_path, user, overrides, code, field, words):
    if "csr" in overrides:
        overrides = {**overrides, "csr": csr_file(tmp_path, overrides["csr"])}
    error = refusal(runner.invoke(args=[*submit_args(tmp_path, user, **overrides), "--json"]))
    assert (error["code"], error.get("field")) == (code, field), error
    assert words in error["message"], error
    plain = runner.invoke(args=submit_args(tmp_path, user, **overrides))
    assert (plain.exit_code, plain.stdout) == (1, "") and plain.stderr == f"error: {error['message']}\n"
    assert stored_applications() == 0 and submit_records() == []


@pytest.mark.parametrize("left_out", ["division", "vendor", "contact_email", "capabilities", "csr", "user"])
def test_a_submit_missing_a_required_option_is_a_usage_error(runner, people, tmp_path, left_out):
    args = submit_args(tmp_path, **({} if left_out == "user" else {left_out: None}))
    if left_out == "user":
        args = args[:-2]
    error = refusal(runner.invoke(args=[*args, "--json"]), exit_code=2)
    assert error["code"] == "usage_error" and f"--{left_out.replace('_', '-')}" in error["message"], error
    assert stored_applications() == 0 and submit_records() == []


def test_a_submit_argument_that_is_not_utf8_is_a_usage_error(runner, people, tmp_path):
    error = refusal(runner.invoke(args=[*submit_args(tmp_path, org_name="\udcbd\udcad"), "--json"]), exit_code=2)
    assert error["code"] == "usage_error" and "not UTF-8" in error["message"]
    assert stored_applications() == 0


@pytest.fixture
def node(people, make_user):
    from app.auth.models import User

    def user(name: str) -> User:
        return db.session.scalar(select(User).where(User.username == name))

    application = applications.submit_by_user(node_document("360100", endpoint="https://im.nc.example"),
                                              by=user("jx-admin"))
    db.session.commit()
    admitted = applications.approve(application, by=user("minister"))
    db.session.commit()
    return admitted


def test_change_requests_what_is_given_and_keeps_the_rest(runner, node, tmp_path):
    result = runner.invoke(args=["nodes", "change", node.node_id, "--endpoint", "https://im2.nc.example",
                                 "--csr", csr_file(tmp_path), "--contact-phone", "0791-1111111",
                                 "--capabilities", "group, text", "--user", "jx-admin", "--json"])
    item = success(result)
    assert set(item) == APPLICATION_KEYS | {"changed"}
    assert (item["kind"], item["status"], item["node_id"]) == ("change", "pending", node.node_id)
    assert item["changed"] == ["capabilities", "contact_phone", "endpoint", "csr"]
    assert item["endpoint"] == "https://im2.nc.example" and item["capabilities"] == ["text", "group"]
    assert item["contact"] == {"name": node.contact_name, "phone": "0791-1111111", "email": node.contact_email}
    assert (item["org_name"], item["vendor"], item["division_code"]) == (node.org_name, node.vendor, "360100")
    application = applications.get(item["application_id"])
    assert applications.pending_change(node) == application and application.submitted_by.username == "jx-admin"
    record = submit_records()[-1]
    assert (record.action, record.actor, record.target) == ("application.submit_change", "jx-admin", application.id)
    assert record.detail == {"node": node.node_id, "endpoint": "https://im2.nc.example"}
    assert node.endpoint == "https://im.nc.example"  # a request: the node changes only when it is approved

    # one waits at a time, as on the console; for people, the refusal is one line
    again = runner.invoke(args=["nodes", "change", node.node_id, "--vendor", "Vendor B", "--user", "minister"])
    assert again.exit_code == 1 and again.stderr.startswith("error: Change request ") and again.stdout == ""


def test_change_for_people_names_what_it_changes(runner, node):
    result = runner.invoke(args=["nodes", "change", node.node_id, "--vendor", "Vendor B", "--user", "minister"])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("change request ") and f"for {node.node_id} (vendor) submitted" in result.stdout


@pytest.mark.parametrize(("user", "options", "code", "field", "words"), [
    ("gd-admin", ["--vendor", "Vendor B"], "node_not_found", None, "No node"),  # as the console: not found
    ("reader", ["--vendor", "Vendor B"], "role_forbidden", None, "role"),
    ("jx-admin", ["--vendor", "Vendor A"], "no_change", None, "changes nothing"),
    ("jx-admin", ["--endpoint", "https://elsewhere.example"], "missing_csr", "csr", "new CSR"),
    ("jx-admin", ["--endpoint", "ftp://im.nc.example"], "endpoint_not_https", "endpoint", "https://"),
    ("jx-admin", ["--contact-email", ""], "missing_field", "contact.email", "--contact-email is required"),
    ("jx-admin", ["--capabilities", "text,telepathy"], "unknown_capability", "capabilities", "telepathy"),
    ("jx-admin", ["--csr", "weak"], "invalid_csr", "csr", "below 2048 bits"),
    ("jx-admin", ["--csr", "malformed"], "invalid_csr", "csr", "CSR"),
    ("jx-admin", ["--csr", "empty"], "invalid_csr", "csr", "is empty"),
])
def test_a_refused_change_says_why_and_stores_nothing(runner, node, tmp_path, user, options, code, field, words):
    files = {"weak": make_csr(make_key("rsa1024")), "empty": b"",
             "malformed": b"-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"}
    options = [csr_file(tmp_path, files[value]) if value in files else value for value in options]
    before = len(submit_records())
    error = refusal(runner.invoke(args=["nodes", "change", node.node_id, *options, "--user", user, "--json"]))
    assert (error["code"], error.get("field")) == (code, field), error
    assert words in error["message"], error
    assert applications.pending_change(node) is None and len(submit_records()) == before


def test_change_of_nothing_or_of_no_node_is_refused(runner, node):
    nothing = refusal(runner.invoke(args=["nodes", "change", node.node_id, "--user", "jx-admin", "--json"]), 2)
    assert nothing["code"] == "usage_error" and "nothing to change" in nothing["message"]
    unknown = refusal(runner.invoke(args=["nodes", "change", "36010000002025000099", "--vendor", "B",
                                          "--user", "jx-admin", "--json"]))
    assert unknown["code"] == "node_not_found"
    assert applications.pending_change(node) is None


def test_submit_names_every_wrong_option_at_once_as_the_console_marks_every_field(app, runner, people, tmp_path):
    """It named the first wrong option only: three wrong options, three runs to find them."""
    refused = runner.invoke(args=submit_args(tmp_path, contact_phone="phone", contact_email="mail", endpoint="http://x"))
    assert refused.exit_code == 1 and refused.stdout == "", refused.stdout
    lines = refused.stderr.splitlines()
    assert len(lines) == 3 and all(line.startswith("error: ") for line in lines), lines
    for option in ("--contact-phone", "--contact-email", "endpoint must be an https:// URL"):
        assert sum(option in line for line in lines) == 1, (option, lines)
    assert stored_applications() == 0
    as_json = runner.invoke(args=[*submit_args(tmp_path, contact_phone="phone", contact_email="mail"), "--json"])
    assert refusal(as_json)["field"] == "contact.phone"  # the API's one error object: the first
