"""Console words for stored codes: statuses, revocation reasons, capabilities, routing reasons and changes,
audit actions.

The database, the JSON API and the CLI keep the English codes; only the console shows these labels, in the
reader's language. Each function returns its input unchanged for a code it does not know, so a newer code
is still shown rather than refused.
"""

from __future__ import annotations

import re

from flask_babel import lazy_gettext as _l

# Tags and table cells (capitalised in English).
STATUS_LABELS = {
    "pending": _l("Pending"), "approved": _l("Approved"), "rejected": _l("Rejected"),
    "active": _l("Active"), "suspended": _l("Suspended"), "revoked": _l("Revoked"),
    "up": _l("Up"), "down": _l("Down"), "unknown": _l("Unknown"),
}
# The same statuses inside a sentence ("A suspended node cannot ..."): lower case in English.
STATUS_WORDS = {
    "pending": _l("pending"), "approved": _l("approved"), "rejected": _l("rejected"),
    "active": _l("active"), "suspended": _l("suspended"), "revoked": _l("revoked"),
    "up": _l("up"), "down": _l("down"), "unknown": _l("unknown"),
}
# RFC 5280 CRLReason, as app.pki.revocation.REASONS names them.
REVOCATION_REASONS = {
    "unspecified": _l("Unspecified"), "key_compromise": _l("Key compromise"),
    "affiliation_changed": _l("Affiliation changed"), "superseded": _l("Superseded"),
    "cessation_of_operation": _l("Cessation of operation"), "certificate_hold": _l("Certificate hold"),
    "privilege_withdrawn": _l("Privilege withdrawn"),
}
CAPABILITIES = {
    "text": _l("Text"), "image": _l("Image"), "voice": _l("Voice"), "file": _l("File"),
    "download": _l("Download"), "single_chat": _l("Single chat"), "group": _l("Group"),
    "read_count": _l("Read count"), "sticker": _l("Sticker"), "presence": _l("Presence"),
}
# Why a routing table version was published (the `reason` given to app.routing.service.publish).
ROUTE_REASONS = {
    "node admitted": _l("Node admitted"), "node status": _l("Node status changed"),
    "node changed": _l("Node details changed"), "health round": _l("Health check"),
    "certificate changed": _l("Certificate changed"), "certificate revoked": _l("Certificate revoked"),
    "route signer rotated": _l("Route signer rotated"), "certificate expired": _l("Certificate expired"),
    "re-sign": _l("Scheduled re-signing"), "cli": _l("Command line"),
}
# The fields app.routing.document.describe_changes names, and its two whole-table lines.
ROUTE_FIELDS = {
    "division": _l("division"), "organisation": _l("organisation"), "system name": _l("system name"),
    "endpoint": _l("endpoint"), "certificate": _l("certificate"), "capabilities": _l("capabilities"),
}
ROUTE_TABLE_LINES = {"first table": _l("first table"), "re-signed": _l("re-signed")}
# app.health.poller.FailureReason values.
HEALTH_FAILURES = {
    "timeout": _l("timed out"), "refused": _l("connection refused"), "tls": _l("TLS handshake failed"),
    "certificate_mismatch": _l("certificate mismatch"), "certificate_revoked": _l("certificate revoked"),
    "http_status": _l("unexpected HTTP status"),
    "bad_body": _l("unreadable answer"), "wrong_node": _l("another node answered"), "error": _l("error"),
}
# app.health.service.ADMIN_RESETS: why an admin's action set a node's health back to unknown.
HEALTH_RESETS = {
    "node_suspended": _l("node suspended"), "node_resumed": _l("node resumed"), "node_revoked": _l("node revoked"),
    "endpoint_changed": _l("endpoint changed"),
}
# Every action app.audit.service.record is called with (tests/test_audit.py finds them all in the code).
AUDIT_ACTIONS = {
    "auth.login": _l("Signed in"), "auth.login_failed": _l("Sign-in failed"),
    "auth.login_blocked": _l("Sign-in refused (locked)"), "auth.logout": _l("Signed out"),
    "auth.timeout": _l("Signed out (time limit)"), "auth.session_end": _l("Sign-in sessions ended"),
    "auth.unlock": _l("Account unlocked"), "auth.unlock_addresses": _l("Address locks cleared"),
    "user.create": _l("User created"), "user.update": _l("User changed"),
    "user.password_reset": _l("Password reset"), "user.password_change": _l("Own password changed"),
    "auth.password_change_failed": _l("Password change refused (wrong current password)"),
    "auth.password_change_blocked": _l("Password change refused (locked)"),
    "token.create": _l("Enrollment token issued"), "token.revoke": _l("Enrollment token revoked"),
    "application.submit": _l("Application submitted"), "application.submit_change": _l("Change request submitted"),
    "application.approve": _l("Application approved"), "application.approve_change": _l("Change request approved"),
    "application.reject": _l("Application rejected"),
    "node.suspend": _l("Node suspended"), "node.resume": _l("Node resumed"), "node.revoke": _l("Node revoked"),
    "node.request_suspension": _l("Suspension requested"),
    "node.decline_suspension": _l("Suspension request declined"),
    "node.withdraw_suspension": _l("Suspension request withdrawn"),
    "certificate.issue": _l("Certificate issued"), "certificate.revoke": _l("Certificate revoked"),
    "certificate.record": _l("Certificate put on record (issued earlier, unknown to the database)"),
    "routes.publish": _l("Routing table published"),
    "health.maintenance": _l("Maintenance started"), "health.maintenance_end": _l("Maintenance ended"),
    "divisions.import": _l("Division codes imported"),
    "ca.init": _l("CA created"), "ca.root_offline": _l("Root key taken offline"),
    "ca.root_crl": _l("Root CRL signed"), "ca.crl": _l("CRL signed"),
    "ca.revoke_intermediate": _l("Issuing CA (intermediate) revoked"),
    "audit.export": _l("Audit log exported"),
    "database.backup": _l("Database backed up"),
    "database.restore": _l("Database restored from a backup"),
}
# The details app.health.poller writes itself (kept in English in the database and the API); a library's
# error text (connection, TLS) has no translation and is shown as it is.
HEALTH_DETAILS = [
    (re.compile(r"^no answer within (?P<seconds>\S+) s$"), _l("no answer within %(seconds)s s")),
    (re.compile(r"^the server certificate does not name this node$"),
     _l("the server certificate does not name this node")),
    (re.compile(r"^the server certificate is revoked$"), _l("the server certificate is revoked")),
    (re.compile(r"^the answer is not a JSON object$"), _l("the answer is not a JSON object")),
    (re.compile(r"^the answer is longer than 64 KiB$"), _l("the answer is longer than 64 KiB")),
    (re.compile(r"^version is not 1 to 64 characters$"), _l("version is not 1 to 64 characters")),
    (re.compile(r"^time is not a UTC timestamp$"), _l("time is not a UTC timestamp")),
    (re.compile(r"^the server certificate could not be read$"), _l("the server certificate could not be read")),
    (re.compile(r"^the server certificate is not valid yet$"), _l("the server certificate is not valid yet")),
    (re.compile(r"^the server certificate has expired$"), _l("the server certificate has expired")),
    (re.compile(r"^the server certificate is not valid for this host$"),
     _l("the server certificate is not valid for this host")),
    (re.compile(r"^the server certificate does not chain to the CA$"),
     _l("the server certificate does not chain to the CA")),
    (re.compile(r"^the server certificate was refused: (?P<reason>.+)$", re.S),
     _l("the server certificate was refused: %(reason)s")),
    (re.compile(r"^the TLS handshake failed: (?P<reason>.+)$", re.S), _l("the TLS handshake failed: %(reason)s")),
    (re.compile(r"^the answer is not valid HTTP$"), _l("the answer is not valid HTTP")),
    (re.compile(r"^the node closed the connection during the TLS handshake$"),
     _l("the node closed the connection during the TLS handshake")),
    (re.compile(r"^the host name (?P<host>\S+) does not resolve$"), _l("the host name %(host)s does not resolve")),
    (re.compile(r"^Connection refused$"), _l("the connection was refused")),
    (re.compile(r"^Network is unreachable$"), _l("the network is unreachable")),
    (re.compile(r"^No route to host$"), _l("there is no route to the host")),
    (re.compile(r"^Connection reset by peer$"), _l("the node reset the connection")),
    (re.compile(r"^the node closed the connection without answering$"),
     _l("the node closed the connection without answering")),
    (re.compile(r"^status is (?P<status>.+)$", re.S), _l("status is %(status)s")),
    (re.compile(r"^answered as (?P<node>.+)$", re.S), _l("answered as %(node)s")),
    (re.compile(r"^the answer is not strict JSON: (?P<reason>.+)$", re.S),
     _l("the answer is not strict JSON: %(reason)s")),
]
# The (failure, detail) pairs of app.health.poller whose detail says no more than the failure's label.
REPEATED_DETAILS = {("refused", "Connection refused"), ("certificate_revoked", "the server certificate is revoked")}
# The reasons app.strict_json gives that a health detail quotes; any other is shown as it is.
STRICT_JSON_REASONS = [
    (re.compile(r"^the key (?P<key>.+) appears twice in one object$", re.S), _l("the key %(key)s appears twice")),
    (re.compile(r"^the body is not JSON \((?P<name>-?NaN|-?Infinity) is no JSON value, RFC 8259 §6\)$"),
     _l("%(name)s is no JSON value (RFC 8259 §6)")),
    (re.compile(r"^the body is not JSON \((?P<number>\S+) is beyond the range of a number, RFC 8259 §6\)$"),
     _l("%(number)s is beyond the range of a number (RFC 8259 §6)")),
    (re.compile(r"^the body must be UTF-8 without a byte-order mark \(RFC 8259 §8\.1\)"),
     _l("it is not UTF-8 without a byte-order mark (RFC 8259 §8.1)")),
    (re.compile(r"^the body is not JSON \(a number has more digits than the parser converts\)$"),
     _l("a number has more digits than the parser converts")),
]

_CHANGE = re.compile(r"^(?P<node>\S+) (?:(?P<verb>added|removed)|status (?P<old>\S+)→(?P<new>\S+)|"
                     r"(?P<field>.+) changed)$")


def status_label(code: str | None):
    """A node, application or health status as a tag or table cell: `{{ node.status|status_label }}`."""
    return STATUS_LABELS.get(code, code)


def status_word(code: str | None):
    """A status inside a sentence: `_("... %(status)s ...", status=status_word(node.status))`."""
    return STATUS_WORDS.get(code, code)


def revocation_reason_label(code: str | None):
    """An RFC 5280 revocation reason: `{{ row.revocation_reason|revocation_reason_label }}`."""
    return REVOCATION_REASONS.get(code, code)


def capability_label(code: str):
    return CAPABILITIES.get(code, code)


def audit_action_label(action: str):
    """An audit record's action in words (`node.suspend` → "Node suspended"); the code itself stays what
    the audit log's filter and the CLI take."""
    return AUDIT_ACTIONS.get(action, action)


def route_reason_label(reason: str):
    return ROUTE_REASONS.get(reason, reason)


def health_failure_label(code: str | None):
    return HEALTH_FAILURES.get(code, code)


def health_event_reason_label(code: str | None):
    """A health event's reason: the poll failure that took the node down, or the admin's action that reset it."""
    return HEALTH_RESETS.get(code) or health_failure_label(code)


def health_detail_label(detail: str | None, failure: str | None = None) -> str:
    """A health poll's detail in the reader's language when the poller wrote it (`no answer within 5 s`); empty
    where it only repeats its `failure`'s label ("connection refused: the connection was refused")."""
    if (failure, detail) in REPEATED_DETAILS:
        return ""
    return _translated(detail or "", HEALTH_DETAILS)


def _translated(text: str, table) -> str:
    for pattern, words in table:
        match = pattern.match(text)
        if match:
            values = match.groupdict()
            if "reason" in values:
                values["reason"] = _translated(values["reason"], STRICT_JSON_REASONS)
            return str(words) % values if values else str(words)
    return text


def route_change_label(line: str) -> str:
    """One describe_changes line (`<node> added`, `<node> status up→down`, `<node> endpoint changed`) in words."""
    if line in ROUTE_TABLE_LINES:
        return str(ROUTE_TABLE_LINES[line])
    match = _CHANGE.match(line)
    if match is None or (match["field"] and match["field"] not in ROUTE_FIELDS):
        return line
    node = match["node"]
    if match["verb"] == "added":
        return str(_l("%(node)s added", node=node))
    if match["verb"] == "removed":
        return str(_l("%(node)s removed", node=node))
    if match["field"]:
        return str(_l("%(node)s %(field)s changed", node=node, field=ROUTE_FIELDS[match["field"]]))
    return str(_l("%(node)s status %(old)s→%(new)s", node=node, old=status_label(match["old"]),
                  new=status_label(match["new"])))


FILTERS = {
    "status_label": status_label,
    "revocation_reason_label": revocation_reason_label,
    "capability_label": capability_label,
    "route_reason_label": route_reason_label,
    "route_change_label": route_change_label,
    "health_failure_label": health_failure_label,
    "health_event_reason_label": health_event_reason_label,
    "audit_action_label": audit_action_label,
    "health_detail_label": health_detail_label,
}


def init_app(app) -> None:
    app.jinja_env.filters.update(FILTERS)
