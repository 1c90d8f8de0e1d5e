"""Sign-in, password and user-management forms."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from wtforms import BooleanField, PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, EqualTo, Length

from app.console.forms import ConsoleForm

ROLE_CHOICES = [
    ("ministry_admin", _l("Ministry admin")),
    ("provincial_admin", _l("Provincial admin")),
    ("auditor", _l("Auditor")),
]

# A password an admin types for someone else: the rules, and that it serves only until the user's first sign-in
# (app/auth/password_due.py), so the admin hands it over as a temporary one.
ADMIN_CHOSEN_PASSWORD = _l("At least 10 characters, with three of: lower case, upper case, digits, symbols. "
                           "The user replaces it with their own at the first sign-in.")

# The scope field as typed: the service refuses codes that would not fit the column (`normalise_scopes`, which keeps
# a list an account holds already), so this bound only stops absurd input. The column's 400 here refused the list
# such an account holds, as the form shows it (nothing could disable it), and 51 codes typed with spaces.
SCOPES_TYPED_MAX = 4000


class LoginForm(ConsoleForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=256)])


class PasswordChangeForm(ConsoleForm):
    current_password = PasswordField(_l("Current password"), validators=[DataRequired()])
    new_password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=256)],
                                 description=_l("At least 10 characters, with three of: lower case, upper case, "
                                                "digits, symbols."))
    confirm = PasswordField(_l("Repeat the new password"),
                            validators=[DataRequired(), EqualTo("new_password", message=_l("The passwords differ."))])


class UserCreateForm(ConsoleForm):
    username = StringField(_l("Username"), validators=[DataRequired(), Length(max=64)])
    display_name = StringField(_l("Name"), validators=[Length(max=120)])
    role = SelectField(_l("Role"), choices=ROLE_CHOICES)
    scopes = StringField(_l("Division scope"), description=_l("Comma-separated codes, e.g. 360000,440000"),
                         validators=[Length(max=SCOPES_TYPED_MAX)])
    password = PasswordField(_l("Initial password"), validators=[DataRequired(), Length(max=256)],
                             description=ADMIN_CHOSEN_PASSWORD)


class UserEditForm(ConsoleForm):
    display_name = StringField(_l("Name"), validators=[Length(max=120)])
    role = SelectField(_l("Role"), choices=ROLE_CHOICES)
    scopes = StringField(_l("Division scope"), description=_l("Comma-separated codes, e.g. 360000,440000"),
                         validators=[Length(max=SCOPES_TYPED_MAX)])
    active = BooleanField(_l("Active"))


class PasswordResetForm(ConsoleForm):
    password = PasswordField(_l("New password"), validators=[DataRequired(), Length(max=256)],
                             description=ADMIN_CHOSEN_PASSWORD)


class ConfirmForm(ConsoleForm):
    """An empty form: its CSRF token is the confirmation that a button was really pressed."""
