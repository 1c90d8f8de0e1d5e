"""Console form of health: a node's maintenance window."""

from __future__ import annotations

from datetime import datetime

from flask_babel import lazy_gettext as _l
from wtforms import HiddenField, SelectField, StringField

from app.console.forms import ConsoleForm
from app.health.maintenance import KEEP_END, UNSEEN, Unseen
from app.health.models import NodeHealth
from app.health.service import in_maintenance

LENGTHS = [("1", _l("1 hour")), ("4", _l("4 hours")), ("24", _l("24 hours"))]
NO_WINDOW = "none"


class MaintenanceForm(ConsoleForm):
    """No validators: `maintenance.schedule_maintenance` refuses a length or a note by name, at every door, and the
    node page shows its refusal at the field with what was typed still in it. validate_choice=False: a length
    outside the list is the service's to refuse, in the reader's language.
    No "0 (end it)" choice: ending a window is its own confirmed button (`health.end_maintenance`); as the form's
    default it ended the window of an admin who only edited the note.
    `seen_end`: the window as the page showed it, for the service to hold the change to (`maintenance.as_seen`)."""

    hours = SelectField(_l("Maintenance for"), choices=LENGTHS, validate_choice=False)
    note = StringField(_l("Note"))
    seen_end = HiddenField()

    def show_window(self, health: NodeHealth | None) -> MaintenanceForm:
        """The form for the window as it stands: its end (or none) in `seen_end`, and during a window a first
        choice that keeps its end (saving edits the note)."""
        active = in_maintenance(health)
        self.hours.choices = [(KEEP_END, _l("keep the current end")), *LENGTHS] if active else LENGTHS
        self.seen_end.data = health.maintenance_until.isoformat() if active else NO_WINDOW
        return self

    def expected_end(self) -> datetime | None | Unseen:
        """`seen_end` as the service takes it; a POST without it (or with one no page drew) is held to nothing,
        as the CLI is."""
        text = (self.seen_end.data or "").strip()
        if text == NO_WINDOW:
            return None
        try:
            end = datetime.fromisoformat(text)
        except ValueError:
            return UNSEEN
        return end if end.tzinfo is not None else UNSEEN
