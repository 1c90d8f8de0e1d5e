"""Console form of health: a node's maintenance window."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from wtforms import SelectField, StringField

from app.console.forms import ConsoleForm
from app.health.maintenance import KEEP_END

LENGTHS = [("1", _l("1 hour")), ("4", _l("4 hours")), ("24", _l("24 hours"))]


class MaintenanceForm(ConsoleForm):
    """No validators: `maintenance.schedule_maintenance` refuses a length or a note by name, at every door, and the
    node page shows its refusal at the field with what was typed still in it. validate_choice=False: a length
    outside the list is the service's to refuse, in the reader's language.
    No "0 (end it)" choice: ending a window is its own confirmed button (`health.end_maintenance`); as the form's
    default it ended the window of an admin who only edited the note."""

    hours = SelectField(_l("Maintenance for"), choices=LENGTHS, validate_choice=False)
    note = StringField(_l("Note"))

    def offer_keep(self, active: bool) -> MaintenanceForm:
        """During a window, its first choice (and the default) keeps the window's end: saving edits the note."""
        self.hours.choices = [(KEEP_END, _l("keep the current end")), *LENGTHS] if active else LENGTHS
        return self
