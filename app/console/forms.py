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
