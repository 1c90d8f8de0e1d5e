"""`flask users create|list|ensure-admin|unlock|sessions|end-sessions`."""

from __future__ import annotations

import json
import os
import sys

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from app.auth import console_sessions, service
from app.auth.models import ROLES, User
from app.errors import DomainError
from app.extensions import db

cli = AppGroup("users", help="Manage console users.")


def fail(error: DomainError, as_json: bool) -> None:
    click.echo(json.dumps(error.to_dict(), ensure_ascii=False) if as_json else f"error: {error.message}", err=True)
    raise SystemExit(1)


@cli.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True)
@click.option("--username", required=True)
@click.option("--scope", default="", help="Comma-separated division codes (provincial admins).")
@click.option("--name", "display_name", default="")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--json", "as_json", is_flag=True)
def create_command(role, username, scope, display_name, password_stdin, as_json):
    """Create a user; without --password-stdin a password is generated and printed once. Either way it is
    a first password: the user chooses their own at the first sign-in."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else service.generate_password()
    draft = service.UserDraft(username=username, password=password, role=role,
                              scopes=tuple(scope.split(",")), display_name=display_name)
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
    for user in db.session.scalars(select(User).order_by(User.username)):
        item = {"username": user.username, "role": user.role, "scopes": user.scopes, "active": user.active,
                "locked": service.is_locked(user.username)}
        click.echo(json.dumps(item) if as_json else
                   f"{user.username:<24} {user.role:<18} {user.scope_codes:<20} "
                   f"{'active' if user.active else 'inactive'}{' locked' if item['locked'] else ''}")


@cli.command("ensure-admin")
@click.option("--username", default="admin", show_default=True)
def ensure_admin_command(username):
    """Create the first ministry admin if there is none (password: MPIM_ADMIN_PASSWORD or generated)."""
    if db.session.scalar(select(func.count()).where(User.role == "ministry_admin")):
        click.echo("a ministry admin exists already")
        return
    password = os.environ.get("MPIM_ADMIN_PASSWORD") or service.generate_password()
    try:
        service.create_user(service.UserDraft(username=username, password=password, role="ministry_admin",
                                              display_name="部级管理员",
                                              must_change_password=not os.environ.get("MPIM_ADMIN_PASSWORD")))
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, False)
    if os.environ.get("MPIM_ADMIN_PASSWORD"):
        click.echo(f"created ministry admin '{username}' with the password from MPIM_ADMIN_PASSWORD")
    else:
        click.echo(f"created ministry admin '{username}' with password: {password}  (shown once; the console asks "
                   "for a new one at the first sign-in)")


@cli.command("unlock")
@click.argument("username")
def unlock_command(username):
    try:
        addresses = service.unlock(username)
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        fail(error, False)
    click.echo(f"unlocked {username}" + (f" and the address lock on {', '.join(addresses)}" if addresses else ""))


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
def end_sessions_command(username):
    """Sign the user out everywhere: every console session of theirs ends at its next request."""
    try:
        user = service.get_user(username)
    except DomainError as error:
        fail(error, False)
    ended = console_sessions.end_sessions(user, "ended_by_admin", actor="cli")
    db.session.commit()
    click.echo(f"ended {len(ended)} session(s) of {username}")
