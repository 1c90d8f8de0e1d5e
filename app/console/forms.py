"""The base of every console form."""

from __future__ import annotations

from flask import has_request_context, request
from flask_wtf import FlaskForm


class ConsoleForm(FlaskForm):
    """A FlaskForm that reads an HTML form post only.

    Flask-WTF takes a request's JSON as the form's data when it has no form body. The console's forms were
    written for strings from a browser: a number or an object where a field's text belongs, or JSON nested
    deeper than Python's parser goes, ended in a 500, on the sign-in page too (the CSRF token rides in a header
    anyone can read off the page). A JSON post now reads as an empty form, refused field by field."""

    class Meta(FlaskForm.Meta):
        def wrap_formdata(self, form, formdata):
            if has_request_context() and request.is_json and not request.form and not request.files:
                return formdata if hasattr(formdata, "getlist") else None  # data a view passed, else nothing
            return super().wrap_formdata(form, formdata)


def seen_number(text: str | None) -> int | None:
    """A hidden field's record number, as a page drew it (the change it was drawn after); None when it holds none a
    page draws, as a hand-made POST may: held to nothing, as the CLI is. At most 18 digits: a longer one is no
    record's, and int() refuses over 4,300 with a ValueError (a 500)."""
    value = (text or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
