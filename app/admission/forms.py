"""Console forms of admission: tokens, applications, review decisions, lifecycle."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from flask_wtf.file import FileField, FileSize
from wtforms import HiddenField, SelectField, SelectMultipleField, StringField, TextAreaField, widgets
from wtforms.validators import DataRequired, Length, Optional, StopValidation

from app import labels
from app.admission.information import FLAT_FIELDS, document_from_fields
from app.admission.models import CAPABILITIES
from app.console.forms import ConsoleForm, seen_number
from app.divisions.codes import typed_code


class CSRInput:
    """A CSR pasted (PEM) or uploaded (PEM or DER); mixed into the forms that take one."""

    csr = TextAreaField(_l("CSR (PEM)"), validators=[Optional(), Length(max=65536)])
    # data-max-bytes: the browser refuses a larger file before sending (console.js), so a file over the
    # request limit never costs the admin what they typed in the rest of the form.
    csr_file = FileField(_l("or upload the CSR file"), validators=[
        FileSize(max_size=65536, message=_l("The file must not exceed 64 KB."))],
        render_kw={"data-max-bytes": "65536", "data-too-large": _l("The file must not exceed 64 KB.")})

    def csr_pem(self) -> str | None:
        """The CSR as PEM text; `InvalidCSR` for an upload that is neither PEM nor DER, or for a CSR given
        both ways (which one was meant is the admin's to say, not ours to guess)."""
        from app.pki.csr_policy import InvalidCSR, pem_from_file

        upload = self.csr_file.data
        if upload and getattr(upload, "filename", ""):
            if (self.csr.data or "").strip():
                raise InvalidCSR(_l("Give the CSR once: paste it or upload its file, not both."))
            return pem_from_file(upload.read(65537)) or None
        return self.csr.data or None


def without_blanks(value):
    """A pasted code's blanks go before the fields' Length(max=6) runs: " 360000 " was refused as too long.
    Full-width digits are read as digits (`typed_code`)."""
    return typed_code(value) if isinstance(value, str) else value


def some_chosen(form, field) -> None:
    """A capability ticked. Not DataRequired: its "required" flag would reach every checkbox, and a browser would
    then ask for all of them. The A.1 parser says the same in its JSON words, for the API."""
    if not field.data:
        raise StopValidation(_l("Choose at least one capability."))


class TokenForm(ConsoleForm):
    division_code = StringField(_l("Division code"), validators=[DataRequired(), Length(max=6)],
                                filters=[without_blanks])
    ttl = SelectField(_l("Valid for"), choices=[("1d", _l("1 day")), ("7d", _l("7 days")), ("30d", _l("30 days"))],
                      default="7d")
    note = StringField(_l("Note"), validators=[Length(max=200)])


class ApplicationForm(CSRInput, ConsoleForm):
    division_code = StringField(_l("Division code"), validators=[DataRequired(), Length(max=6)],
                                filters=[without_blanks])
    org_name = StringField(_l("Organisation"), validators=[DataRequired(), Length(max=100)])
    system_name = StringField(_l("System name"), validators=[DataRequired(), Length(max=100)])
    vendor = StringField(_l("Vendor"), validators=[DataRequired(), Length(max=100)])
    endpoint = StringField(_l("Endpoint (https URL)"), validators=[DataRequired(), Length(max=255)])
    contact_name = StringField(_l("Contact name"), validators=[DataRequired(), Length(max=50)])
    contact_phone = StringField(_l("Contact phone"), validators=[DataRequired(), Length(max=32)])
    contact_email = StringField(_l("Contact e-mail"), validators=[DataRequired(), Length(max=254)])
    # validate_choice=False: A.1's parser refuses an unknown capability, by name and in the reader's language;
    # WTForms' own refusal is English on the Chinese console (its zh catalog marks it fuzzy).
    capabilities = SelectMultipleField(
        _l("Capabilities"), choices=[(c, labels.CAPABILITIES[c]) for c in CAPABILITIES], validators=[some_chosen],
        validate_choice=False,
        option_widget=widgets.CheckboxInput(), widget=widgets.ListWidget(prefix_label=False))
    def document(self) -> dict:
        """The same A.1 shape the API takes, so one parser checks both doors."""
        return document_from_fields((self.division_code.data or "").strip(),
                                    {name: getattr(self, name).data for name in FLAT_FIELDS},
                                    list(self.capabilities.data or []))

    def names(self) -> dict[str, str]:
        """The document's keys → this form's labels, so that a refusal names the field as the page does."""
        return {key: str(getattr(self, key.replace(".", "_")).label.text)
                for key in ("division_code", "org_name", "system_name", "vendor", "endpoint", "contact.name",
                            "contact.phone", "contact.email")}



# No validators here: the service refuses a missing reason, a misleading one and one over its 500 characters,
# by name and at every door; the page shows its refusal at the field, the reason still in it.
class RejectForm(ConsoleForm):
    reason = TextAreaField(_l("Reason"))


class ReasonForm(ConsoleForm):
    reason = StringField(_l("Reason"))
    # The node's newest change the page was loaded after (`node_changes.mark`): sent back with the form, so that
    # one from a page older than the node is refused rather than taken.
    seen_change = HiddenField()

    def seen(self) -> int | None:
        """The change the page was loaded after; None for a form that says none (no check, as the CLI's)."""
        return seen_number(self.seen_change.data)
