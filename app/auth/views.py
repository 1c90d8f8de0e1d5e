"""Sign-in, sign-out, own password and (for ministry admins) user management."""

from __future__ import annotations

import unicodedata

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required, login_user
from sqlalchemy import select

from app.auth import console_sessions, idle, password_due, service
from app.auth.access import roles_required
from app.auth.forms import ConfirmForm, LoginForm, PasswordChangeForm, PasswordResetForm, UserCreateForm, UserEditForm
from app.auth.models import User
from app.console import pages
from app.database import paginate
from app.divisions import service as divisions
from app.errors import Conflict, DomainError, every_refusal
from app.extensions import db
from app.i18n import join_list

bp = Blueprint("auth", __name__)


def form_error(form, error: DomainError) -> None:
    """Pour a service error, and the refusals it carries (`Refusals`), back into the form fields they name, else
    flash it. A field shows every refusal the service has for it (each rule a password breaks), but a field that
    WTForms refused already (an empty one) keeps that one alone: it is not refused twice."""
    refused = {name for name, field in form._fields.items() if field.errors}
    for refusal in every_refusal(error):
        field = getattr(form, refusal.field, None) if refusal.field else None
        if field is None:
            flash(refusal.message, "error")
        elif refusal.field not in refused:
            field.errors = [*field.errors, refusal.message]


def form_status(form) -> int:
    """The status of a page that shows `form`: 422 once it was posted and is shown again, refused (a POST that
    succeeds redirects), else 200. One rule for every console form, so that a script, a test or a proxy's log
    tells a refusal from a page shown."""
    return 422 if form.is_submitted() else 200


def _safe_next(target: str | None) -> str:
    """Where a sign-in or a password change goes on to: the console page `next` names, built again from its route
    (`pages.page_address`, as the language switch does), else the dashboard: not an API answer, a CA file, a
    static file, the health check or the session status, though they are of this host. Given back as it came, a `next`
    with a line break was a Location header Werkzeug refuses: the sign-in, done and audited, answered 500. One
    with any other control character is no address a page of the console links to either."""
    if target and not any(unicodedata.category(character) == "Cc" for character in target):
        return pages.page_address(target) or url_for("console.dashboard")
    return url_for("console.dashboard")


@bp.route("/login", methods=["GET", "POST"])
def login():
    if current_user.is_authenticated:
        return redirect(url_for("console.dashboard"))
    form = LoginForm()
    if form.validate_on_submit():
        try:
            user = service.authenticate(form.username.data.strip(), form.password.data, request.remote_addr or "")
        except service.SignInsBusy as error:
            flash(error.message, "error")
            return render_template("auth/login.html", form=form), error.status
        except service.LoginRefused as error:
            flash(_("Too many failed sign-ins: this account or address is locked for a while.")
                  if error.code == "locked" else _("Wrong username or password."), "error")
            return render_template("auth/login.html", form=form), 401
        login_user(user)
        idle.start(user)
        return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/login.html", form=form), form_status(form)


@bp.post("/logout")
@login_required
def logout():
    idle.sign_out()
    return redirect(url_for("auth.login"))


@bp.get("/session/status")
@login_required
def session_status():
    """For the page's script: how long this session has left; asking does not count as activity."""
    return idle.seconds_left()


@bp.post("/session/keepalive")
@login_required
def session_keepalive():
    """The warning's "stay signed in" button: a request like any other, so it counts as activity."""
    return idle.seconds_left()


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    form = PasswordChangeForm()
    due = service.password_change_due(current_user)
    submitted = form.is_submitted()
    if submitted and not form.validate():
        # The new password's refusals come with WTForms' (the repeat differs, a field is empty) in one answer;
        # the current password is checked, and counted, only in a submit WTForms let through.
        try:
            service.check_password_policy(form.new_password.data or "", current_user.username,
                                          field="new_password")
        except DomainError as error:
            form_error(form, error)
    elif submitted:
        try:
            service.change_own_password(current_user, form.current_password.data, form.new_password.data,
                                        keep=idle.current_row())
            db.session.commit()
        except service.PasswordChangeLocked as error:
            db.session.rollback()
            if error.locked_now:
                # This session typed the guess that locked the account: it is the one a guesser holds (a
                # console left signed in, a stolen cookie), so it ends; the owner signs in after the lock.
                idle.sign_out()
                flash(_("Too many wrong passwords: this account is locked for a while, and you have been "
                        "signed out."), "error")
                return redirect(url_for("auth.login"))
            # Locked by failed sign-ins elsewhere, perhaps someone else's: this session stays.
            flash(error.message, "error")
            return render_template("auth/password.html", form=form, reason=None), 429
        except DomainError as error:
            db.session.rollback()
            form_error(form, error)
        else:
            flash(_("Your password has been changed."), "success")
            return redirect(_safe_next(request.args.get("next")))
    return render_template("auth/password.html", form=form,
                           reason=password_due.reason_text(due, current_app.config["MPIM_PASSWORD_MAX_DAYS"])), \
        form_status(form)


# Locked addresses the users page and its flashes name; the rest are counted (a guessing run from many
# addresses locks each of them, and one button clears them all).
ADDRESSES_SHOWN = 20


def _named_addresses(addresses: list[str]) -> str:
    named = join_list(addresses[:ADDRESSES_SHOWN])
    if len(addresses) > ADDRESSES_SHOWN:
        named += " " + _("and %(n)s more", n=len(addresses) - ADDRESSES_SHOWN)
    return named


@bp.get("/users/")
@roles_required("ministry_admin")
def users():
    query = select(User).order_by(User.username)
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"])
    return render_template("auth/users.html", page=page, is_locked=service.is_locked, confirm_form=ConfirmForm(),
                           retired=divisions.retired_among(code for user in page.items for code in user.scopes),
                           locked_addresses=service.locked_addresses(ADDRESSES_SHOWN),
                           locked_total=service.locked_address_count())


@bp.post("/users/address-locks/clear")
@roles_required("ministry_admin")
def unlock_addresses():
    if ConfirmForm().validate_on_submit():
        addresses = service.unlock_addresses()
        db.session.commit()
        flash(_("Sign-in lock cleared on %(addresses)s.", addresses=_named_addresses(addresses)) if addresses else
              _("No address was locked."), "success")
    return redirect(url_for("auth.users"))


@bp.route("/users/new", methods=["GET", "POST"])
@roles_required("ministry_admin")
def create_user():
    form = UserCreateForm()
    if form.is_submitted():
        draft = service.UserDraft(username=(form.username.data or "").strip(), password=form.password.data or "",
                                  role=form.role.data, scopes=tuple(service.typed_codes(form.scopes.data)),
                                  display_name=(form.display_name.data or "").strip())
        if _submitted(form, check=lambda: service.check_draft(draft), act=lambda: service.create_user(draft)):
            flash(_("User %(name)s created.", name=draft.username), "success")
            return redirect(url_for("auth.users"))
    return render_template("auth/user_form.html", form=form, user=None), form_status(form)


def _submitted(form, *, check, act) -> bool:
    """Every refusal in one answer: when WTForms refused a field (an empty one), the service's own checks
    (`check`) run too and their refusals join WTForms' at their fields; else `act` runs and commits. True once
    it committed."""
    valid = form.validate()
    try:
        if not valid:
            check()
        else:
            act()
            db.session.commit()
    except DomainError as error:
        db.session.rollback()
        form_error(form, error)
        return False
    return valid


@bp.route("/users/<username>", methods=["GET", "POST"])
@roles_required("ministry_admin")
def edit_user(username: str):
    user = service.get_user(username)
    form = UserEditForm(obj=user) if request.method == "GET" else UserEditForm()
    if request.method == "GET":
        form.scopes.data = user.scope_codes
    if form.is_submitted():
        change = {"role": form.role.data, "scopes": service.typed_codes(form.scopes.data),
                  "display_name": (form.display_name.data or "").strip()}
        changed = []

        def act() -> None:
            changed.append(service.update_user(user, **change, active=form.active.data, by=current_user))

        if _submitted(form, check=lambda: service.check_user_change(user, **change), act=act):
            if changed[0]:
                flash(_("User %(name)s updated.", name=username), "success")
            else:
                flash(_("Nothing changed: %(name)s is as it was.", name=username), "info")
            return redirect(url_for("auth.users"))
    return _user_page(user, form, PasswordResetForm(prefix="reset"), form_status(form))


def _user_page(user: User, form: UserEditForm, reset_form: PasswordResetForm, status: int):
    """The user's page: the edit form, the reset form, the sign-in lock and sessions."""
    return render_template("auth/user_form.html", form=form, user=user, reset_form=reset_form,
                           locked=service.is_locked(user.username), confirm_form=ConfirmForm(),
                           sessions=console_sessions.live_sessions(user),
                           retired_scopes=sorted(divisions.retired_among(user.scopes).values(),
                                                 key=lambda division: division.code)), status


@bp.post("/users/<username>/password")
@roles_required("ministry_admin")
def reset_password(username: str):
    """Done: back to the user's page. Refused: that page again, each refusal at the reset form's field."""
    user = service.get_user(username)
    form = PasswordResetForm(prefix="reset")
    valid = form.validate()
    try:
        if not valid:
            service.check_reset(user, form.password.data or "", by=current_user)
        else:
            service.reset_password(user, form.password.data, by=current_user)
            db.session.commit()
    except DomainError as error:
        db.session.rollback()
        if error.code == "own_password":
            flash(error.message, "error")
            return redirect(url_for("auth.change_password"))
        form_error(form, error)
    else:
        if valid:
            flash(_("Password of %(name)s reset.", name=username), "success")
            return redirect(url_for("auth.edit_user", username=username))
    edit_form = UserEditForm(formdata=None, obj=user)
    edit_form.scopes.data = user.scope_codes
    return _user_page(user, edit_form, form, 422)  # only a refused reset comes this far


@bp.post("/users/<username>/unlock")
@roles_required("ministry_admin")
def unlock_user(username: str):
    if ConfirmForm().validate_on_submit():
        try:
            addresses = service.unlock(username)
        except Conflict as error:  # not locked: said, and the list shows the account as it is
            flash(error.message, "info")
            return redirect(url_for("auth.users"))
        db.session.commit()
        flash(_("Sign-in lock of %(name)s cleared.", name=username) if not addresses else
              _("Sign-in lock of %(name)s cleared, and the lock on %(addresses)s.", name=username,
                addresses=_named_addresses(addresses)), "success")
    return redirect(url_for("auth.users"))


@bp.post("/users/<username>/sessions/end")
@roles_required("ministry_admin")
def end_user_sessions(username: str):
    """An administrator signs a user out everywhere (confirmed on the user's page)."""
    user = service.get_user(username)
    if ConfirmForm().validate_on_submit():
        ended = console_sessions.end_sessions(user, "ended_by_admin", keep=idle.current_row())
        db.session.commit()
        flash(ngettext("Ended %(num)d sign-in session of %(name)s.", "Ended %(num)d sign-in sessions of %(name)s.",
                       len(ended), name=username) if ended else
              _("%(name)s had no live sign-in session.", name=username), "success")
    return redirect(url_for("auth.edit_user", username=username))


@bp.get("/account/sessions")
@login_required
def my_sessions():
    """The signed-in user's live sessions, this one marked, the others each with an end button."""
    return render_template("auth/sessions.html", sessions=console_sessions.live_sessions(current_user),
                           current=idle.current_row())


@bp.post("/account/sessions/<int:session_id>/end")
@login_required
def end_my_session(session_id: int):
    if ConfirmForm().validate_on_submit():
        console_sessions.end_session(current_user, session_id, current=idle.current_row())
        db.session.commit()
        flash(_("That sign-in session has been ended."), "success")
    return redirect(url_for("auth.my_sessions"))


@bp.post("/account/sessions/end-others")
@login_required
def end_my_other_sessions():
    if ConfirmForm().validate_on_submit():
        ended = console_sessions.end_sessions(current_user, "ended_by_user", keep=idle.current_row())
        db.session.commit()
        flash(ngettext("Signed out of %(num)d other session.", "Signed out of %(num)d other sessions.",
                       len(ended)) if ended else
              _("There was no other session to end."), "success")
    return redirect(url_for("auth.my_sessions"))
