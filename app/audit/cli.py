"""`flask audit verify|anchor|list|export`."""

from __future__ import annotations

import json
import re
import sys

import click
from flask import current_app
from flask.cli import AppGroup
from flask_babel import force_locale

from app.admission.cli import refuse
from app.audit import export, search, service, stored
from app.audit.stored import Unreadable
from app.cli_arguments import Digits
from app.errors import Conflict, NotFound
from app.extensions import db

cli = AppGroup("audit", help="Inspect and verify the audit log.")


def _anchor(value: str) -> tuple[int, str]:
    seq, _, digest = value.partition(":")
    if not (seq.isascii() and seq.isdigit()) or len(digest) != 64:  # "²" and "٢" are digits too
        raise click.BadParameter(f"{value!r} is not SEQ:HASH as `flask audit anchor` prints it.")
    return int(seq), digest.lower()


@cli.command("verify")
@click.option("--anchor", "anchors", multiple=True, metavar="SEQ:HASH",
              help="A record copied elsewhere earlier (`flask audit anchor`); it must still be in the chain, "
                   "unchanged. Repeatable.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def verify_command(anchors: tuple[str, ...], as_json: bool) -> None:
    """Recompute the hash chain; exit 1 if any record was edited, deleted, reordered or, given an
    anchor, cut off."""
    report = service.verify(anchors=[_anchor(value) for value in anchors])
    if as_json:
        click.echo(json.dumps({"ok": report.ok, "checked": report.checked, "problems": report.problems,
                               "last_seq": report.last_seq, "last_hash": report.last_hash}, ensure_ascii=False))
    else:
        for problem in report.problems:
            click.echo(problem, err=True)
        click.echo(f"{report.checked} records checked, {'chain intact' if report.ok else 'CHAIN BROKEN'}")
    if report.checked == 0:  # an empty or foreign database passes the chain check: say so (exit 0 all the same)
        click.echo("warning: the audit log holds no record: is this the registry's database?", err=True)
    if not report.ok:
        raise SystemExit(1)


@cli.command("anchor")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def anchor_command(as_json: bool) -> None:
    """Print the newest record as SEQ:HASH. Copy it to another system now and then: the chain cannot
    tell that its newest records were cut off, `flask audit verify --anchor SEQ:HASH` can."""
    # The number and the hash only: a newest record whose time or detail was edited cannot be loaded whole. The
    # record the next one follows: a number edited into text or NULL is none `verify --anchor` could take.
    row = service.last_entry(db.session)
    if row is None:
        if as_json:
            refuse(NotFound("The audit log is empty.", code="audit_log_empty"), as_json)
        raise click.ClickException("The audit log is empty.")
    if not re.fullmatch(r"[0-9a-f]{64}", row.hash):  # edited into no hash: an anchor `verify --anchor` refuses
        message = (f"The newest record, {row.seq}, holds no hash as records do ({row.hash!r}): it was edited in the "
                   "database, so it anchors nothing. Run `flask audit verify`.")
        if as_json:
            refuse(Conflict(message, code="audit_newest_edited"), as_json)
        raise click.ClickException(message)
    click.echo(json.dumps({"seq": row.seq, "hash": row.hash, "anchor": f"{row.seq}:{row.hash}"}) if as_json else
               f"{row.seq}:{row.hash}")


@cli.command("list")
@click.option("--limit", default=20, show_default=True, type=Digits(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True)
def list_command(limit: int, as_json: bool) -> None:
    """The newest records; times in UTC (the console shows them in the admin's time zone). A record edited in
    the database into what no record holds is listed with what the database holds, marked "unreadable
    (edited)"; --json names such columns in "unreadable" (empty for every other record)."""
    for row in stored.newest(limit):
        if as_json:
            at = row.at if isinstance(row.at, Unreadable) else row.at.isoformat()
            click.echo(json.dumps({"seq": row.seq, "at": at, "actor": row.actor, "action": row.action,
                                   "target": row.target, "remote_addr": row.remote_addr, "detail": row.detail,
                                   "hash": row.hash, "unreadable": row.unreadable}, ensure_ascii=False))
            continue
        # What could not be read, quoted as JSON: a terminal is shown no control character an edit put there.
        seq, at, actor, action, target = (json.dumps(value, ensure_ascii=False) if isinstance(value, Unreadable)
                                          else value for value in (row.seq, row.at, row.actor, row.action, row.target))
        at = at if isinstance(at, str) else f"{at:%Y-%m-%d %H:%M:%S}Z"
        mark = f"  unreadable (edited): {', '.join(row.unreadable)}" if row.unreadable else ""
        click.echo(f"{seq:>6} {at:<20} {actor:<16} {action:<28} {target}{mark}")


@cli.command("export")
@click.option("--actor", default="", help="Exactly this actor (a console user in any case of its letters).")
@click.option("--action", default="", help="Actions starting with this, ASCII letters in either case (`node.` "
                                           "for every node action), or "
                                           "whose label in --language contains it.")
@click.option("--target", default="", help="Targets containing this (ASCII letters in either case).")
@click.option("--since", default="", metavar="YYYY-MM-DD",
              help="From this day on (Asia/Shanghai, the console's time zone).")
@click.option("--until", default="", metavar="YYYY-MM-DD", help="Up to and including this day.")
@click.option("--header", type=click.Choice(["keys", "labels"]), default="keys", show_default=True,
              help="First row: stable keys (seq, at_utc, ...), which scripts read, or the column names in "
                   "--language, as the console's export has them.")
@click.option("--language", type=click.Choice(["zh_CN", "en"]), default="en", show_default=True,
              help="Language of the column names, of the action_label column and of the labels --action "
                   "matches.")
def export_command(header: str, language: str, **values: str) -> None:
    """Write the records the filters select to standard output as CSV, newest first, as the console's
    export does (UTF-8 with a byte-order mark, for spreadsheets); the export is audited."""
    audit_filter = search.AuditFilter.from_values(values, current_app.config["MPIM_DISPLAY_TIMEZONE"])
    with force_locale(language):  # --action's words match the labels in --language, as the console's in its own
        query, not_dates = search.records(audit_filter)
        labels, first_row = export.action_labels(), export.header(audit_filter.zone, names=header == "labels")
    if not_dates:
        raise click.BadParameter(f"{not_dates[0]!r} is not a date (YYYY-MM-DD).")
    query = export.record_export(audit_filter, query, actor="cli")
    db.session.commit()
    # UTF-8 as promised, whatever the terminal's encoding (GBK would fail at the byte-order mark).
    sys.stdout.flush()
    out = sys.stdout.buffer
    for line in export.csv_lines(db.engine, query, audit_filter.zone, labels, first_row):
        out.write(line.encode("utf-8"))
    out.flush()
