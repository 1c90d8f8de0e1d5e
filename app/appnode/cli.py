"""`python -m app.appnode`: run a reference node, and act as one of its users.

Every command works on one data directory (`--data`, or MPIM_NODE_DATA) and calls the same `Node` methods
as the server. It prints lines for a person (app/appnode/cli_lines.py), and JSON only with `--json`.
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import sys
from pathlib import Path

import click

from app.appnode.cli_lines import (
    conversation_line,
    download_line,
    group_line,
    history_line,
    one_per_line,
    outbox_line,
    presence_line,
    pull_lines,
    read_line,
    renewal_line,
    retry_line,
    status_lines,
    table_lines,
    user_line,
)
from app.appnode.config import NodeConfig
from app.appnode.node import Node, address
from app.appnode.registry import write_atomic, write_private
from app.errors import DomainError


class Context:
    def __init__(self, data: Path, as_json: bool):
        self.data, self.as_json = data, as_json
        self._node: Node | None = None

    @property
    def node(self) -> Node:
        if self._node is None:
            if not (self.data / NodeConfig.FILE).exists():
                raise click.ClickException(f"{self.data} holds no node: run `init` first")
            self._node = Node(self.data)
        return self._node

    def out(self, document, text: str) -> None:
        """`document` as JSON with --json, else `text`, the same answer in lines for a person."""
        click.echo(json.dumps(document, ensure_ascii=False, default=str) if self.as_json else text)


pass_ctx = click.make_pass_decorator(Context)


@click.group()
@click.option("--data", type=click.Path(path_type=Path), envvar="MPIM_NODE_DATA", default=Path("instance/appnode"),
              show_default=True, help="The node's data directory.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def cli(ctx, data: Path, as_json: bool):
    """A reference application node of the MPIM network (GA/T 1988-2022 Appendix A)."""
    ctx.obj = Context(data, as_json)


@cli.command()
@click.option("--registry", required=True, help="The management node, e.g. http://127.0.0.1:5000")
@click.option("--division", required=True, help="GB/T 2260 division code this node serves.")
@click.option("--endpoint", required=True, help="The https URL peers reach this node at.")
@click.option("--listen", default="127.0.0.1:8443", show_default=True)
@click.option("--org-name", default="Reference node")
@click.option("--org-code", default="000000000000")
@click.option("--system-name", default="MPIM reference node")
@click.option("--registry-ca", default=None, help="CA file for an https management node.")
@click.option("--if-missing", is_flag=True, help="Do nothing when the directory already holds a node.")
@pass_ctx
def init(ctx: Context, registry, division, endpoint, listen, org_name, org_code, system_name, registry_ca,
         if_missing):
    """Create the node: configuration, database, private key (0600) and the page's operator password."""
    if if_missing and (ctx.data / NodeConfig.FILE).exists():
        try:
            changes = ctx.node.amend_config(registry_url=registry, division_code=division, endpoint=endpoint,
                                            listen=listen)
        except DomainError as error:
            raise click.ClickException(error.message) from None
        if changes:
            ctx.out({"data": str(ctx.data), "changed": {name: new for name, (_, new) in changes.items()}},
                    f"node in {ctx.data} not applied yet; now " +
                    ", ".join(f"{name} {new} (was {old})" for name, (old, new) in changes.items()))
        return
    config = NodeConfig(registry_url=registry, division_code=division, endpoint=endpoint, listen=listen,
                        org_name=org_name, org_code=org_code, system_name=system_name, registry_ca_file=registry_ca)
    Node.init(ctx.data, config)
    password = secrets.token_urlsafe(12)
    write_private(ctx.data / "ui_password", password.encode())
    ctx.out({"data": str(ctx.data), "ui_user": "operator", "ui_password": password},
            f"node created in {ctx.data}; page login: operator / {password} (shown once)")


@cli.command()
@click.option("--token", required=True, envvar="MPIM_NODE_ENROLL", help="The enrollment token.")
@click.option("--wait", default=3600.0, show_default=True, help="Seconds to wait for the approval.")
@click.option("--if-needed", is_flag=True, help="Do nothing when the node has joined already.")
@pass_ctx
def join(ctx: Context, token, wait, if_needed):
    """Apply with an enrollment token, wait for the approval, fetch the certificate, pull the routes."""
    node = ctx.node
    if node.joined:
        if if_needed:
            return
        raise click.ClickException(f"already joined as {node.node_id}")
    if not node.setting("application_id") or node.setting("enrollment_token") != token:
        application_id = node.apply(token)
        click.echo(f"application {application_id} submitted; waiting for a ministry admin to approve it", err=True)
    node_id = node.await_approval(timeout=wait)
    result = node.sync_routes()
    ctx.out({"node_id": node_id, "route_version": result.version}, f"joined as {node_id}")


@cli.command()
@click.option("--threads", default=8, show_default=True)
@pass_ctx
def run(ctx: Context, threads):
    """Serve the node over HTTPS with mutual TLS, and keep it current."""
    from app.appnode.server import NodeServer

    if not ctx.node.joined:
        raise click.ClickException("join the network first")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    NodeServer(ctx.data, threads=threads).run()


@cli.command()
@pass_ctx
def status(ctx: Context):
    """Node id, routing table and outbox."""
    node = ctx.node
    states: dict[str, int] = {}
    for row in node.outbox():
        states[row.state] = states.get(row.state, 0) + 1
    routes = node.routes if node.identity.ca_file.exists() else None  # none before `join` fetched the CA
    document = {"node_id": node.node_id if node.joined else None,
                "route_version": routes.version if routes else None,
                "routes_expired": routes.expired if routes else False, "outbox": states,
                "certificate_sha256": node.identity.fingerprint() if node.joined else None,
                "certificate_problem": node.setting("certificate_problem") or None,
                "registry_problem": node.setting("registry_problem") or None}
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


as_user = click.option("--as", "user", required=True, help="The local user acting.")


@cli.command()
@as_user
@click.argument("to")
@click.argument("text")
@pass_ctx
def send(ctx: Context, user, to, text):
    """Send a text message to a user address or a group address."""
    message = ctx.node.send_text(user, to, text)
    report_sent(ctx, message, {"conversation_id": message.conversation_id})


def report_sent(ctx: Context, message, document: dict) -> None:
    """The message id, then the nodes it will not reach (§6 capabilities, a refusal): exit 3 if there are any,
    so a script does not take a partial delivery for a full one. A queued envelope is not a failure."""
    undelivered = ctx.node.undelivered(message.message_id)
    ctx.out({"message_id": message.message_id, **document, "undelivered": undelivered}, message.message_id)
    for peer, reason in undelivered.items():
        click.echo(f"not delivered to node {peer}: {reason}", err=True)
    if undelivered:
        sys.exit(3)


@cli.command("send-file")
@as_user
@click.argument("to")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["image", "voice", "file", "sticker"]), default="file")
@click.option("--type", "declared", help="Declared format or MIME type (default: from the name).")
@click.option("--duration-ms", type=int, help="Voice: the duration.")
@click.option("--package", help="Sticker: package id.")
@click.option("--sticker", help="Sticker: sticker id.")
@click.option("--alt", help="Sticker: alt text such as [点赞].")
@pass_ctx
def send_file(ctx: Context, user, to, path: Path, kind, declared, duration_ms, package, sticker, alt):
    """Send an image, voice clip, file or sticker; its bytes are checked and stay here until downloaded."""
    if kind == "voice" and duration_ms is None:
        raise click.UsageError("a voice message needs --duration-ms")
    if kind == "sticker" and not (package and sticker and alt):
        raise click.UsageError("a sticker needs --package, --sticker and --alt")
    extra = {"package_id": package, "sticker_id": sticker, "alt_text": alt} if kind == "sticker" else None
    message = ctx.node.send_file(user, to, path.read_bytes(), kind, file_name=path.name, declared=declared,
                                 duration_ms=duration_ms, sticker=extra)
    # No file_id when a sticker went as its alt text to a node without stickers (§6): say so.
    file_id = message.document["content"].get("file_id")
    if kind == "sticker" and file_id is None and not ctx.as_json:
        click.echo(f"sent as its alt text {alt}: {to.rsplit('@', 1)[-1]} does not take stickers", err=True)
    report_sent(ctx, message, {"file_id": file_id})


@cli.command()
@as_user
@pass_ctx
def inbox(ctx: Context, user):
    """The user's conversations with their unread counts."""
    rows = ctx.node.conversations(user)
    ctx.out([{"conversation_id": r["conversation_id"], "with": r["with"], "unread": r["unread"],
              "count": r["count"], "last_message_id": r["last"].message_id} for r in rows],
            one_per_line(rows, conversation_line, "no conversations"))


@cli.command()
@as_user
@click.argument("conversation_id")
@pass_ctx
def history(ctx: Context, user, conversation_id):
    """The messages of one conversation, with read counts."""
    rows = ctx.node.history(user, conversation_id)
    documents = [{**r["message"].document, "read_by": r["read_by"], "unread_by": r["unread_by"],
                  "delivery": r["delivery"]} for r in rows]
    ctx.out(documents, one_per_line(rows, history_line, "no messages"))


@cli.command()
@as_user
@click.argument("conversation_id")
@pass_ctx
def read(ctx: Context, user, conversation_id):
    """Mark the conversation read (A.13); peers hear it in the next batch."""
    state = ctx.node.mark_read(user, conversation_id)
    ctx.out({"conversation_id": state.conversation_id, "read_up_to_message_id": state.read_up_to_message_id},
            read_line(state))


@cli.command()
@as_user
@click.argument("status", type=click.Choice(["online", "offline", "busy", "away"]))
@pass_ctx
def presence(ctx: Context, user, status):
    """Set the user's presence (A.15)."""
    item = ctx.node.set_presence(user, status)
    ctx.out(item, presence_line(item))


@cli.command()
@as_user
@click.argument("message_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path))
@pass_ctx
def download(ctx: Context, user, message_id, out):
    """Fetch a message's file from its origin node (A.10), checked by checksum and content."""
    stored = ctx.node.download(user, message_id)
    if out:
        shutil.copyfile(ctx.node.file_path(stored), out)  # a chunk at a time: files run to 1 GiB
    path = out or ctx.data / stored.path
    ctx.out({"file_id": stored.file_id, "size": stored.size, "sha256": stored.sha256, "path": str(path)},
            download_line(path, stored.size, stored.sha256))


@cli.group()
def group():
    """Groups (A.12): this node is home of the groups its users create."""


@group.command("create")
@as_user
@click.argument("name")
@click.option("--member", "members", multiple=True, help="A member's address (repeat).")
@click.option("--notice", default="")
@pass_ctx
def group_create(ctx: Context, user, name, members, notice):
    created = ctx.node.create_group(user, name, members, notice)
    ctx.out({"group": created.address, "seq": created.seq}, created.address)


def _group_op(op: str, with_targets: bool):
    @as_user
    @click.argument("group_address")
    @click.argument("targets", nargs=-1, required=with_targets)
    @pass_ctx
    def command(ctx: Context, user, group_address, targets):
        outcome = ctx.node.group_operation(user, group_address, op, targets)
        ctx.out({"op": op, "group": group_address, "outcome": outcome}, f"{op} {OUTCOMES[outcome]}")
    return command


OUTCOMES = {"applied": "applied", "accepted": "accepted by the home node",
            "queued": "queued: the home node is unreachable now and will be asked again"}


group.command("invite", help="Invite users (addresses).")(_group_op("invite", True))
group.command("kick", help="Remove members (owner only).")(_group_op("kick", True))
group.command("transfer", help="Make a member the owner.")(_group_op("transfer_owner", True))
group.command("quit", help="Leave the group.")(_group_op("quit", False))
group.command("join", help="Join an open group.")(_group_op("join", False))
group.command("dismiss", help="Dismiss the group (owner only).")(_group_op("dismiss", False))


@group.command("rename")
@as_user
@click.argument("group_address")
@click.argument("name")
@click.option("--notice")
@pass_ctx
def group_rename(ctx: Context, user, group_address, name, notice):
    info = {"name": name, **({"notice": notice} if notice is not None else {})}
    outcome = ctx.node.group_operation(user, group_address, "update_info", (), info)
    ctx.out({"op": "update_info", "group": group_address, "outcome": outcome}, f"update_info {OUTCOMES[outcome]}")


@group.command("list")
@as_user
@pass_ctx
def group_list(ctx: Context, user):
    rows = ctx.node.groups(user)
    ctx.out([{"group": g.address, "name": g.name, "owner": g.owner, "members": g.members, "seq": g.seq}
             for g in rows], one_per_line(rows, group_line, "no groups"))


@cli.group()
def routes():
    """The routing table this node holds."""


@routes.command("pull")
@pass_ctx
def routes_pull(ctx: Context):
    """Pull the signed routing table now, as the node loop does; a refused table is the command's error."""
    result = ctx.node.sync_routes()
    ctx.out({"outcome": result.outcome, "version": result.version, "changes": list(result.changes)},
            pull_lines(result))


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
@click.option("--state", type=click.Choice(["pending", "delivered", "failed"]))
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
@click.option("--force", is_flag=True, help="Renew even before the last third of the validity.")
@pass_ctx
def renew(ctx: Context, force):
    """Renew the node certificate with a new key (the running server picks it up after a reload)."""
    node = ctx.node
    if not force and not node.renewal_due():
        raise click.ClickException("renewal opens in the last third of the certificate's validity")
    sha256 = node.renew()
    ctx.out({"certificate_sha256": sha256}, renewal_line(node.identity.certificate(), sha256))


@cli.command()
@click.option("--new-key", is_flag=True, help="For a new key, kept as the pending key until its certificate "
              "arrives (a pending key already waiting is reused).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write the CSR here.")
@pass_ctx
def csr(ctx: Context, new_key, out):
    """A CSR to hand to a ministry admin, who renews this node from it in the console (or `flask ca renew`);
    the node installs the certificate from its next route pull."""
    request, key, reused = ctx.node.certificate_request(new_key=new_key)
    key_file = ctx.node.identity.pending_key_file if key == "pending" else ctx.node.identity.key_file
    if reused:
        click.echo(f"reusing the pending key already in {key_file} (made by an earlier `csr --new-key`)", err=True)
    if out:
        write_atomic(out, request.encode("ascii"))
    document = {"csr": request, "key": key, "key_file": str(key_file), "reused": reused,
                "out": str(out) if out else None}
    ctx.out(document, f"CSR for the {key} key written to {out}" if out else request.rstrip("\n"))


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
        sys.exit(2)
