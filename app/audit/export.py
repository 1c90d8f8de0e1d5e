"""The audit log as CSV: for an auditor's spreadsheet, or an archive kept outside this system.

The console's file is headed by the column names in the reader's language, which a spreadsheet shows; the
CLI's by stable keys (`seq, at_utc, ...`), which scripts read, unless asked for the names. The file starts
with a UTF-8 byte-order mark, without which Excel on a Chinese Windows reads UTF-8 as GBK and shows every name
garbled. A cell that a spreadsheet would take for a formula (it starts with =, +, -, @, a tab, a carriage
return or a full-width ＝＋－＠: an actor's or a node's name is typed by people, and any cell of a record edited
in the database may hold anything) is prefixed with an apostrophe, as OWASP advises against CSV injection;
`flask audit list --json` keeps every value exactly as recorded, hashes included.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from zoneinfo import ZoneInfo

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy import Engine, Select, not_, or_

from app.audit import detail_in_zone, service
from app.audit.models import AuditRecord
from app.audit.stored import StoredRecords, Unreadable, holds_a_number
from app.extensions import db
from app.labels import AUDIT_ACTIONS

COLUMNS = ("seq", "at_utc", "at_local", "actor", "action", "action_label", "target", "remote_addr", "detail",
           "prev_hash", "hash")
# The header a person reads, column by column as COLUMNS; the local time's is named with its zone.
COLUMN_NAMES = {
    "seq": _l("No."), "at_utc": _l("Time (UTC)"), "actor": _l("Actor"), "action": _l("Action code"),
    "action_label": _l("Action"), "target": _l("Target"), "remote_addr": _l("Address"), "detail": _l("Detail"),
    "prev_hash": _l("Previous record's hash"), "hash": _l("Record hash"),
}
# OWASP's list, and the full-width forms a Chinese input method types (＝＋－＠), which a spreadsheet might
# read as the ASCII ones: an apostrophe costs little in a rare cell.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
BYTE_ORDER_MARK = "\ufeff"


def safe_cell(value: str) -> str:
    """A text cell no spreadsheet evaluates."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def record_export(audit_filter, query: Select, *, actor: str | None = None) -> Select:
    """Audit the export (the caller commits before the first line goes out) and bound `query` to the records
    there were before it: the file holds what the list counted, not also its own export record or what
    others record while it streams."""
    last = service.last_entry(db.session)
    newest = last.seq if last else 0
    service.record("audit.export", detail={"filters": audit_filter.as_dict(), "up_to_seq": newest}, actor=actor)
    # A record whose number was edited (`holds_a_number`) is listed, so it is exported: no record written later is
    # numbered so.
    return query.where(or_(AuditRecord.seq <= newest, not_(holds_a_number(db.session.get_bind().dialect))))


def action_labels() -> dict[str, str]:
    """The actions in words, in the reader's language: taken while the request is current, since the lines
    are written after the view has returned."""
    return {action: str(label) for action, label in AUDIT_ACTIONS.items()}


def header(zone: str, *, names: bool) -> list[str]:
    """The first row: the stable keys, or with `names` the column names in the current language (taken
    while the request is current, as `action_labels`)."""
    if not names:
        return [*COLUMNS[:2], f"at_local ({zone})", *COLUMNS[3:]]
    return [_("Time (%(zone)s)", zone=zone) if column == "at_local" else str(COLUMN_NAMES[column])
            for column in COLUMNS]


def csv_lines(engine: Engine, query: Select, zone: str, labels: dict[str, str],
              first_row: list[str]) -> Iterator[str]:
    """`first_row` (see `header`), then one line per record `query` selects, read on a connection of its own
    as the lines go out: a long log streams instead of being built in memory, and outlives the request's
    session. What a record edited in the database holds that no record could is written as stored (`stored`),
    and the file goes on; every text cell is safe, since any of them may have been edited."""
    local = ZoneInfo(zone)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    records = StoredRecords(engine.dialect)

    def line(values) -> str:
        buffer.seek(0)
        buffer.truncate()
        writer.writerow(values)
        return buffer.getvalue()

    yield BYTE_ORDER_MARK + line(first_row)
    with engine.connect() as connection:
        for row in connection.execution_options(yield_per=500).execute(query.with_only_columns(*records.columns)):
            stored = records.decode(row)
            yield line([
                safe_cell(stored.seq) if isinstance(stored.seq, Unreadable) else stored.seq,  # text: may be a formula
                *_times(stored.at, local), safe_cell(stored.actor), safe_cell(stored.action),
                safe_cell(labels.get(stored.action, stored.action)), safe_cell(stored.target),
                safe_cell(stored.remote_addr), safe_cell(_detail_text(stored.detail, local)),
                safe_cell(stored.prev_hash), safe_cell(stored.hash),
            ])


def _times(at, local: ZoneInfo) -> tuple[str, str]:
    """UTC and local, or the stored text and nothing: a time past 9999 in Asia/Shanghai is no Python time."""
    if isinstance(at, Unreadable):
        return safe_cell(at), ""
    try:
        shown = at.astimezone(local).strftime("%Y-%m-%d %H:%M:%S")
    except OverflowError:
        shown = ""
    return at.isoformat(timespec="seconds").replace("+00:00", "Z"), shown


def _detail_text(detail, local: ZoneInfo) -> str:
    """The detail as JSON, its times in the file's local zone as on the audit page (`detail_in_zone`)."""
    if isinstance(detail, Unreadable):
        return detail
    return json.dumps(detail_in_zone(detail, local), ensure_ascii=False, sort_keys=True, default=str) if detail else ""


def file_name(moment, zone: str) -> str:
    return f"audit-{moment.astimezone(ZoneInfo(zone)):%Y%m%d-%H%M%S}.csv"
