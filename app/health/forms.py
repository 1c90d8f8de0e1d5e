"""Console form of health: a node's maintenance window."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from wtforms import SelectField, StringField

from app.console.forms import ConsoleForm


class MaintenanceForm(ConsoleForm):
    """No validators: `service.schedule_maintenance` refuses a length or a note by name, at every door, and the
    node page shows its refusal at the field with what was typed still in it. validate_choice=False: a length
    outside the list is the service's to refuse, in the reader's language."""

    hours = SelectField(_l("Maintenance for"), choices=[("0", _l("none (end it)")), ("1", "1 h"), ("4", "4 h"),
                                                        ("24", "24 h")], validate_choice=False)
    note = StringField(_l("Note"))
