"""`python -m app.appnode` commands a local user acts with: send text and files, read the inbox and a
conversation's history, mark it read, set presence, download a file, and the `group` commands (A.12).

cli.py registers them on the root group.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.appnode.cli_context import NOT_ALL_DONE, Context, ended_cleanly, pass_ctx, writing
from app.appnode.cli_lines import (
    conversation_line,
    download_line,
    group_line,
    group_operation_done,
    group_outcome_line,
    history_line,
    one_per_line,
    presence_line,
    read_line,
)
from app.appnode.reading import CONVERSATION_PAGE, HISTORY_PAGE, MAX_CONVERSATION_PAGE, MAX_HISTORY_PAGE
from app.cli_arguments import Digits

as_user = click.option("--as", "user", required=True, help="The local user acting.")


@click.command()
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
    so a script does not take a partial delivery for a full one. A queued envelope is not a failure, unless this
    node's own certificate has a problem (revoked, for one: a peer refuses a node its routing table left out): then
    the envelopes still queued are said, with the problem, and exit 3 too. They stay queued for a renewal to mend."""
    undelivered = ctx.node.undelivered(message.message_id)
    problem = ctx.node.setting("certificate_problem") or None
    stuck = ctx.node.waiting(message.message_id) if problem else []
    ctx.out({"message_id": message.message_id, **document, "undelivered": undelivered,
             "certificate_problem": problem, "queued_behind_problem": stuck}, message.message_id)
    for peer, reason in undelivered.items():
        click.echo(f"not delivered to node {peer}: {reason}", err=True)
    for peer in stuck:
        click.echo(f"queued for node {peer}, which refuses it until this node's certificate is mended: {problem}",
                   err=True)
    if undelivered or stuck:
        sys.exit(NOT_ALL_DONE)


@click.command("send-file")
@as_user
@click.argument("to")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--kind", type=click.Choice(["image", "voice", "file", "sticker"]), default="file")
@click.option("--type", "declared", help="Declared format or MIME type (default: from the name).")
@click.option("--duration-ms", type=Digits(), help="Voice: the duration, if known; the recording's own is sent, and "
                                                   "one further than 1,000 ms or 10 % from it is refused.")
@click.option("--package", help="Sticker: package id.")
@click.option("--sticker", help="Sticker: sticker id.")
@click.option("--alt", help="Sticker: alt text such as [点赞].")
@click.option("--name", help="The file name the message announces (default: PATH's own), e.g. for a file whose "
                             "own name a message may not carry.")
@pass_ctx
@ended_cleanly()
def send_file(ctx: Context, user, to, path: Path, kind, declared, duration_ms, package, sticker, alt, name):
    """Send an image, voice clip, file or sticker; its bytes are checked and stay here until downloaded."""
    if kind == "sticker" and not (package and sticker and alt):
        raise click.UsageError("a sticker needs --package, --sticker and --alt")
    if name == "":
        raise click.UsageError("--name needs a name")
    extra = {"package_id": package, "sticker_id": sticker, "alt_text": alt} if kind == "sticker" else None
    data = ctx.node.file_to_send(path, kind)
    message = ctx.node.send_file(user, to, data, kind, file_name=path.name if name is None else name, declared=declared,
                                 duration_ms=duration_ms, sticker=extra)
    # No file_id when a sticker went as its alt text to a node without stickers (§6): say so.
    file_id = message.document["content"].get("file_id")
    if kind == "sticker" and file_id is None and not ctx.as_json:
        click.echo(f"sent as its alt text {alt}: {to.rsplit('@', 1)[-1]} does not take stickers", err=True)
    report_sent(ctx, message, {"file_id": file_id})


@click.command()
@as_user
@click.option("--limit", type=Digits(1, MAX_CONVERSATION_PAGE), default=CONVERSATION_PAGE, show_default=True,
              help="How many conversations: those with the newest messages, or the newest before --before.")
@click.option("--before", metavar="MESSAGE_ID",
              help="Only conversations whose last message is older than this one (what the hint names).")
@pass_ctx
def inbox(ctx: Context, user, limit, before):
    """The user's conversations, newest first, a line each: conversation id, with whom, unread count, message
    count. When there are older ones, stderr says which --before reads them (with --json, a page shorter than
    --limit is the last, and the next is --before the last one's last_message_id)."""
    rows, older = ctx.node.conversations_page(user, limit=limit, before=before)
    ctx.out([{"conversation_id": r["conversation_id"], "with": r["with"], "unread": r["unread"],
              "count": r["count"], "last_message_id": r["last"].message_id} for r in rows],
            one_per_line(rows, conversation_line, "no older conversations" if before else "no conversations"))
    if older and not ctx.as_json:
        click.echo(f"older conversations: inbox --before {older}", err=True)


@click.command()
@as_user
@click.argument("conversation_id")
@click.option("--limit", type=click.IntRange(1, MAX_HISTORY_PAGE), default=HISTORY_PAGE, show_default=True,
              help="How many messages: the newest ones, or the newest before --before.")
@click.option("--before", metavar="MESSAGE_ID", help="Only messages older than this one (its id, the first column).")
@pass_ctx
def history(ctx: Context, user, conversation_id, limit, before):
    """The newest messages of one conversation, oldest first, a line each: message id (what `download` takes),
    send time, sender, text or file, read count, and for a message sent from here that is not delivered yet, was
    given up or skipped by a node, that delivery state (--json: "delivery"). When there are older ones, stderr
    says which --before reads them (with --json, a page shorter than --limit is the last)."""
    rows, older = ctx.node.history_page(user, conversation_id, limit=limit, before=before)
    documents = [{**r["message"].document, "read_by": r["read_by"], "unread_by": r["unread_by"],
                  "delivery": r["delivery"]} for r in rows]
    ctx.out(documents, one_per_line(rows, history_line, "no older messages" if before else "no messages"))
    if older and not ctx.as_json:
        click.echo(f"older messages: history --before {older}", err=True)


@click.command()
@as_user
@click.argument("conversation_id")
@pass_ctx
def read(ctx: Context, user, conversation_id):
    """Mark the conversation read (A.13); peers hear it in the next batch."""
    state = ctx.node.mark_read(user, conversation_id)
    ctx.out({"conversation_id": state.conversation_id, "read_up_to_message_id": state.read_up_to_message_id},
            read_line(state))


@click.command()
@as_user
@click.argument("status", type=click.Choice(["online", "offline", "busy", "away"]))
@pass_ctx
def presence(ctx: Context, user, status):
    """Set the user's presence (A.15)."""
    item = ctx.node.set_presence(user, status)
    ctx.out(item, presence_line(item))


@click.command()
@as_user
@click.argument("message_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Also copy the file here.")
@click.option("--overwrite", is_flag=True, help="Write over a file already at --out.")
@pass_ctx
@ended_cleanly()
def download(ctx: Context, user, message_id, out, overwrite):
    """Fetch a message's file from its origin node (A.10), checked by checksum and content. MESSAGE_ID is the
    message's id (the first column of `history`), not its file id."""
    stored = ctx.node.download(user, message_id)
    if out:
        with writing(out):
            ctx.node.copy_file_to(stored, out, overwrite=overwrite)
    path = out or ctx.data / stored.path
    ctx.out({"file_id": stored.file_id, "size": stored.size, "sha256": stored.sha256, "path": str(path)},
            download_line(path, stored.size, stored.sha256))


@click.group()
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
    @pass_ctx
    def command(ctx: Context, user, group_address, targets=()):
        outcome = ctx.node.group_operation(user, group_address, op, targets)
        report_group_operation(ctx, op, group_address, outcome, group_operation_done(op, targets))

    # quit, join and dismiss name no users: an address after the group's was taken and dropped, so
    # `group quit --as lisi GROUP zhangsan@...` read as removing zhangsan and made lisi leave.
    if with_targets:
        command = click.argument("targets", nargs=-1, required=True)(command)
    return as_user(click.argument("group_address")(command))


# Whether the group changed: known when this node is home; a home node elsewhere acknowledges a request
# without saying (A.12), so None for "accepted" and "queued".
CHANGED = {"applied": True, "unchanged": False}


def report_group_operation(ctx: Context, op: str, group_address: str, outcome: str, done: str) -> None:
    # "unchanged" keeps outcome "applied" in JSON, as it always was, and "queued_behind" is "queued" there (it
    # waits to be sent, as any queued request does): scripts compare with the values they know, and read
    # `changed` for whether the operation did anything
    shown = {"unchanged": "applied", "queued_behind": "queued"}.get(outcome, outcome)
    ctx.out({"op": op, "group": group_address, "outcome": shown, "changed": CHANGED.get(outcome)},
            group_outcome_line(outcome, done))


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
    done = f"renamed {name}" + (", notice set" if notice is not None else "")
    report_group_operation(ctx, "update_info", group_address, outcome, done)


@group.command("list")
@as_user
@pass_ctx
def group_list(ctx: Context, user):
    rows = ctx.node.groups(user)
    ctx.out([{"group": g.address, "name": g.name, "owner": g.owner, "members": g.members, "seq": g.seq}
             for g in rows], one_per_line(rows, group_line, "no groups"))
