"""`flask ca init|root-offline|root-crl|revoke-intermediate|list|show|record|revoke|crl|rotate-route-signer|
rotate-management-certificate|renew`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from cryptography import x509
from flask.cli import AppGroup

from app.admission.cli import emit, record_lines, run
from app.auth import service as users
from app.cli_arguments import Digits
from app.extensions import db
from app.pki import intermediate, inventory, lifecycle, own_keys, recording, revocation, service
from app.pki.models import CERTIFICATE_KINDS, CRLState

cli = AppGroup("ca", help="The certificate authority.")


@cli.command("init")
@click.option("--key-type", type=click.Choice(["ec", "rsa"]), default=None,
              help="ec: P-384 root, P-256 intermediate (default); rsa: RSA 3072 for both.")
@click.option("--if-missing", is_flag=True, help="Do nothing when a CA exists (used by `make run`).")
@click.option("--generate-passphrase", is_flag=True,
              help="Without MPIM_CA_PASSPHRASE, generate one into MPIM_CA_PASSPHRASE_FILE (embedded default only).")
@click.option("--json", "as_json", is_flag=True)
def init_command(key_type, if_missing, generate_passphrase, as_json):
    """Create the root and issuing CA; refuses to overwrite an existing one."""
    if if_missing and service.is_ready():
        emit({"created": False}, as_json, "CA exists already")
        return
    result = run(lambda: lifecycle.initialise(key_type=key_type, actor="cli", generate_passphrase=generate_passphrase),
                 as_json)
    emit({"created": True, **result}, as_json, "CA created in {}\n  root {root}\n  route signer {route_signer}".format(
        service.ca_directory(), **result))


@cli.command("root-offline")
@click.argument("export_path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def root_offline_command(export_path, as_json):
    """Export the root key to EXPORT_PATH and remove it from this server."""
    run(lambda: lifecycle.root_offline(export_path, actor="cli"), as_json)
    emit({"exported_to": str(export_path), "root_key_online": False}, as_json,
         f"root key moved to {export_path}; the intermediate keeps issuing")


def certificate_dict(row, state: str | None = None) -> dict:
    """`state`: as the list read it with the row; else read now (`inventory.state_of`)."""
    return {"serial": row.serial, "kind": row.kind, "node_id": row.node_id, "subject": row.subject,
            "sha256": row.sha256, "key": row.key_description, "not_before": row.not_before.isoformat(),
            "not_after": row.not_after.isoformat(), "state": state or inventory.state_of(row),
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            "revocation_reason": row.revocation_reason}


@cli.command("list")
@click.option("--state", type=click.Choice(["", *inventory.STATES]), default="",
              help="expiring: the holder's current certificate expires within 30 days (one its holder replaced "
                   "is superseded); valid: every one not revoked or expired.")
@click.option("--kind", type=click.Choice(["", *CERTIFICATE_KINDS]), default="")
@click.option("--node", "node_id", default="")
@click.option("--json", "as_json", is_flag=True)
def list_command(state, kind, node_id, as_json):
    """The certificates the CA has issued, with their state."""
    query = inventory.inventory_query(state=state, node_id=node_id, kind=kind)
    # All of them: a page of 100,000 left the rest out without a word
    for row, row_state in map(inventory.listed, db.session.execute(query)):
        emit(certificate_dict(row, row_state), as_json, f"{row.serial:<34} {row.kind:<12} {row.node_id or '':<20} "
             f"{row_state:<10} until {row.not_after:%Y-%m-%d} {row.sha256[:16]}…")


@cli.command("show")
@click.argument("serial")
@click.option("--json", "as_json", is_flag=True)
def show_command(serial, as_json):
    """One certificate: its facts, then its PEM."""
    row = run(lambda: service.get(serial), as_json)
    if as_json:
        click.echo(json.dumps({**certificate_dict(row), "pem": row.pem}, ensure_ascii=False))
        return
    click.echo(record_lines(certificate_dict(row)))
    click.echo(row.pem, nl=False)


@cli.command("record")
@click.argument("file", type=click.File("r", encoding="utf-8", errors="replace"))
@click.option("--json", "as_json", is_flag=True)
def record_command(file, as_json):
    """Put a node certificate this CA issued, which a restored database lost, back on record (FILE: its PEM, from
    the node), so it can be listed and revoked; its node id is never handed out again. The node is not re-admitted."""
    recorded = run(lambda: recording.record(file.read(), actor="cli"), as_json)
    row = recorded.row
    held = f"filed under node {row.node_id}" if row.node_id else "no node on record holds it"
    emit({**certificate_dict(row), "names_node": recorded.names_node}, as_json,
         f"recorded {row.serial} for node id {recorded.names_node} ({held}); revoke it with `flask ca revoke "
         f"{row.serial}` if that node is gone")


@cli.command("revoke")
@click.argument("serial")
@click.option("--reason", type=click.Choice(revocation.REASONS), required=True)
@click.option("--user", "username", required=True, help="The console user acting (audited).")
@click.option("--json", "as_json", is_flag=True)
def revoke_command(serial, reason, username, as_json):
    """Revoke a certificate by serial; the CRL is regenerated, and one in use is replaced."""
    revoked = run(lambda: revocation.revoke(service.get(serial), reason, by=users.acting_user(username)), as_json)
    row, replacement = revoked.certificate, revoked.replacement
    line = f"revoked {row.serial} ({reason}); CRL regenerated"
    if replacement is not None:
        line += f"; it was in use: replaced by {replacement.kind} {replacement.serial}"
    emit({**certificate_dict(row), "replaced_by": replacement.serial if replacement else None}, as_json, line)


def crl_dict(state: CRLState, url: str) -> dict:
    """A CRL for scripts: what it says and where relying parties fetch it (`url`, the DER its certificates name,
    and the PEM beside it), not its bytes."""
    crl = x509.load_der_x509_crl(state.der)
    return {"crl_number": state.crl_number, "issuer": crl.issuer.rfc4514_string(),
            "this_update": state.this_update.isoformat(), "next_update": state.next_update.isoformat(),
            "revoked": len(crl), "url": url, "pem_url": url.removesuffix(".crl") + ".pem"}


@cli.command("crl")
@click.option("--regenerate", is_flag=True)
@click.option("--above", type=Digits(1, revocation.HIGHEST_ABOVE), default=None,
              help="With --regenerate, after restoring a backup: number the new CRL above this one (the highest "
                   "CRL number nodes may hold).")
@click.option("--json", "as_json", is_flag=True, help="Describe the CRL (number, dates, revoked count, URL) "
                                                      "instead of printing it.")
def crl_command(regenerate, above, as_json):
    """Print the current CRL (PEM); --regenerate issues a new one first."""
    if above is not None and not regenerate:
        raise click.UsageError("--above numbers a new CRL: give it with --regenerate.")
    if regenerate:
        run(lambda: revocation.regenerate_crl(actor="cli", above=above), as_json)
    state = run(revocation.current_crl, as_json)
    if as_json:
        click.echo(json.dumps(crl_dict(state, service.ca_config().crl_url), ensure_ascii=False))
    else:
        click.echo(state.pem, nl=False)


@cli.command("root-crl")
@click.option("--root-key", "root_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The root key exported by `flask ca root-offline` (when it is not on this server).")
@click.option("--above", type=Digits(1, revocation.HIGHEST_ABOVE), default=None,
              help="After restoring a backup: number the new root CRL above this one (the highest nodes may hold).")
@click.option("--json", "as_json", is_flag=True, help="Describe the new root CRL instead of printing it.")
def root_crl_command(root_key, above, as_json):
    """Sign a new root CRL (the intermediate's issuer) with the root key; print it (PEM)."""
    state = run(lambda: revocation.regenerate_root_crl(root_key_path=root_key, actor="cli", above=above), as_json)
    if as_json:
        click.echo(json.dumps(crl_dict(state, service.ca_config().root_crl_url), ensure_ascii=False))
        return
    click.echo(state.pem, nl=False)
    click.echo(f"root CRL {state.crl_number}, next update {state.next_update:%Y-%m-%d}", err=True)


@cli.command("revoke-intermediate")
@click.option("--reason", required=True,
              help="key_compromise, ca_compromise, affiliation_changed, superseded or cessation_of_operation.")
@click.option("--root-key", "root_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="The root key exported by `flask ca root-offline` (when it is not on this server).")
@click.option("--above", type=Digits(1, revocation.HIGHEST_ABOVE), default=None,
              help="After restoring a backup from before the revocation: number the root CRL above this one.")
@click.option("--user", "username", default=None, help="The console user acting (audited); else the operator.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation (required with --json).")
@click.option("--json", "as_json", is_flag=True, help="Describe the revocation and the new root CRL.")
def revoke_intermediate_command(reason, root_key, above, username, yes, as_json):
    """Revoke the issuing CA on the root's CRL: after its key leaked. Final; recovery is a new CA."""
    run(lambda: intermediate.check_reason(reason), as_json)
    if not yes:
        if as_json:
            raise click.UsageError("revoking the issuing CA stops the network: with --json, confirm it with --yes.")
        serial = format(run(service.authority, as_json).intermediate_certificate.serial_number, "x")
        click.confirm(f"Revoke the issuing CA {serial} ({reason}) on the root's CRL? Once they fetch it, every node "
                      "will refuse new routing tables signed through it, and no certificate is issued or renewed "
                      "here again. There is no undo: recovery is a new CA and every node enrolled again. Continue?",
                      abort=True)
    row = run(lambda: intermediate.revoke(reason, by=users.acting_user(username) if username else None,
                                          root_key_path=root_key, above=above), as_json)
    state = revocation.current_crl(revocation.ROOT_CRL)
    emit({"serial": row.serial, "subject": row.subject, "sha256": row.sha256, "reason": row.reason,
          "revoked_at": row.revoked_at.isoformat(), "revoked_by": row.revoked_by,
          "root_crl": crl_dict(state, service.ca_config().root_crl_url)}, as_json,
         f"revoked the issuing CA {row.serial} ({row.reason}); root CRL {state.crl_number} lists it, "
         f"next update {state.next_update:%Y-%m-%d}. Recovery is a new CA: see docs/operations.md.")


@cli.command("rotate-route-signer")
@click.option("--json", "as_json", is_flag=True)
def rotate_command(as_json):
    """A new route-signing key and certificate now; the routing table is re-signed with it."""
    rotation = run(lambda: own_keys.rotate("route_signer", actor="cli"), as_json)
    emit_rotation(rotation, as_json, f"new route signer {rotation.certificate.sha256}; nodes pick it up from "
                                     "/ca/route-signer.pem")


@cli.command("rotate-management-certificate")
@click.option("--json", "as_json", is_flag=True)
def rotate_management_command(as_json):
    """A new TLS key and certificate for the management node's health polls now."""
    rotation = run(lambda: own_keys.rotate("management", actor="cli"), as_json)
    emit_rotation(rotation, as_json, f"new management certificate {rotation.certificate.sha256}; health polls "
                                     "present it from their next round")


def emit_rotation(rotation: own_keys.Rotation, as_json: bool, line: str) -> None:
    """The new certificate; and the one replaced, when the rotation recorded it (a database older than the CA
    directory did not know it): its serial is what `flask ca revoke` takes, should its key have leaked."""
    recorded = rotation.recorded
    if recorded is not None:
        line = (f"recorded {recorded.serial}, the {recorded.kind} in use, which the database did not know; "
                f"revoke it with `flask ca revoke {recorded.serial}` if its key may have leaked\n{line}")
    emit({**certificate_dict(rotation.certificate), "recorded": recorded.serial if recorded else None}, as_json,
         line)


@cli.command("renew")
@click.argument("node_id")
@click.option("--csr", "csr_file", type=click.File("rb"), required=True, help="The node's new CSR (PEM or DER).")
@click.option("--user", "username", required=True, help="The console user acting (audited).")
@click.option("--json", "as_json", is_flag=True)
def renew_command(node_id, csr_file, username, as_json):
    """Renew a node's certificate now (an admin may, outside the last third of the validity)."""
    from app.admission import nodes
    from app.pki.csr_policy import MAX_PEM_BYTES, pem_from_file

    data = csr_file.read(MAX_PEM_BYTES + 1)
    row = run(lambda: service.renew(nodes.get(node_id), pem_from_file(data), by=users.acting_user(username)), as_json)
    emit(certificate_dict(row), as_json, f"issued {row.serial} for {node_id}, valid until {row.not_after:%Y-%m-%d}")
