"""Admitted nodes: ids (SPEC §2), lifecycle (SPEC §3 step 5) and division resolution."""

from __future__ import annotations

import re

from flask import current_app
from flask_babel import lazy_gettext as _l
from sqlalchemy import and_, false, func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from app.admission import hooks, node_changes
from app.admission.models import CAPABILITIES, NODE_STATUSES, Application, Node, NodeSerial
from app.audit import service as audit
from app.auth.access import require_admin, require_division_scope
from app.database import serialise, utcnow
from app.divisions import service as divisions
from app.divisions.codes import NATION_CODE, level_of, prefecture_of, province_of
from app.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from app.extensions import db
from app.labels import status_word
from app.readable import readable_text

APPLICATION_NODE = "202"
MANAGEMENT_NODE = "201"
MAX_SERIAL = 999_999
# (from, to) pairs SPEC §3 allows.
TRANSITIONS = {("active", "suspended"), ("suspended", "active"), ("active", "revoked"), ("suspended", "revoked")}


def format_node_id(division_code: str, node_type: str, serial: int, network_flag: str = "5") -> str:
    """division (6) + unit 00 + industry 00 + type (3) + network flag (1) + serial (6)."""
    return f"{division_code}0000{node_type}{network_flag}{serial:06d}"


def management_node_id() -> str:
    return format_node_id("100000", MANAGEMENT_NODE, 1, current_app.config["MPIM_NETWORK_FLAG"])


def _ensure_serial_row(division_code: str, node_type: str) -> None:
    dialect = db.session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    db.session.execute(insert(NodeSerial).values(division_code=division_code, node_type=node_type, last_serial=0)
                       .on_conflict_do_nothing(index_elements=["division_code", "node_type"]))


def allocate_node_id(division_code: str, node_type: str = APPLICATION_NODE) -> str:
    """Next serial for (division, type) by one atomic UPDATE … RETURNING: concurrent approvals
    queue on the row lock, so no two ever get the same id, and ids are never handed out twice."""
    _ensure_serial_row(division_code, node_type)
    serial = db.session.execute(
        update(NodeSerial)
        .where(NodeSerial.division_code == division_code, NodeSerial.node_type == node_type)
        .values(last_serial=NodeSerial.last_serial + 1)
        .returning(NodeSerial.last_serial)
        .execution_options(synchronize_session=False)
    ).scalar_one()
    if serial > MAX_SERIAL:
        raise Conflict(_l("Division %(code)s has used all node serials.", code=division_code),
                       code="serials_exhausted")
    return format_node_id(division_code, node_type, serial, current_app.config["MPIM_NETWORK_FLAG"])


def keep_node_id_used(node_id: str) -> None:
    """A node id the CA certified though the database lost it (a restore, `pki.recording`): its division's counter
    goes up to its serial, so `allocate_node_id` never hands it out again. Never down."""
    division_code, node_type, serial = node_id[:6], node_id[10:13], int(node_id[14:])
    _ensure_serial_row(division_code, node_type)
    db.session.execute(update(NodeSerial)
                       .where(NodeSerial.division_code == division_code, NodeSerial.node_type == node_type,
                              NodeSerial.last_serial < serial)
                       .values(last_serial=serial).execution_options(synchronize_session=False))


# SPEC §2: twenty ASCII digits. Anything else is no node's, and is not looked up (PostgreSQL refuses a NUL).
NODE_ID = re.compile(r"[0-9]{20}")


def node_filter(typed: str) -> tuple[str, bool]:
    """A list's node filter as typed (blanks around it aside), and whether it is no node id. Kept whole: it was
    cut to 20 characters, and a pasted id one digit too long listed the node it was cut to. One that is no node
    id lists nothing, and the page says so at its box (health events, certificates)."""
    node_id = typed.strip()
    return node_id, bool(node_id) and not NODE_ID.fullmatch(node_id)


def get(node_id: str) -> Node:
    node = db.session.get(Node, node_id) if NODE_ID.fullmatch(node_id or "") else None
    if node is None:
        raise NotFound(_l("No node %(id)s.", id=node_id), code="node_not_found")
    return node


def get_visible(node_id: str, user) -> Node:
    node = get(node_id)
    if not user.can_access_division(node.division_code):
        raise NotFound(_l("No node %(id)s.", id=node_id), code="node_not_found")
    return node


def lock_name(node_id: str) -> str:
    """The name every request that changes a node, or decides about its certificates, queues on."""
    return f"node:{node_id}"


def lock(node: Node, *also: str) -> Node:
    """Queue behind every other request that changes this node (and on `also`, see `serialise`), then
    read it again: its status, a pending change, whatever the caller checks next, is current until
    the caller commits. Without it, a suspension racing a revocation could leave a revoked node
    suspended, and later resumable."""
    serialise(lock_name(node.node_id), *also)
    db.session.refresh(node)
    return node


def _change_status(node: Node, new_status: str, reason: str, *, by, action: str, seen_change: int | None) -> Node:
    """`seen_change`: the change the console's page was loaded after (`node_changes.require_seen`); a form from a
    page older than the node's newest change is refused though the node is back in the state the page showed."""
    if by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    reason = readable_text(reason, "reason", limit=500)
    if not reason:
        raise ValidationFailed(_l("A reason is required."), code="reason_required", field="reason")
    lock(node)
    if node.status == new_status:  # done meanwhile, in another tab or by another admin
        raise Conflict(_l("The node is already %(status)s.", status=status_word(new_status)),
                       code="invalid_transition")
    if (node.status, new_status) not in TRANSITIONS:
        raise Conflict(_l("A %(old)s node cannot become %(new)s.", old=status_word(node.status),
                          new=status_word(new_status)),
                       code="invalid_transition")
    node_changes.require_seen(node.node_id, seen_change)
    old = node.status
    node.status, node.status_reason, node.status_changed_at = new_status, reason, utcnow()
    node.suspension_requested = False
    db.session.flush()
    if new_status == "revoked":
        _close_pending_changes(node, reason, by=by)
    hooks.run(hooks.node_status_changed, node, old, new_status, reason)
    audit.record(action, node.node_id, {"from": old, "to": new_status, "reason": reason}, actor=by.username)
    return node


def _close_pending_changes(node: Node, reason: str, *, by) -> None:
    """A revoked node cannot change: its waiting change request is rejected with it, or it would wait in the queue
    for good, holding its endpoint and key (endpoint_pending, key_pending) against the node that replaces it.
    One conditional UPDATE each, so an admin rejecting it at this moment gives it one verdict."""
    waiting = db.session.scalars(select(Application.id).where(
        Application.node_id == node.node_id, Application.kind == "change", Application.status == "pending")).all()
    text = f"node revoked: {reason}"[:500]
    for application_id in waiting:
        done = db.session.execute(
            update(Application).where(Application.id == application_id, Application.status == "pending")
            .values(status="rejected", reason=text, reviewed_by=by.username, reviewed_at=utcnow())
            .execution_options(synchronize_session=False))
        if done.rowcount == 1:
            audit.record("application.reject", application_id, {"reason": text}, actor=by.username)


def suspend(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    return _change_status(node, "suspended", reason, by=by, action="node.suspend", seen_change=seen_change)


def resume(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    """Active again. The routing table lists it again only if it holds a valid certificate: one that expired or
    was revoked while it was suspended keeps it out (`holds_valid_certificate`), which the console's confirmation,
    its result and the CLI say (`not_back_in_routes`)."""
    return _change_status(node, "active", reason, by=by, action="node.resume", seen_change=seen_change)


def not_back_in_routes(node: Node):
    """What an admin resuming a node without a valid certificate is told, in the console and by the CLI."""
    return _l("%(node)s has no valid certificate (they expired or were revoked): it will not return to the routing "
              "table until it is issued a new one (renew it from a new CSR).", node=node.node_id)


def holds_valid_certificate(node: Node) -> bool:
    """Whether the node holds a certificate valid now (pki's rule): without one the routing table leaves it out
    even when it is active, as `resolve` passes it over."""
    from app.pki import service as pki

    return pki.current_certificate(node.node_id) is not None


def revoke(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    """Final: the node leaves the routing table and its certificates are revoked (pki hook)."""
    return _change_status(node, "revoked", reason, by=by, action="node.revoke", seen_change=seen_change)


def request_suspension(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    """A provincial admin may ask; a ministry admin decides. A ministry admin does not ask
    (PermissionDenied, "ministry_suspends"): its request would wait for the ministry itself. `seen_change` as for
    `suspend`: a request from a page loaded before another was declined would ask without reading the answer."""
    require_admin(by)
    if by.role == "ministry_admin":
        raise PermissionDenied(_l("A ministry admin suspends a node itself; asking for a suspension is for an admin "
                                  "of the node's province."), code="ministry_suspends")
    require_division_scope(by, node.division_code)
    lock(node)
    if node.status != "active":
        raise Conflict(_l("Only an active node can be suspended."), code="invalid_transition")
    if node.suspension_requested:  # the first request stands: a second one replaced its reason and requester
        raise Conflict(_l("%(user)s has already asked for this node's suspension; a ministry admin decides.",
                          user=node.suspension_requested_by), code="suspension_already_requested")
    reason = readable_text(reason, "reason", limit=500)
    if not reason:
        raise ValidationFailed(_l("A reason is required."), code="reason_required", field="reason")
    node_changes.require_seen(node.node_id, seen_change)
    node.suspension_requested, node.suspension_request_reason = True, reason
    node.suspension_requested_by = by.username
    audit.record("node.request_suspension", node.node_id, {"reason": reason}, actor=by.username)
    return node


def _close_suspension_request(node: Node, reason: str, *, by, action: str, seen_change: int | None) -> Node:
    """The request ends without a suspension: the flag clears (the dashboard stops counting it), the audit record
    keeps who asked and why."""
    lock(node)
    if not node.suspension_requested or node.status != "active":
        raise Conflict(_l("No suspension request is waiting for this node."), code="no_suspension_request")
    node_changes.require_seen(node.node_id, seen_change)
    node.suspension_requested = False
    audit.record(action, node.node_id, {"reason": reason, "requested_by": node.suspension_requested_by,
                                        "request_reason": node.suspension_request_reason}, actor=by.username)
    return node


def decline_suspension(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    """The ministry's other answer to a request: the node stays active, and its admins see why on its page.
    `seen_change` as for `suspend`: the request the page showed may have been withdrawn and another made."""
    if by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")
    reason = readable_text(reason, "reason", limit=500)
    if not reason:
        raise ValidationFailed(_l("A reason is required."), code="reason_required", field="reason")
    return _close_suspension_request(node, reason, by=by, action="node.decline_suspension", seen_change=seen_change)


def withdraw_suspension(node: Node, reason: str, *, by, seen_change: int | None = None) -> Node:
    """The requesting province's way out: any provincial admin whose scope covers the node may withdraw (the
    request is the province's, and a colleague cannot file their own while it stands). The reason is optional.
    Not a ministry admin's (PermissionDenied, "province_only"): its answer is `decline_suspension`, whose reason
    the requester sees on the node's page; a withdrawal ended the request with neither."""
    require_admin(by)
    if by.role == "ministry_admin":
        raise PermissionDenied(_l("A ministry admin declines a suspension request, with a reason its requester "
                                  "sees; withdrawing it is for an admin of the node's province."),
                               code="province_only")
    require_division_scope(by, node.division_code)
    reason = readable_text(reason, "reason", limit=500)
    return _close_suspension_request(node, reason, by=by, action="node.withdraw_suspension",
                                     seen_change=seen_change)


def declined_suspension(node: Node):
    """The audit record of the ministry's decline of this node's latest suspension request, if that is how the
    request ended (no newer request, withdrawal or suspension since): what its page shows the requester.
    Read as stored (`node_changes.latest`): a record edited in the database is shown as it is held, not a 500,
    and one whose number was edited is no newer."""
    if node.suspension_requested or node.status != "active":
        return None
    latest = node_changes.latest(node.node_id, ("node.request_suspension", "node.decline_suspension",
                                                "node.withdraw_suspension", "node.suspend"))
    return latest if latest is not None and latest.action == "node.decline_suspension" else None

LEVEL_CANDIDATES = (lambda code: code, prefecture_of, province_of)


def resolve(division_code: str, field: str = "division_code") -> tuple[Node, str]:
    """SPEC §2: the active node for the exact code, else its prefecture, else its province.
    Several active nodes at one level: the earliest admitted (lowest id) serves. A node without a valid
    certificate is passed over: the routing table leaves it out, so nobody could reach it. A malformed or unknown
    code is refused naming `field` (where the caller read it)."""
    from app.pki import service as pki

    if division_code == NATION_CODE:  # a code (the API describes it) but no node's division: admission refuses it
        raise NotFound(_l("The nation (%(code)s) has no node of its own: resolve a province, prefecture or county "
                          "code.", code=NATION_CODE), code="no_serving_node")
    division = divisions.get(division_code, field)
    tried: list[str] = []
    for derive in LEVEL_CANDIDATES:
        code = derive(division.code)
        if code in tried:
            continue
        tried.append(code)
        node = db.session.scalar(select(Node).where(Node.division_code == code, Node.status == "active",
                                                    pki.holds_current_certificate(Node.node_id))
                                 .order_by(Node.node_id).limit(1))
        if node is not None:
            return node, level_of(code)
    raise NotFound(_l("No active node serves %(code)s or the divisions above it.", code=division_code),
                   code="no_serving_node")


def serving(division_code: str, limit: int | None = None) -> tuple[list[Node], int]:
    """Nodes already registered for this exact division, not revoked (the review page shows them): the first
    `limit` by node id; and how many nodes the division has on the nodes list, revoked ones too, as the page's
    link to that list says (counted without them, "all 11" led to 12)."""
    query = select(Node).where(Node.division_code == division_code, Node.status != "revoked")
    shown = list(db.session.scalars(query.order_by(Node.node_id).limit(limit)))
    listed = db.session.scalar(select(func.count()).where(Node.division_code == division_code))
    return shown, listed


# A province as the lists name it: its two-digit prefix (the CLI's --province 36), or that padded with zeros (the
# console's dropdown says 360000, the dashboard's tile map 3600).
PROVINCE = re.compile(r"([0-9]{2})(?:00|0000)?")


def province_prefix(value: str) -> str | None:
    """The prefix `value` names a province by, or None: "360100" names a prefecture, "440000x" nothing."""
    match = PROVINCE.fullmatch(value)
    return match.group(1) if match else None


# What `list_query`'s status filter takes: a node status, or one of the lists the dashboard links to.
LIST_STATES = (*NODE_STATUSES, "suspension_requested", "no_certificate", "retired_division", "down")

SORTS = {"node_id": Node.node_id, "org_name": Node.org_name, "vendor": Node.vendor, "status": Node.status,
         "approved_at": Node.approved_at}


def list_query(user, *, province: str = "", status: str = "", vendor: str = "", capability: str = "",
               q: str = "", sort: str = "node_id", descending: bool = False, division: str = ""):
    """Every filter is compared as given, never cut: a value longer than its column matches nothing, which both
    databases answer without error. A province that names none (`province_prefix`) matches nothing too.
    `division`: the nodes of that exact division code (the review page links its division's)."""
    from app.admission.scope import division_filter

    query = select(Node).where(division_filter(user, Node.division_code))
    if division:
        query = query.where(Node.division_code == division)
    if province:
        prefix = province_prefix(province)
        query = query.where(Node.province_prefix == prefix) if prefix else query.where(false())
    if status == "suspension_requested":  # active nodes a provincial admin asked the ministry to suspend
        query = query.where(Node.status == "active", Node.suspension_requested.is_(True))
    elif status == "no_certificate":  # active, but out of the routing table: no valid certificate
        from app.pki import service as pki

        query = query.where(Node.status == "active", ~pki.holds_current_certificate(Node.node_id))
    elif status == "retired_division":
        query = query.where(on_retired_division())
    elif status == "down":  # active, found down, out of maintenance: the nodes the "nodes are down" banner counts
        from app.health.service import down_now

        query = query.where(Node.status == "active", down_now(Node.node_id))
    elif status:
        query = query.where(Node.status == status)
    if vendor:
        query = query.where(Node.vendor == vendor)
    if capability:
        # JSON arrays differ per database; a LIKE on the serialised list is portable and exact because
        # only known capability names (no quotes, no wildcards) get here: anything else matches nothing.
        if capability not in CAPABILITIES:
            return query.where(false())
        query = query.where(func.cast(Node.capabilities, db.String).like(f'%"{capability}"%'))
    if q:
        # autoescape: a typed % or _ is a character to find, not a LIKE wildcard matching every node.
        query = query.where(or_(Node.node_id.startswith(q, autoescape=True),
                                Node.org_name.contains(q, autoescape=True),
                                Node.system_name.contains(q, autoescape=True)))
    column = SORTS.get(sort, Node.node_id)
    order = column.desc() if descending else column.asc()
    return query.order_by(order, Node.node_id)


def counts_by_status(user=None) -> dict[str, int]:
    from app.admission.scope import division_filter

    query = select(Node.status, func.count()).group_by(Node.status)
    if user is not None:
        query = query.where(division_filter(user, Node.division_code))
    result = {status: 0 for status in ("active", "suspended", "revoked")}
    result.update(dict(db.session.execute(query).all()))
    return result


def suspension_requests_count(user) -> int:
    """Active nodes waiting for a ministry admin's decision on a requested suspension."""
    from app.admission.scope import division_filter

    return db.session.scalar(select(func.count()).select_from(Node).where(
        division_filter(user, Node.division_code), Node.status == "active",
        Node.suspension_requested.is_(True))) or 0


def on_retired_division():
    """A live node registered for a division code a GB/T 2260 revision has retired (the filter "retired_division")."""
    from app.divisions.models import Division

    return and_(Node.status != "revoked",
                Node.division_code.in_(select(Division.code).where(Division.retired.is_(True))))


def nodes_in_retired_divisions(limit: int | None = None) -> list[Node]:
    """The first `limit` of them (all without one): the dashboard names a few and links the paged list."""
    return list(db.session.scalars(select(Node).where(on_retired_division()).order_by(Node.node_id).limit(limit)))


def count_in_retired_divisions() -> int:
    return db.session.scalar(select(func.count()).select_from(Node).where(on_retired_division())) or 0


def retired_codes_in_use(codes: set[str]) -> list[str]:
    """divisions.retirement_checks entry: name every live node whose division is retired."""
    rows = db.session.scalars(select(Node).where(Node.division_code.in_(codes), Node.status != "revoked"))
    return [f"node {n.node_id} ({n.org_name}) is registered for retired code {n.division_code}" for n in rows]
