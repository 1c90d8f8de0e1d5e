"""`python -m app.appnode`: run a reference node, and act as one of its users.

Every command works on one data directory (`--data`, or MPIM_NODE_DATA) and calls the same `Node` methods
as the server. It prints lines for a person (app/appnode/cli_lines.py), and JSON only with `--json`, a
refusal included (on stderr, see cli_context.Commands).

This module holds the root group and the node's own commands (init, join, trust-root, run, status, users,
routes, outbox, renew, csr); a user's messaging commands live in app/appnode/cli_messaging.py and are registered here.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path

import click
from click.core import ParameterSource

from app.appnode.caller_limit import DEFAULT_THREADS
from app.appnode.cli_context import NOT_ALL_DONE, Commands, Context, Refused, exit_code, pass_ctx, writing
from app.appnode.cli_lines import (
    one_per_line,
    outbox_line,
    pull_lines,
    renewal_line,
    retry_line,
    status_lines,
    table_lines,
    trust_root_lines,
    user_line,
    when,
)
from app.appnode.cli_messaging import download, group, history, inbox, presence, read, send, send_file
from app.appnode.config import (
    NodeConfig,
    check_division,
    check_endpoint,
    check_listen,
    check_registry_url,
    trust_taken_in_the_clear,
)
from app.appnode.node import Node, NotJoined, address
from app.appnode.registry import write_atomic
from app.cli_arguments import Digits, require_utf8
from app.errors import Conflict, DomainError, NotFound


@click.group(cls=Commands)
@click.option("--data", type=click.Path(path_type=Path), envvar="MPIM_NODE_DATA", default=Path("instance/appnode"),
              show_default=True, help="The node's data directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cli(ctx, data: Path, as_json: bool):
    """A reference application node of the MPIM network (GA/T 1988-2022 Appendix A)."""
    ctx.obj = Context(data, as_json)


cli.add_command(send)
cli.add_command(send_file)
cli.add_command(inbox)
cli.add_command(history)
cli.add_command(read)
cli.add_command(presence)
cli.add_command(download)
cli.add_command(group)


# `init`'s options by the configuration field each sets, where the names differ.
OPTION_OF = {"registry_url": "registry", "division_code": "division", "registry_ca_file": "registry_ca"}


@cli.command()
@click.option("--registry", required=True, help="The management node, e.g. http://127.0.0.1:5000")
@click.option("--division", required=True, help="GB/T 2260 division code this node serves.")
@click.option("--endpoint", required=True, help="The https URL peers reach this node at.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
@click.option("--org-name", default="Reference node")
@click.option("--org-code", default="000000000000")
@click.option("--system-name", default="MPIM reference node")
@click.option("--registry-ca", default=None, help="CA file for an https management node (kept as an absolute path).")
@click.option("--if-missing", is_flag=True, help="Do nothing when the directory already holds a node.")
@pass_ctx
def init(ctx: Context, registry, division, endpoint, listen, org_name, org_code, system_name, registry_ca,
         if_missing):
    """Create the node: configuration, database, private key (0600) and the page's operator password."""
    check_listen(listen, "--listen")  # exit 2, as when the node reads it; before --if-missing changes anything
    check_division(division, "--division")  # here, not first at `join` (the management node's refusal)
    check_endpoint(endpoint, "--endpoint")
    check_registry_url(registry, "--registry")
    if registry_ca:  # the node runs from other directories; abspath, not resolve: a symlink may be repointed
        registry_ca = os.path.abspath(registry_ca)
    if if_missing and (ctx.data / NodeConfig.FILE).exists():
        # Only what is given is compared: a rerun without --listen or --registry-ca (as `make appnode` runs
        # it) put the defaults back over what the first run was given, and the names were not compared at all.
        given = {"registry_url": registry, "division_code": division, "endpoint": endpoint, "listen": listen,
                 "registry_ca_file": registry_ca or None, "org_name": org_name, "org_code": org_code,
                 "system_name": system_name}
        source = click.get_current_context().get_parameter_source
        wanted = {name: value for name, value in given.items()
                  if source(OPTION_OF.get(name, name)) not in (ParameterSource.DEFAULT, None)}
        try:
            changes = ctx.node.amend_config(**wanted)
        except DomainError as error:
            raise Refused(error.message, code=error.code) from None
        if changes:
            ctx.out({"data": str(ctx.data), "changed": {name: new for name, (_, new) in changes.items()}},
                    f"node in {ctx.data} not applied yet; now " +
                    ", ".join(f"{name} {new} (was {old})" for name, (old, new) in changes.items()))
        return
    config = NodeConfig(registry_url=registry, division_code=division, endpoint=endpoint, listen=listen,
                        org_name=org_name, org_code=org_code, system_name=system_name, registry_ca_file=registry_ca)
    password = secrets.token_urlsafe(12)
    Node.init(ctx.data, config, ui_password=password)
    ctx.out({"data": str(ctx.data), "ui_user": "operator", "ui_password": password},
            f"node created in {ctx.data}; page login: operator / {password} (shown once)")


@cli.command()
@click.option("--token", required=True, envvar="MPIM_NODE_ENROLL", help="The enrollment token.")
@click.option("--wait", default=3600, show_default=True, type=Digits(0, 30 * 24 * 3600),
              help="Seconds to wait for the approval (whole seconds, up to 30 days).")
@click.option("--if-needed", is_flag=True, help="Do nothing when the node has joined already.")
@click.option("--again", is_flag=True, help="Enrol a joined node whose certificate no longer serves (revoked, "
              "expired, or not chaining to the root `trust-root` installed) again, keeping its database "
              "(docs/operations.md, \"A node enrolled again\").")
@pass_ctx
def join(ctx: Context, token, wait, if_needed, again):
    """Apply with an enrollment token, wait for the approval, fetch the certificate, pull the routes."""
    node = ctx.node
    former_id = None
    if again:
        if not node.joined:
            raise Refused("this node has not joined yet: run `join` without --again", code="not_joined")
        click.echo(f"{node.check_enrol_again()}: enrolling it again", err=True)
        former_id = node.node_id
    elif node.joined:
        if if_needed:
            return
        raise Refused(f"already joined as {node.node_id}; if its certificate no longer serves (the node revoked, the "
                      "certificate expired, or, after a new root, `trust-root FILE` taken first), get a new enrollment "
                      "token and run `join --again --token TOKEN` (docs/operations.md, \"A node enrolled again\")",
                      code="already_joined")
    if not again and trust_taken_in_the_clear(node.config.registry_url):
        click.echo(f"warning: the management node is reached over plain http ({node.config.registry_url}): the root "
                   "this node trusts from now on is whatever answers there; join over https with --registry-ca, or "
                   "only on a network path you trust (docs/protocol.md §10)", err=True)
    if not node.setting("application_id") or node.setting("enrollment_token") != token:
        application_id = node.apply(token, keep_root=again)
        click.echo(f"application {application_id} submitted; waiting for a ministry admin to approve it", err=True)
    node_id = node.await_approval(timeout=wait, keep_root=again)
    result = node.sync_routes()
    ctx.out({"node_id": node_id, "route_version": result.version}, f"joined as {node_id}")
    if former_id is not None and former_id != node_id:  # `run`'s loop notices it (`Node.notice_joined_again`)
        click.echo(f"a running `run` serves as {node_id} within seconds: it notices the new id and reloads "
                   f"(docs/operations.md, \"A node enrolled again\")", err=ctx.as_json)


@cli.command("trust-root")
@click.argument("root_file", metavar="FILE",
                type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path))
@pass_ctx
def trust_root(ctx: Context, root_file: Path):
    """Replace the node's trust anchor (tls/ca.pem) with the root certificate in FILE, handed over by the management
    node's operators, then pull. Refused, changing nothing, unless FILE holds one self-signed CA certificate and the
    route signer the management node serves chains to it. Restart `run` afterwards."""
    node = ctx.node
    rerooted = node.replace_trust_anchor(root_file.read_bytes(), str(root_file))
    pulled, pull_error = None, None
    try:
        pulled = node.sync_routes()
    except DomainError as error:
        pull_error = f"{error.code}: {error.message}"
    document = {"new_root": rerooted.new_root, "old_root": rerooted.old_root,
                "certificate_chains": rerooted.certificate_problem is None,
                "certificate_problem": rerooted.certificate_problem, "routes_forgotten": rerooted.routes_forgotten,
                "pull": ({"outcome": pulled.outcome, "version": pulled.version, "expired_at": pulled.expired_at}
                         if pulled is not None else None), "pull_error": pull_error}
    ctx.out(document, trust_root_lines(rerooted, pulled, pull_error))
    if rerooted.certificate_problem or pulled is None or pulled.expired_at is not None:
        sys.exit(NOT_ALL_DONE)  # the root is replaced, but the node does not work under it yet


@cli.command()
@click.option("--threads", default=DEFAULT_THREADS, show_default=True, type=Digits(1, 1000))
@pass_ctx
def run(ctx: Context, threads):
    """Serve the node over HTTPS with mutual TLS, and keep it current."""
    from app.appnode.server import NodeServer

    if not ctx.node.joined:
        raise Refused("join the network first", code="not_joined")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    NodeServer(ctx.data, threads=threads).run()


@cli.command()
@pass_ctx
def status(ctx: Context):
    """Node id, routing table and outbox."""
    node = ctx.node
    states = node.outbox_counts()
    try:
        routes = node.routes
    except NotJoined:  # no route client before `join` fetched the CA certificates
        routes = None
    document = {"node_id": node.node_id if node.joined else None,
                "route_version": routes.version if routes else None,
                "routes_expired": routes.expired if routes else False,
                "routes_expires_at": routes.expires_at if routes else None, "outbox": states,
                "certificate_sha256": node.identity.fingerprint() if node.joined else None,
                "certificate_problem": node.setting("certificate_problem") or None,
                "registry_problem": node.setting("registry_problem") or None,
                "crl": node.held_revocation_list() if node.joined else None,
                "root_crl": node.held_root_revocation_list() if node.joined else None}
    ctx.out(document, status_lines(document))


@cli.group()
def users():
    """Local users."""


@users.command("add")
@click.argument("user_id")
@click.argument("user_name")
@click.option("--org-code")
@click.option("--org-name")
@pass_ctx
def users_add(ctx: Context, user_id, user_name, org_code, org_name):
    user = ctx.node.add_user(user_id, user_name, org_code, org_name)
    ctx.out({"user_id": user.user_id, "address": address(user.user_id, ctx.node.node_id)},
            address(user.user_id, ctx.node.node_id))


@users.command("list")
@pass_ctx
def users_list(ctx: Context):
    rows = ctx.node.users()
    ctx.out([{"user_id": u.user_id, "user_name": u.user_name} for u in rows],
            one_per_line(rows, user_line, "no users"))


@cli.group()
def routes():
    """The routing table this node holds."""


@routes.command("pull")
@pass_ctx
def routes_pull(ctx: Context):
    """Pull the signed routing table now, as the node loop does; a refused table is the command's error."""
    result = ctx.node.sync_routes()
    ctx.out({"outcome": result.outcome, "version": result.version, "changes": list(result.changes),
             "expired_at": result.expired_at}, pull_lines(result))
    if result.expired_at is not None:  # the node can look up no peer: not a success, though nothing was refused
        sys.exit(NOT_ALL_DONE)


@routes.command("show")
@pass_ctx
def routes_show(ctx: Context):
    """The routing table this node holds: one line per node (node id, division, endpoint, status)."""
    routes = ctx.node.routes
    table = routes.table
    ctx.out(table, table_lines(table, routes.expired) if table is not None else "no routing table yet")


@cli.group()
def outbox():
    """Envelopes waiting for their peers."""


@outbox.command("list")
@click.option("--state", type=click.Choice(["pending", "delivered", "failed", "skipped"]),
              help="Only envelopes in this state (skipped: a group message a member node does not take, never sent).")
@pass_ctx
def outbox_list(ctx: Context, state):
    """Envelopes, a line each: id, peer, kind, message, state, attempts, the next try and the last error."""
    rows = ctx.node.outbox(state)
    ctx.out([{"id": r.id, "peer": r.peer_node, "kind": r.kind, "message_id": r.message_id, "state": r.state,
              "attempts": r.attempts, "next_attempt_at": r.next_attempt_at, "last_error": r.last_error}
             for r in rows],
            one_per_line(rows, outbox_line, f"no {state} envelopes" if state else "outbox empty"))


@outbox.command("retry")
@pass_ctx
def outbox_retry(ctx: Context):
    """Make every pending envelope due now and try them."""
    due = ctx.node.retry_now()
    outcome = ctx.node.deliver()
    ctx.out({"due": due, **outcome}, retry_line(due, outcome))


@cli.command()
@click.option("--force", is_flag=True, help="Ask even before the last third of the validity (the management node "
              "still refuses a node's own renewal before it, renewal_too_early: outside it, hand `csr` to a "
              "ministry admin).")
@pass_ctx
def renew(ctx: Context, force):
    """Renew the node certificate with a new key (the running server picks it up after a reload)."""
    node = ctx.node
    if not force and not node.renewal_due():  # refused as the management node would, with the same code
        raise Conflict(f"renewal opens at {when(node.renewal_opens())}, in the last third of the certificate's "
                       f"validity", code="renewal_too_early")
    sha256 = node.renew()
    ctx.out({"certificate_sha256": sha256}, renewal_line(node.identity.certificate(), sha256))


@cli.command()
@click.option("--new-key", is_flag=True, help="For a new key, kept as the pending key until its certificate "
              "arrives (a pending key already waiting is reused).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the CSR here.")
@click.option("--overwrite", is_flag=True, help="Write over a file already at --out.")
@pass_ctx
def csr(ctx: Context, new_key, out, overwrite):
    """A CSR to hand to a ministry admin, who renews this node from it in the console (or `flask ca renew`);
    the node installs the certificate from its next route pull."""
    if out:
        with writing(out):  # checked before a pending key is made: a mistyped path
            if not out.parent.is_dir():
                raise NotFound(f"{out.parent} is no directory to write {out.name} into", code="no_directory")
            if out.exists() and not overwrite:  # --out tls/node.key would have replaced the key with its CSR
                raise Conflict(f"{out} exists: csr writes over no file unless given --overwrite", code="file_exists")

    def deliver(request: str) -> None:
        with writing(out):
            write_atomic(out, request.encode("ascii"))

    # written before a new pending key is kept: a path that cannot be written leaves no key for the next run
    request, key, reused = ctx.node.certificate_request(new_key=new_key, deliver=deliver if out else None)
    key_file = ctx.node.identity.pending_key_file if key == "pending" else ctx.node.identity.key_file
    if reused:
        # `renew` makes the pending key too, and keeps it when the management node refuses the renewal
        click.echo(f"reusing the pending key already in {key_file} (made by an earlier `csr --new-key`, or by a "
                   f"`renew` that was refused or did not finish)", err=True)
    document = {"csr": request, "key": key, "key_file": str(key_file), "reused": reused,
                "out": str(out) if out else None}
    ctx.out(document, f"CSR for the {key} key written to {out}" if out else request.rstrip("\n"))


require_utf8(cli)  # every command: its text ends up in the database, a peer's envelope or a terminal


def main() -> None:
    try:
        cli(standalone_mode=False)
    except click.ClickException as error:
        error.show()
        sys.exit(error.exit_code)
    except click.exceptions.Abort:
        sys.exit(1)
    except DomainError as error:
        click.echo(f"error ({error.code}): {error.message}", err=True)
        sys.exit(exit_code(error))
