"""`flask tokens …`, `flask applications …`, `flask nodes …`: the console's twins."""

from __future__ import annotations

import json
from typing import NoReturn

import click
from flask.cli import AppGroup

from app.admission import applications, nodes, tilemap, tokens
from app.admission.models import APPLICATION_STATUSES
from app.auth import service as users
from app.cli_arguments import Digits
from app.errors import DomainError, every_refusal
from app.extensions import db

tokens_cli = AppGroup("tokens", help="Enrollment tokens.")
applications_cli = AppGroup("applications", help="Node applications.")
nodes_cli = AppGroup("nodes", help="Admitted nodes.")

user_option = click.option("--user", "username", required=True, help="The console user acting (audited).")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
# `show`: read as the operator on the server, or as a console user, who sees only what the console shows them.
viewer_option = click.option("--user", "username", default=None,
                             help="Show it only if this console user may see it (a provincial admin: its divisions).")


def run(action, as_json: bool):
    """Call a service, commit, and turn a domain error into exit code 1 with its code."""
    try:
        result = action()
        db.session.commit()
        return result
    except DomainError as error:
        db.session.rollback()
        refuse(error, as_json)


def refuse(error: DomainError, as_json: bool, exit_code: int = 1) -> NoReturn:
    """A refusal on stderr, and its exit code (stdout holds only what succeeded). For people, an "error:" line for
    every refusal it carries (`Refusals`: each wrong option of `applications submit`, as the console marks each
    field); with --json, the first one's error object alone, as the API answers."""
    if as_json:
        click.echo(json.dumps(error.to_dict(), ensure_ascii=False), err=True)
    else:
        for refusal in every_refusal(error):
            click.echo(f"error: {refusal.message}", err=True)
    raise SystemExit(exit_code) from None


def emit(item: dict, as_json: bool, line: str) -> None:
    click.echo(json.dumps(item, ensure_ascii=False, default=str) if as_json else line)


def emit_list(rows, as_json: bool, empty: str) -> None:
    """A list command's (item, line) rows, a JSON line or a text line each; for people, `empty` when there
    are none (nothing at all read like a failure, or like a filter that was ignored)."""
    listed = False
    for item, line in rows:
        emit(item, as_json, line)
        listed = True
    if not listed and not as_json:
        click.echo(empty)


def record_lines(item: dict) -> str:
    """One record for people (every `show` command): a "name:  value" line per field that has a value."""
    width = max(map(len, item), default=0) + 2
    return "\n".join(f"{name + ':':<{width}}{_plain(value)}" for name, value in item.items() if value is not None)


def emit_record(item: dict, as_json: bool) -> None:
    emit(item, as_json, record_lines(item))


def _plain(value) -> str:
    return json.dumps(value, ensure_ascii=False, default=str) if isinstance(value, dict | list) else str(value)


def token_dict(token) -> dict:
    return {"id": token.id, "prefix": token.prefix, "division": token.division_code, "state": token.state(),
            "issued_by": token.issued_by.username, "expires_at": token.expires_at.isoformat()}


@tokens_cli.command("create")
@click.option("--division", required=True)
@user_option
@click.option("--ttl", default="7d", show_default=True)
@click.option("--note", default="")
@json_option
def tokens_create(division, username, ttl, note, as_json):
    """Issue a token; the raw token is printed once and never again."""
    division = division.strip()  # a pasted code's blanks, as the console's box drops them (forms.without_blanks)
    token, raw = run(lambda: tokens.create_token(division, by=users.acting_user(username), ttl=tokens.parse_ttl(ttl),
                                                 note=note), as_json)
    emit({**token_dict(token), "token": raw}, as_json, f"{raw}\n(expires {token.expires_at:%Y-%m-%d %H:%M} UTC; "
         "shown once)")


@tokens_cli.command("list")
@user_option
@json_option
def tokens_list(username, as_json):
    """The enrollment tokens the user's console lists, newest first, with their state."""
    user = run(lambda: users.acting_user(username), as_json)
    def row(token):
        item = token_dict(token)
        return item, (f"{token.id:>5} {token.prefix}… {token.division_code} {item['state']:<8} "
                      f"by {item['issued_by']} expires {token.expires_at:%Y-%m-%d}")

    emit_list(map(row, db.session.scalars(tokens.visible_tokens_query(user))), as_json, "no tokens")


@tokens_cli.command("revoke")
@click.argument("token_id", type=Digits())  # int() read " ５ " as 5
@user_option
@json_option
def tokens_revoke(token_id, username, as_json):
    """Revoke an enrollment token by the number `tokens list` shows."""
    token = run(lambda: tokens.revoke_token(token_id, by=users.acting_user(username)), as_json)
    emit(token_dict(token), as_json, f"revoked {token.prefix}…")


def application_dict(application) -> dict:
    return {"application_id": application.id, "kind": application.kind, "status": application.status,
            "division_code": application.division_code, "org_name": application.org_name,
            "system_name": application.system_name, "vendor": application.vendor, "endpoint": application.endpoint,
            "contact": {"name": application.contact_name, "phone": application.contact_phone,
                        "email": application.contact_email},
            "capabilities": application.capabilities, "node_id": application.node_id, "reason": application.reason,
            "created_at": application.created_at.isoformat()}


@applications_cli.command("list")
@click.option("--status", type=click.Choice([*APPLICATION_STATUSES, "all"]), default="pending", show_default=True)
@user_option
@json_option
def applications_list(status, username, as_json):
    """The applications the user's console lists, newest first (the pending ones unless --status)."""
    user = run(lambda: users.acting_user(username), as_json)
    query = applications.queue_query(user, status=None if status == "all" else status)
    # All of them: a page of 1,000 left the rest out without a word, and exited 0
    emit_list(((application_dict(application), f"{application.id} {application.status:<8} "
                f"{application.division_code} {application.org_name} {application.endpoint}")
               for application in db.session.scalars(query)), as_json, "no applications")


@applications_cli.command("show")
@click.argument("application_id")
@viewer_option
@json_option
def applications_show(application_id, username, as_json):
    """One application, its CSR read out."""
    application = run(lambda: applications.get(application_id) if username is None
                      else applications.get_visible(application_id, users.acting_user(username)), as_json)
    item = application_dict(application)
    if application.csr_pem:
        item["csr"] = run(lambda: applications.inspect_csr(application.csr_pem), as_json)
    emit_record(item, as_json)


@applications_cli.command("approve")
@click.argument("application_id")
@user_option
@json_option
def applications_approve(application_id, username, as_json):
    """Approve a pending application (ministry admins): the node is admitted and its id printed."""
    node = run(lambda: applications.approve(applications.get(application_id), by=users.acting_user(username)), as_json)
    emit({"application_id": application_id, "status": "approved", "node_id": node.node_id}, as_json,
         f"approved: node {node.node_id}")


@applications_cli.command("reject")
@click.argument("application_id")
@click.option("--reason", required=True)
@user_option
@json_option
def applications_reject(application_id, reason, username, as_json):
    """Reject a pending application (ministry admins; needs a reason)."""
    run(lambda: applications.reject(applications.get(application_id), reason, by=users.acting_user(username)),
        as_json)
    emit({"application_id": application_id, "status": "rejected", "reason": reason}, as_json, "rejected")


def node_dict(node) -> dict:
    return {"node_id": node.node_id, "division_code": node.division_code, "org_name": node.org_name,
            "system_name": node.system_name, "vendor": node.vendor, "endpoint": node.endpoint,
            "status": node.status, "status_reason": node.status_reason, "capabilities": node.capabilities,
            "enrolled_by_token": node.enrolled_by_token.prefix if node.enrolled_by_token else None,
            "token_issued_by": node.enrolled_by_token.issued_by.username if node.enrolled_by_token else None,
            "approved_by": node.approved_by, "approved_at": node.approved_at.isoformat()}


@nodes_cli.command("list")
@click.option("--status", type=click.Choice([*nodes.LIST_STATES, "all"]),
              default="all", show_default=True)
@click.option("--province", default="", help="Two-digit province prefix, e.g. 36.")
@user_option
@json_option
def nodes_list(status, province, username, as_json):
    """The nodes the user's console lists, by node id."""
    province = province.strip()  # as the console's box: " 36 " is 36
    # The console says so at its box: a value of no province's shape (360100), or of one no province has (99)
    if province and nodes.province_prefix(province) not in tilemap.province_names():
        raise click.BadParameter(f"{province!r} names no province: give its two digits (36) or its code (360000).",
                                 param_hint="'--province'")
    user = run(lambda: users.acting_user(username), as_json)
    query = nodes.list_query(user, status="" if status == "all" else status, province=province)
    # All of them, as `applications list`: a page of 100,000 left the rest out without a word
    emit_list(((node_dict(node), f"{node.node_id} {node.status:<9} {node.org_name} {node.endpoint}")
               for node in db.session.scalars(query)), as_json, "no nodes")


@nodes_cli.command("show")
@click.argument("node_id")
@viewer_option
@json_option
def nodes_show(node_id, username, as_json):
    """One node's record."""
    node = run(lambda: nodes.get(node_id) if username is None
               else nodes.get_visible(node_id, users.acting_user(username)), as_json)
    emit_record(node_dict(node), as_json)


def lifecycle_command(name: str, action):
    @nodes_cli.command(name, help=f"{name.capitalize()} a node (ministry admins; needs a reason).")
    @click.argument("node_id")
    @click.option("--reason", required=True)
    @user_option
    @json_option
    def command(node_id, reason, username, as_json):
        node = run(lambda: action(nodes.get(node_id), reason, by=users.acting_user(username)), as_json)
        emit(node_dict(node), as_json, f"{node.node_id} is now {node.status}")
        if name == "resume" and not nodes.holds_valid_certificate(node):  # on stderr: --json output stays one record
            click.echo(f"warning: {nodes.not_back_in_routes(node)}", err=True)

    return command


lifecycle_command("suspend", nodes.suspend)
lifecycle_command("resume", nodes.resume)
lifecycle_command("revoke", nodes.revoke)


def suspension_request_dict(node) -> dict:
    return {**node_dict(node), "suspension_requested": node.suspension_requested,
            "suspension_request_reason": node.suspension_request_reason,
            "suspension_requested_by": node.suspension_requested_by}


def suspension_request_command(name: str, action, doc: str, done: str, *, reason_required: bool = True):
    """`nodes request-suspension|decline-suspension|withdraw-suspension`: the node found as the console finds it
    for the acting user (one outside their divisions is not found), then `action`, as the node page does."""
    reason_option = (click.option("--reason", required=True) if reason_required
                     else click.option("--reason", default="", help="Optional."))

    @nodes_cli.command(name, help=doc)  # the help is read here: a __doc__ set afterwards was never shown
    @click.argument("node_id")
    @reason_option
    @user_option
    @json_option
    def command(node_id, reason, username, as_json):
        def act():
            user = users.acting_user(username)
            return action(nodes.get_visible(node_id, user), reason, by=user)

        node = run(act, as_json)
        emit(suspension_request_dict(node), as_json, done.format(node_id=node.node_id))

    return command


suspension_request_command(
    "request-suspension", nodes.request_suspension,
    "Ask the ministry to suspend a node (an admin of its division; a ministry admin decides).",
    "suspension of {node_id} requested; a ministry admin decides")
suspension_request_command(
    "decline-suspension", nodes.decline_suspension,
    "Decline a request to suspend a node (ministry admins; needs a reason; the node stays active).",
    "suspension request for {node_id} declined; it stays active")
suspension_request_command(
    "withdraw-suspension", nodes.withdraw_suspension,
    "Withdraw a request to suspend a node (a provincial admin of its division; the ministry declines instead).",
    "suspension request for {node_id} withdrawn", reason_required=False)


@nodes_cli.command("resolve")
@click.argument("division_code")
@json_option
def nodes_resolve(division_code, as_json):
    """The active node serving a division code: its own, else its prefecture's, else its province's."""
    node, level = run(lambda: nodes.resolve(division_code), as_json)
    emit({"division": division_code, "matched_level": level, **node_dict(node)}, as_json,
         f"{division_code} → {node.node_id} ({node.org_name}), matched at {level}")
