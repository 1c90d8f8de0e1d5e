"""What the reference node's CLI prints for a person (without `--json`): short lines, tab-separated columns for
lists so `cut -f` works, times as UTC with a `Z`. The JSON each command prints with `--json` stays in cli.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from app.appnode.store import Group, Outbox, ReadState, User
from app.appnode.trust_anchor import Rerooted
from app.readable import one_line
from app.routing.client import AcceptResult

Row = TypeVar("Row")

# Why a held routing table stays expired (§5): the management node serves it still, and only its operators can mend it.
# "Expired" is by this machine's clock: one running ahead sees a current table expired
NOT_RESIGNED = "the management node has not re-signed it (or this machine's clock is ahead); ask its operators"


def one_per_line(rows: Iterable[Row], line: Callable[[Row], str], empty: str) -> str:
    """A line per row, or `empty` when there are none: a blank answer reads like a fault."""
    return "\n".join(map(line, rows)) or empty


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def status_lines(document: dict) -> str:
    """`status`, from its JSON: node id, routing table, outbox by state, then any problem, a line each."""
    route_version, states = document["route_version"], document["outbox"]
    lines = [f"node {document['node_id'] or '(not joined)'}",
             f"routing table v{route_version}" + (f" (expired at {document['routes_expires_at']}: {NOT_RESIGNED})"
                                                  if document["routes_expired"] else "")
             if route_version is not None else "no routing table yet",
             "outbox " + (", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "empty")]
    if crl := document.get("crl"):
        lines.append(f"CRL #{crl['number']} of {_minute(crl['this_update'])}, next update "
                     f"{_minute(crl['next_update']) if crl['next_update'] else 'none given'}"
                     + ("" if crl["current"] else " (past: new routing tables are refused until a newer one is "
                                                  "fetched)"))
    if root_crl := document.get("root_crl"):
        lines.append(f"root CRL #{root_crl['number']} of {_minute(root_crl['this_update'])}, next update "
                     f"{_minute(root_crl['next_update']) if root_crl['next_update'] else 'none given'}"
                     + ("" if root_crl["current"] else " (past: an intermediate revoked since may go unnoticed until "
                                                       "a newer one is fetched; new routing tables are still taken)")
                     + (" (lists the intermediate this node trusts as revoked: routing tables signed through it are "
                        "refused)" if root_crl["intermediate_revoked"] else ""))
    elif document["node_id"]:
        lines.append("no root CRL held: an intermediate revoked by the root would go unnoticed; new routing tables "
                     "are still taken")
    lines += [f"problem: {document[key]}" for key in ("registry_problem", "certificate_problem") if document[key]]
    return "\n".join(lines)


def _minute(iso_time: str) -> str:
    """"2026-12-05 22:00 UTC" of an ISO 8601 UTC time, for a line a person reads."""
    return iso_time[:16].replace("T", " ") + " UTC"


def user_line(user: User) -> str:
    """`users list`: user id, name."""
    return f"{user.user_id}\t{user.user_name}"


def group_line(group: Group) -> str:
    """`group list`: address, name, member count."""
    return f"{group.address}\t{group.name}\t{counted(len(group.members), 'member')}"


def group_operation_done(op: str, targets: Iterable[str]) -> str:
    """What an A.12 operation did, in words rather than its op name."""
    listed = ", ".join(targets)
    return {"invite": f"invited {listed}", "kick": f"removed {listed}", "transfer_owner": f"{listed} is now the owner",
            "quit": "left the group", "join": "joined the group", "dismiss": "dismissed the group"}[op]


def group_outcome_line(outcome: str, done: str) -> str:
    """`group invite|kick|transfer|quit|join|dismiss|rename`: `done` once it happened, or why not yet."""
    if outcome == "queued":
        return "queued: the home node is unreachable now and will be asked again"
    if outcome == "queued_behind":
        return "queued behind an earlier request for this group that the home node has not taken yet: sent after it"
    if outcome == "unchanged":
        return "nothing changed"  # inviting members, renaming to the group's own name
    return done if outcome == "applied" else f"{done} (the home node accepted it)"


def conversation_line(row: dict) -> str:
    """`inbox`: conversation id, with whom, unread count, message count."""
    return f"{row['conversation_id']}\t{row['with']}\tunread {row['unread']}\t{counted(row['count'], 'message')}"


# `history`'s last column for a message this node sent that is not (yet) delivered to every node (§6: the sender
# tells its user); none for a delivered message, a received one or one to users of this node only.
UNDELIVERED = {"pending": "not delivered yet: waiting to be sent again",
               "failed": "delivery failed: the node gave up (outbox list --state failed)",
               "partial": "not delivered to every node: some take no such message (outbox list --state skipped)"}


def history_line(row: dict) -> str:
    """`history`: message id (what `download` and a reply to the user need), send time, sender, the text (or a
    sticker's alt text, or a file's kind and name), read count, and its delivery state unless delivered
    (UNDELIVERED). One line per message whatever a peer sent: a text may hold tabs and line breaks (A.4), which
    printed as they are made lines that read as other users' messages, so each column is escaped (`one_line`);
    `--json` has the text as sent."""
    message = row["message"]
    content = message.document["content"]
    shown = (content.get("text") or content.get("alt_text")
             or f"[{message.msg_type}] {content.get('file_name') or content.get('file_id')}")
    columns = [message.message_id, message.document["send_time"], message.sender_address, shown,
               f"read by {len(row['read_by'])}"]
    if row.get("delivery") in UNDELIVERED:
        columns.append(UNDELIVERED[row["delivery"]])
    return "\t".join(map(one_line, columns))


def pull_lines(result: AcceptResult) -> str:
    """`routes pull`: the version installed and a line per change, or that the table is unchanged (and, if it is,
    that it has expired)."""
    if result.expired_at is not None:
        return f"routing table v{result.version} unchanged, and it expired at {result.expired_at}: {NOT_RESIGNED}"
    if result.outcome != "accepted":
        return f"routing table v{result.version} unchanged"
    was = f" (was v{result.previous_version})" if result.previous_version is not None else ""
    return "\n".join([f"routing table v{result.version} installed{was}", *(f"  {change}" for change in result.changes)])


def table_lines(table: dict, expired: bool) -> str:
    """`routes show`: version and expiry, then a line per node (node id, division, endpoint, status)."""
    lines = [f"routing table v{table['version']}, expires {table['expires_at']}" + (" (expired)" if expired else "")]
    lines += [f"{entry['node_id']}\t{entry['division_code']}\t{entry['endpoint']}\t{entry['status']}"
              for entry in table["nodes"]]
    return "\n".join(lines)


def read_line(state: ReadState) -> str:
    """`read`: how far the user has now read the conversation (A.13)."""
    return f"{state.conversation_id} read up to {state.read_up_to_message_id}"


def presence_line(item: dict) -> str:
    """`presence`: the user's new status (A.15)."""
    return f"{item['user_id']} is {item['status']}"


def download_line(path: Path, size: int, sha256: str) -> str:
    """`download`: where the checked file is, and what to check it against."""
    return f"{path}: {counted(size, 'byte')}, sha256 {sha256}"


def outbox_line(row: Outbox) -> str:
    """`outbox list`: id, peer, kind, message id, state, attempts; then, if pending, the next try; then the
    last error on one line (a peer's answer may hold newlines)."""
    fields = [str(row.id), row.peer_node, row.kind, row.message_id, row.state, counted(row.attempts, "attempt")]
    if row.state == "pending":
        fields.append(f"next try {when(row.next_attempt_at)}")
    if row.last_error:
        fields.append(" ".join(row.last_error.split()))
    return "\t".join(fields)


def retry_line(due: int, outcome: dict) -> str:
    """`outbox retry`: how many pending envelopes were made due, and what became of the envelopes tried."""
    return (f"{counted(due, 'pending envelope')} due now: {outcome['delivered']} delivered, "
            f"{outcome['retry']} to retry, {outcome['failed']} failed")


def renewal_line(certificate: x509.Certificate, sha256: str) -> str:
    """`renew`: the certificate now installed, by serial (as the console lists it) and fingerprint."""
    return (f"certificate {format(certificate.serial_number, 'x')} installed, sha256 {sha256}, valid "
            f"{when(certificate.not_valid_before_utc)} to {when(certificate.not_valid_after_utc)}")


# Why the management node put a request off, by its error code, else by the HTTP status (a proxy's answer has no
# code); what it says itself ("try again later") is vaguer than its Retry-After.
PUT_OFF_REASONS = {"ca_unavailable": "the management node's CA cannot answer now"}
PUT_OFF_STATUSES = {429: "too many requests to the management node", 503: "the management node cannot answer now"}


def put_off_line(what: str, code: str, status: int, seconds: int | None) -> str:
    """A request the management node put off (503 or 429 with Retry-After): which, why, and when to try again
    (now, for a date already past; later, when its Retry-After is neither seconds nor a date)."""
    reason = PUT_OFF_REASONS.get(code) or PUT_OFF_STATUSES[status]
    if seconds is None:
        return f"{what}: {reason}; try again later (its Retry-After is neither seconds nor a date)"
    return f"{what}: {reason}; try again {f'in {seconds} s' if seconds else 'now'} (Retry-After)"


def trust_root_lines(rerooted: Rerooted, pulled: AcceptResult | None, pull_error: str | None) -> str:
    """`trust-root`: both roots (fingerprint and subject, to compare with what the management node's operators
    said), what became of the routing table held and of the node's certificate, and the pull after."""
    old = rerooted.old_root
    lines = ["trust anchor replaced (tls/ca.pem); compare the new root's fingerprint with the one the management "
             "node's operators gave you",
             f"  new root: sha256 {rerooted.new_root['sha256']}  {rerooted.new_root['subject']}",
             f"  old root: sha256 {old['sha256']}  {old['subject']}" if old else "  old root: none readable"]
    if rerooted.routes_forgotten:
        lines.append("the routing table held does not verify under the new root: forgotten")
    if rerooted.certificate_problem:
        lines.append(rerooted.certificate_problem)
    lines.append(pull_lines(pulled) if pulled is not None else f"the route pull after it failed: {pull_error}")
    return "\n".join(lines)
