"""Console form of health: a node's maintenance window."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, SelectField, StringField

from app.console.forms import ConsoleForm, seen_number
from app.health.maintenance import KEEP_END, window_mark
from app.health.models import NodeHealth
from app.health.service import in_maintenance

LENGTHS = [("1", _l("1 hour")), ("4", _l("4 hours")), ("24", _l("24 hours"))]


class MaintenanceForm(ConsoleForm):
    """No validators: `maintenance.schedule_maintenance` refuses a length or a note by name, at every door, and the
    node page shows its refusal at the field with what was typed still in it. validate_choice=False: a length
    outside the list is the service's to refuse, in the reader's language.
    No "0 (end it)" choice: ending a window is its own confirmed button (`health.end_maintenance`); as the form's
    default it ended the window of an admin who only edited the note.
    `seen_window`: the window's newest record as the page was drawn, for the service to hold the change to
    (`maintenance.as_seen`)."""

    hours = SelectField(_l("Maintenance for"), choices=LENGTHS, validate_choice=False)
    note = StringField(_l("Note"))
    seen_window = HiddenField()

    def show_window(self, health: NodeHealth | None, node_id: str) -> MaintenanceForm:
        """The form for the window as it stands: its newest record in `seen_window`, and during a window a first
        choice that keeps its end (saving edits the note)."""
        active = in_maintenance(health)
        self.hours.choices = [(KEEP_END, _l("keep the current end")), *LENGTHS] if active else LENGTHS
        self.seen_window.data = str(window_mark(node_id))
        return self

    def seen(self) -> int | None:
        """`seen_window` as the service takes it; a POST without it (or with one no page drew) is held to nothing,
        as the CLI is."""
        return seen_number(self.seen_window.data)
