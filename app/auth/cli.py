"""`flask users create|list|update|reset-password|ensure-admin|unlock|clear-address-locks|sessions|end-sessions`:
the users pages' twins (SPEC §4), audited as the console's actions are, under the actor "cli"."""

from __future__ import annotations

import json
import os
import sys

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from app.audit import service as audit
from app.auth import console_sessions, service
from app.auth.models import ROLES, User
from app.errors import DomainError, ValidationFailed
from app.extensions import db

cli = AppGroup("users", help="Manage console users.")


def fail(error: DomainError, as_json: bool) -> None:
    click.echo(json.dumps(error.to_dict(), ensure_ascii=False) if as_json else f"error: {error.message}", err=True)
    raise SystemExit(1)


def read_password(as_json: bool) -> str:
    """The first line of standard input, for --password-stdin: its bytes decoded as UTF-8 or refused, without
    a leading byte-order mark (Notepad's) and one line end, CRLF too. Read as text, a GBK file's password ended
    in a UnicodeEncodeError traceback, and a Windows file's CR stayed in the password, which nobody can type."""
    line = sys.stdin.buffer.readline()
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError:
        fail(ValidationFailed("the password on standard input is not UTF-8 text", code="invalid_encoding",
                              field="password"), as_json)
    for end in ("\r\n", "\n"):
        if text.endswith(end):
            return text.removesuffix(end)
    return text


@cli.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--username", required=True)
@click.option("--scope", default="", help="Division codes between commas (provincial admins).")
@click.option("--name", "display_name", default="")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--json", "as_json", is_flag=True)
def create_command(role, username, scope, display_name, password_stdin, as_json):
    """Create a user; without --password-stdin a password is generated and printed once. Either way it is
    a first password: the user chooses their own at the first sign-in."""
    password = read_password(as_json) if password_stdin else service.generate_password()
    draft = service.UserDraft(username=username, password=password, role=role,
                              scopes=tuple(service.typed_codes(scope)), display_name=display_name)
    try:
        user = service.create_user(draft, actor="cli")
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, as_json)
    result = {"username": user.username, "role": user.role, "scopes": user.scopes}
    if not password_stdin:
        result["password"] = password
    click.echo(json.dumps(result, ensure_ascii=False) if as_json else
               f"created {user.username} ({user.role})" + ("" if password_stdin else f"; password: {password}"))


@cli.command("list")
@click.option("--json", "as_json", is_flag=True)
def list_command(as_json):
    """Every console user: role, scopes, and whether active and locked."""
    for user in db.session.scalars(select(User).order_by(User.username)):
        item = {"username": user.username, "role": user.role, "scopes": user.scopes, "active": user.active,
                "locked": service.is_locked(user.username)}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{user.username:<24} {user.role:<18} {user.scope_codes:<20} "
                   f"{'active' if user.active else 'inactive'}{' locked' if item['locked'] else ''}")


@cli.command("update")
@click.argument("username")
@click.option("--role", type=click.Choice(ROLES), default=None, help="Keep the current one if not given.")
@click.option("--scope", default=None,
              help="Comma-separated division codes (provincial admins); \"\" for none. Not given: the current "
                   "ones for a provincial admin, none for another role.")
@click.option("--active/--inactive", default=None, help="Enable or disable the account (disabling signs it out "
                                                          "everywhere).")
@click.option("--name", "display_name", default=None)
@click.option("--json", "as_json", is_flag=True)
def update_command(username, role, scope, active, display_name, as_json):
    """Change a user as the console's edit form does; what is not given stays as it is."""
    if role is None and scope is None and active is None and display_name is None:
        raise click.UsageError("nothing to change: give --role, --scope, --active/--inactive or --name.")
    try:
        user = service.get_user(username)
        audit.act_as("cli")  # the records update_user writes, and the sign-out of a disabled account, name the CLI
        service.hold_user(user)  # what it is not given stays as it is now, not as another change found it
        role = role or user.role
        if scope is not None:
            scopes = service.typed_codes(scope)
        else:
            scopes = user.scopes if role == "provincial_admin" else []
        changed = service.update_user(user, role=role, scopes=scopes,
                                      active=user.active if active is None else active,
                                      display_name=user.display_name if display_name is None else display_name)
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, as_json)
    item = {"username": user.username, "display_name": user.display_name, "role": user.role, "scopes": user.scopes,
            "active": user.active, "changed": changed}
    click.echo(json.dumps(item, ensure_ascii=False) if as_json else
               (f"updated {user.username}: " if changed else f"nothing changed: {user.username} is already ")
               + user.role + (f", scopes {user.scope_codes}" if user.scope_codes else "")
               + (", active" if user.active else ", inactive"))


@cli.command("reset-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the new password from standard input.")
@click.option("--json", "as_json", is_flag=True)
def reset_password_command(username, password_stdin, as_json):
    """Reset a user's password as the console does: every session of the user ends, and the user chooses a new
    one at the next sign-in. Without --password-stdin one is generated and printed once. Any account, the
    ministry admin's too: the way back in when its password is forgotten."""
    password = read_password(as_json) if password_stdin else service.generate_password()
    try:
        user = service.get_user(username)
        service.reset_password(user, password, by=None, actor="cli")
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, as_json)
    result = {"username": user.username}
    if not password_stdin:
        result["password"] = password
    then = f"{user.username} chooses a new one at the next sign-in"
    click.echo(json.dumps(result, ensure_ascii=False) if as_json else
               f"reset the password of {user.username} ({then})" if password_stdin else
               f"reset the password of {user.username}; password: {password}  (shown once; {then})")


@cli.command("ensure-admin")
@click.option("--username", default="admin", show_default=True)
@click.option("--name", "display_name", default="部级管理员", show_default=True,
              help="the name the console shows (`users update --name` changes it later)")
@click.option("--json", "as_json", is_flag=True)
def ensure_admin_command(username, display_name, as_json):
    """Create the first ministry admin if there is none (password: MPIM_ADMIN_PASSWORD or generated)."""
    if db.session.scalar(select(func.count()).where(User.role == "ministry_admin")):
        click.echo(json.dumps({"created": False}) if as_json else "a ministry admin exists already")
        return
    chosen = os.environ.get("MPIM_ADMIN_PASSWORD")
    password = chosen or service.generate_password()
    try:
        user = service.create_user(service.UserDraft(username=username, password=password, role="ministry_admin",
                                                     display_name=display_name, must_change_password=not chosen),
                                   actor="cli")
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, as_json)
    if as_json:  # the password only when generated, as `users create` prints it
        click.echo(json.dumps({"created": True, "username": user.username, "role": user.role,
                               **({} if chosen else {"password": password})}, ensure_ascii=False))
    elif chosen:
        click.echo(f"created ministry admin '{username}' with the password from MPIM_ADMIN_PASSWORD")
    else:
        click.echo(f"created ministry admin '{username}' with password: {password}  (shown once; the console asks "
                   "for a new one at the first sign-in)")


@cli.command("unlock")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True)
def unlock_command(username, as_json):
    """Clear a user's sign-in lock, and every address lock in force."""
    try:
        addresses = service.unlock(username, actor="cli")
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, as_json)
    click.echo(json.dumps({"username": username, "addresses": addresses}, ensure_ascii=False) if as_json else
               f"unlocked {username}" + (f" and the address lock on {', '.join(addresses)}" if addresses else ""))


@cli.command("clear-address-locks")
@click.option("--json", "as_json", is_flag=True)
def clear_address_locks_command(as_json):
    """Clear every address lock in force, as the users page's button does (failed sign-ins from an address lock
    it for everyone behind it)."""
    addresses = service.unlock_addresses(actor="cli")
    db.session.commit()
    click.echo(json.dumps({"addresses": addresses}) if as_json else
               f"cleared the sign-in lock on {', '.join(addresses)}" if addresses else "no address was locked")


@cli.command("sessions")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True)
def sessions_command(username, as_json):
    """The user's live console sign-in sessions (times in UTC)."""
    try:
        user = service.get_user(username)
    except DomainError as error:
        fail(error, as_json)
    rows = console_sessions.live_sessions(user)
    if not rows and not as_json:
        click.echo(f"no live console sessions of {username}")
    for row in rows:
        item = {"id": row.id, "remote_addr": row.remote_addr, "user_agent": row.user_agent,
                "signed_in_at": row.signed_in_at.isoformat(), "last_active_at": row.last_active_at.isoformat()}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"{row.id:<8} {row.remote_addr:<40} {item['signed_in_at']:<34} {item['last_active_at']:<34} "
                   f"{row.user_agent}")


@cli.command("end-sessions")
@click.argument("username")
@click.option("--json", "as_json", is_flag=True)
def end_sessions_command(username, as_json):
    """Sign the user out everywhere: every console session of theirs ends at its next request."""
    try:
        user = service.get_user(username)
    except DomainError as error:
        fail(error, as_json)
    ended = console_sessions.end_sessions(user, "ended_by_admin", actor="cli")
    db.session.commit()
    click.echo(json.dumps({"username": user.username, "ended": ended}, ensure_ascii=False) if as_json else
               f"ended {len(ended)} session(s) of {username}")
