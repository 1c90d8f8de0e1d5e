"""`flask routing show|history|verify|publish`."""

from __future__ import annotations

import base64
import json

import click
from flask.cli import AppGroup

from app.admission.cli import refuse, run
from app.cli_arguments import Digits
from app.database import paginate
from app.errors import NotFound
from app.routing import document, service

cli = AppGroup("routing", help="The signed routing table.")


@cli.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the signed table body itself.")
def show_command(as_json):
    """The current routing table: its version, node count, validity and signer."""
    head = service.head()
    if head is None:  # on stderr, with or without --json: stdout is for the table
        refuse(NotFound("no table published yet", code="no_table_published"), as_json)
    if as_json:  # the signed bytes exactly, no newline added: saved, they verify against the signature
        click.echo(head.body, nl=False)
        return
    click.echo(f"version {head.version}, {head.node_count} nodes, issued {head.issued_at.isoformat()}, "
               f"expires {head.expires_at.isoformat()}, signer {head.signer_sha256}")


@cli.command("history")
@click.option("--limit", default=20, show_default=True, type=Digits(1, 1_000_000))
@click.option("--json", "as_json", is_flag=True)
def history_command(limit, as_json):
    """The published versions of the routing table, newest first, with what changed."""
    for row in paginate(service.history_query(), 1, limit, count=False).items:
        item = {"version": row.version, "issued_at": row.issued_at.isoformat(), "reason": row.reason,
                "node_count": row.node_count, "changes": row.changes}
        click.echo(json.dumps(item, ensure_ascii=False) if as_json else
                   f"v{row.version} {row.issued_at:%Y-%m-%d %H:%M:%S} {row.reason}: " + "; ".join(row.changes[:5]))


@cli.command("verify")
@click.argument("body_file", type=click.File("rb"))
@click.argument("signature_file", type=click.File("rb"))
@click.option("--json", "as_json", is_flag=True,
              help="The verdict as JSON on stdout: valid, or the reason it is not (exit 1, as without --json).")
def verify_command(body_file, signature_file, as_json):
    """Verify a downloaded table against its signature (DER or base64) and our route signer."""
    body, signature = body_file.read(), signature_file.read()
    if not signature.startswith(b"0"):
        try:
            signature = base64.b64decode(signature.strip(), validate=True)  # `echo` ends the file with a newline
        except ValueError:
            pass
    found = run(lambda: service.signer_of(body, signature), as_json)  # the CA not ready: an error line, exit 1
    verdict = {"valid": found.signer is not None and found.signer == found.current, "signer": found.signer,
               "current_signer": found.current}
    if found.signer is not None:  # signed by us, so our JSON
        table = json.loads(body)
        verdict.update(kind="delta" if document.is_delta(table) else "table", version=table["version"])
    if found.signer is None:
        verdict.update(reason="invalid_signature", message=f"signature INVALID: neither the current route signer "
                       f"{found.current} nor an earlier one signed it")
    elif found.signer != found.current:
        verdict.update(reason="earlier_signer", signer_state=found.signer_state,
                       message=f"signed by an earlier route signer {found.signer} ({found.signer_state}), not the "
                               f"current {found.current}: authentic when issued, but nodes take only tables by the "
                               "current signer")
    if as_json:  # the verdict is the result, as `audit verify --json` prints a broken chain's
        click.echo(json.dumps(verdict, ensure_ascii=False))
    elif not verdict["valid"]:
        click.echo(verdict["message"], err=True)
    else:
        click.echo(f"signature valid: {verdict['kind']} version {verdict['version']} by {found.current}")
    if not verdict["valid"]:
        raise SystemExit(1)


@cli.command("publish")
@click.option("--force", is_flag=True, help="Re-sign even when nothing changed.")
@click.option("--above", type=Digits(1, service.HIGHEST_ABOVE), default=None,
              help="After restoring a backup: publish a version above this one (the highest version nodes hold).")
@click.option("--json", "as_json", is_flag=True)
def publish_command(force, above, as_json):
    """Sign and publish a new version of the routing table if what nodes would see changed."""
    version = run(lambda: service.publish("cli", force=force, actor="cli", above=above), as_json)
    if as_json:
        click.echo(json.dumps({"published": version is not None, "version": version.version if version else
                               service.head_version(), "changes": list(version.changes) if version else []},
                              ensure_ascii=False))
        return
    click.echo(f"published v{version.version}" if version else "nothing changed")
