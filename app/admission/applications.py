"""Applications (SPEC §3 steps 2-4): submit, review, approve, reject.

`approve()` is the one rule the console button, the API and `flask applications approve` share.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace

from flask_babel import lazy_gettext as _l
from sqlalchemy import func, select

from app.admission import hooks, information, nodes, tokens, uniqueness
from app.admission.information import NodeInformation, endpoint_host
from app.admission.models import Application, EnrollmentToken, Node
from app.audit import service as audit
from app.auth.access import require_admin, require_division_scope
from app.auth.models import division_prefix
from app.database import serialise, utcnow
from app.divisions import service as divisions
from app.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from app.extensions import db
from app.labels import status_word
from app.readable import readable_text


def inspect_csr(pem: str | None) -> dict:
    """Parse the CSR and apply the CA's key policy; returns what the review page shows."""
    from app.pki import csr_policy

    return csr_policy.describe_csr(information.checked_csr(csr_policy.pem_block_of(pem)))


def _new_application(info: NodeInformation, csr_pem: str | None, **fields) -> Application:
    application = Application(
        id=uuid.uuid4().hex, division_code=info.division_code, org_name=info.org_name,
        system_name=info.system_name, vendor=info.vendor, endpoint=info.endpoint,
        contact_name=info.contact_name, contact_phone=info.contact_phone, contact_email=info.contact_email,
        capabilities=list(info.capabilities), csr_pem=csr_pem or None, **fields,
    )
    db.session.add(application)
    return application


def submit_with_token(raw_token: str | None, document: dict) -> Application:
    """API door: the token is checked first; it fixes the division the node may claim (its own or below).

    A used token sending the request that used it again, over the same key (`replayed`), is answered with the
    application it admitted, also when it was sent while that request was still being stored."""
    token = tokens.find_by_raw(raw_token)
    application = replayed(token, document)
    if application is not None:
        return application
    tokens.require_usable(token)

    def admits(division_code: str) -> None:
        if not division_code.startswith(division_prefix(token.division_code)):
            # A county's token has no divisions below its own to name.
            message = (_l("This token admits nodes in %(code)s only.", code=token.division_code)
                       if division_prefix(token.division_code) == token.division_code else
                       _l("This token admits nodes in %(code)s and the divisions below it only.",
                          code=token.division_code))
            raise PermissionDenied(message, code="out_of_scope", field="division_code")

    submission = information.check_submission(document, admits=admits)
    info, key_sha256 = submission.info, submission.key_sha256
    uniqueness.hold(key_sha256=key_sha256, endpoint=info.endpoint)
    # Read again under the lock: a retry sent while the request it repeats was in flight read the token unused and
    # queued here behind it; that request has committed now, and its application holds this key (key_pending).
    db.session.refresh(token)
    if token.state() == "used":
        application = replayed(token, document)
        if application is not None:
            return application
        tokens.require_usable(token)  # token_used
    uniqueness.require_key_free(key_sha256)
    uniqueness.require_endpoint_free(info.endpoint)
    tokens.consume(token)  # last: only an accepted application uses the token up
    application = _new_application(info, submission.csr_pem, token_id=token.id, key_sha256=key_sha256)
    db.session.flush()
    audit.record("application.submit", application.id,
                 {"division": info.division_code, "endpoint": info.endpoint, "token": token.prefix},
                 actor=f"token:{token.prefix}")
    return application


def replayed(token: EnrollmentToken, document: dict) -> Application | None:
    """SPEC §4: the application `token` admitted, when `document`'s CSR is over that application's key.

    A node whose 201 was lost retries the same request; refused as token_used, it could never learn the id
    (only its token reads the application) while that application held its key and endpoint. The token proves
    the holder and the CSR's self-signature the key, so the stored application is the answer, whatever the
    other fields say now. Nothing is stored or recorded: the application is as it was."""
    from app.pki import service as pki

    if token.state() != "used" or not isinstance(document, dict) or not isinstance(document.get("csr"), str):
        return None
    application = db.session.scalar(select(Application).where(Application.token_id == token.id))
    if application is None:
        return None
    try:
        key_sha256 = pki.key_fingerprint(information.checked_csr(document["csr"]).public_key())
    except ValidationFailed:  # no CSR the policy takes: nothing proves the key
        return None
    return application if key_sha256 == application.key_sha256 else None


def submit_by_user(document: dict, *, by, names: Mapping[str, str] | None = None,
                   read_csr: Callable[[], object] | None = None) -> Application:
    """Console door: a provincial (or ministry) admin applies inside its own scope. `names` and `read_csr`: as
    `check_submission` takes them from a console form."""
    require_admin(by)
    submission = information.check_submission(document, names=names, read_csr=read_csr)
    info, key_sha256 = submission.info, submission.key_sha256
    require_division_scope(by, info.division_code)
    uniqueness.hold(key_sha256=key_sha256, endpoint=info.endpoint)
    uniqueness.require_key_free(key_sha256, by=by)
    uniqueness.require_endpoint_free(info.endpoint, by=by)
    application = _new_application(info, submission.csr_pem, submitted_by_id=by.id, key_sha256=key_sha256)
    db.session.flush()
    audit.record("application.submit", application.id,
                 {"division": info.division_code, "endpoint": info.endpoint}, actor=by.username)
    return application


def submit_change(node: Node, document: dict, *, by, names: Mapping[str, str] | None = None,
                  read_csr: Callable[[], object] | None = None) -> Application:
    """Endpoint, contact and other A.1 changes go through the same review as an admission.

    One change request per node waits at a time, and it must change something: a request is the
    node's full A.1 information, so a second one written from the same form would undo the first."""
    require_admin(by)
    require_division_scope(by, node.division_code)
    submission = information.check_submission(document, new=False, names=names, read_csr=read_csr)
    csr_pem, key_sha256 = submission.csr_pem, submission.key_sha256
    nodes.lock(node, *uniqueness.lock_names(key_sha256, submission.info.endpoint))
    if node.status == "revoked":
        raise Conflict(_l("A revoked node cannot change."), code="node_revoked")
    pending = pending_change(node)
    if pending is not None:
        raise Conflict(_l("Change request %(id)s for this node is already waiting for review: a ministry admin "
                          "must approve or reject it first.", id=pending.id), code="change_pending")
    info = replace(submission.info, division_code=node.division_code)
    if not csr_pem and not _differences(node, lambda name: _requested(info, name)):
        raise ValidationFailed(NO_CHANGE, code="no_change")
    if info.endpoint != node.endpoint:
        uniqueness.require_endpoint_free(info.endpoint, node.node_id, by=by)
    elif csr_pem:  # a new certificate, naming the endpoint's host: not the management node's
        uniqueness.require_not_the_management_host(info.endpoint)
    if endpoint_host(info.endpoint) != endpoint_host(node.endpoint) and not csr_pem:
        raise ValidationFailed(_l("A new endpoint host needs a new CSR: the certificate names the host."),
                               code="missing_csr", field="csr")
    uniqueness.require_key_free(key_sha256, node.node_id, by=by)
    application = _new_application(info, csr_pem, kind="change", node_id=node.node_id, submitted_by_id=by.id,
                                   key_sha256=key_sha256)
    db.session.flush()
    audit.record("application.submit_change", application.id, {"node": node.node_id, "endpoint": info.endpoint},
                 actor=by.username)
    return application


def pending_change(node: Node) -> Application | None:
    return db.session.scalar(select(Application).where(
        Application.node_id == node.node_id, Application.kind == "change", Application.status == "pending")
        .order_by(Application.created_at).limit(1))


# What `uuid4().hex` gives; anything else is no application's, and is not looked up (PostgreSQL refuses a NUL).
APPLICATION_ID = re.compile(r"[0-9a-f]{32}")


def _find(application_id: str) -> Application | None:
    return db.session.get(Application, application_id) if APPLICATION_ID.fullmatch(application_id) else None


def get(application_id: str) -> Application:
    application = _find(application_id)
    if application is None:
        raise NotFound(_l("No application %(id)s.", id=application_id), code="application_not_found")
    return application


def get_visible(application_id: str, user) -> Application:
    """The application, if `user` may see it: a provincial admin's outside its divisions is no application of
    theirs (not found, as a node outside them is: `nodes.get_visible`)."""
    application = get(application_id)
    if not user.can_access_division(application.division_code):
        raise NotFound(_l("No application %(id)s.", id=application_id), code="application_not_found")
    return application


def get_for_token(application_id: str, raw_token: str | None) -> Application:
    """Only the holder of the token that submitted an application may read its status."""
    token = tokens.find_by_raw(raw_token)
    application = _find(application_id)
    if application is None or application.token_id != token.id:
        raise NotFound("No application with this id for this token.", code="application_not_found")
    return application


def _require_ministry(by) -> None:
    if by.role != "ministry_admin":
        raise PermissionDenied(_l("Only a ministry admin may do this."), code="ministry_only")


def _require_pending(application: Application) -> None:
    """Two reviews of one application queue here, and the second reads the first's verdict: without it,
    two admins pressing approve together admitted two nodes from one application."""
    serialise(f"application:{application.id}")
    db.session.refresh(application)  # read after the lock: the verdict of a review that just committed
    if application.status != "pending":
        raise Conflict(_l("Application %(id)s is %(status)s already.", id=application.id,
                          status=status_word(application.status)), code="application_not_pending")


def approve(application: Application, *, by) -> Node:
    """Assign the node id, admit the node and run the hooks (certificate, routing) in one transaction."""
    _require_ministry(by)
    _require_pending(application)
    if application.kind == "change":
        return _approve_change(application, by=by)
    try:
        divisions.require_current(application.division_code)
    except divisions.RetiredDivision as retired:
        # Waiting does not help (a retired code never comes back current): say what does, at every door.
        raise divisions.RetiredDivision(_l("%(refusal)s This application cannot be approved: reject it, and the unit "
                                           "applies again for a current code.", refusal=retired.message),
                                        field=retired.field) from None
    uniqueness.hold(key_sha256=application.key_sha256, endpoint=application.endpoint)
    uniqueness.require_endpoint_free(application.endpoint, application_id=application.id, by=by)
    node = Node(
        node_id=nodes.allocate_node_id(application.division_code), division_code=application.division_code,
        province_prefix=application.division_code[:2], org_name=application.org_name,
        system_name=application.system_name, vendor=application.vendor, endpoint=application.endpoint,
        contact_name=application.contact_name, contact_phone=application.contact_phone,
        contact_email=application.contact_email, capabilities=list(application.capabilities), status="active",
        application_id=application.id, enrolled_by_token_id=application.token_id, approved_by=by.username,
    )
    db.session.add(node)
    db.session.flush()  # nodes and applications refer to each other: the node row must exist first
    application.status, application.node_id = "approved", node.node_id
    application.reviewed_by, application.reviewed_at = by.username, utcnow()
    db.session.flush()
    hooks.run(hooks.node_admitted, node, application)
    audit.record("application.approve", application.id, {"node": node.node_id, "division": node.division_code},
                 actor=by.username)
    return node


NO_CHANGE = _l("This change request changes nothing: every value is the node's current one.")
CHANGEABLE = ("org_name", "system_name", "vendor", "endpoint", "contact_name", "contact_phone", "contact_email",
              "capabilities")


def _requested(info: NodeInformation, name: str):
    return list(info.capabilities) if name == "capabilities" else getattr(info, name)


def _same(name: str, current, requested) -> bool:
    if name == "capabilities":  # a set of names: the order they were ticked in is no change
        return set(current or ()) == set(requested or ())
    return current == requested


def _differences(node: Node, requested) -> dict[str, tuple]:
    """field → (the node's current value, `requested(field)`), for every field that would change."""
    return {name: (getattr(node, name), requested(name)) for name in CHANGEABLE
            if not _same(name, getattr(node, name), requested(name))}


def requested_changes(application: Application, node: Node) -> dict[str, tuple]:
    """What approving this change request would alter (the review page shows it, approval applies it)."""
    return _differences(node, lambda name: getattr(application, name))


def _approve_change(application: Application, *, by) -> Node:
    """A request carries whole A.1 values, not a diff: if another change to the node was approved after
    this one was written, applying it would silently put that change back, so it is refused."""
    held = uniqueness.lock_names(application.key_sha256, application.endpoint)
    node = nodes.lock(nodes.get(application.node_id), *held)
    if node.status == "revoked":
        raise Conflict(_l("A revoked node cannot change."), code="node_revoked")
    newer = db.session.scalar(select(Application.id).where(
        Application.node_id == node.node_id, Application.kind == "change", Application.status == "approved",
        Application.id != application.id, Application.reviewed_at > application.created_at).limit(1))
    if newer:
        raise Conflict(_l("Node %(node)s changed after this request was written (change request %(id)s was "
                          "approved since); approving it would undo that change. Reject it, and submit a new "
                          "request if it is still wanted.", node=node.node_id, id=newer), code="change_stale")
    changes = requested_changes(application, node)
    if not changes and not application.csr_pem:
        raise Conflict(NO_CHANGE, code="no_change")
    if application.endpoint != node.endpoint:
        uniqueness.require_endpoint_free(application.endpoint, node.node_id, application.id, by=by)
    elif application.csr_pem:
        uniqueness.require_not_the_management_host(application.endpoint)
    for name, (_, new) in changes.items():
        setattr(node, name, list(new) if name == "capabilities" else new)
    application.status = "approved"
    application.reviewed_by, application.reviewed_at = by.username, utcnow()
    db.session.flush()
    hooks.run(hooks.node_changed, node, application, changes)
    audit.record("application.approve_change", application.id,
                 {"node": node.node_id, "changed": sorted(changes)}, actor=by.username)
    return node


def reject(application: Application, reason: str, *, by) -> Application:
    _require_ministry(by)
    _require_pending(application)
    reason = readable_text(reason, "reason", multiline=True, limit=500)
    if not reason:
        raise ValidationFailed(_l("A rejection needs a reason."), code="reason_required", field="reason")
    application.status, application.reason = "rejected", reason
    application.reviewed_by, application.reviewed_at = by.username, utcnow()
    audit.record("application.reject", application.id, {"reason": application.reason}, actor=by.username)
    return application


def queue_query(user, *, status: str | None = "pending", division: str = "", kind: str = ""):
    from app.admission.scope import division_filter

    query = select(Application).where(division_filter(user, Application.division_code))
    if status:
        query = query.where(Application.status == status)
    if division:
        # autoescape: a % or _ is a character, not a LIKE wildcard (the console refuses them; the query holds anyway).
        query = query.where(Application.division_code.startswith(division_prefix(division), autoescape=True))
    if kind:
        query = query.where(Application.kind == kind)
    return query.order_by(Application.created_at.desc(), Application.id)


def pending_count(user=None) -> int:
    """Applications waiting for review: all of them, or those of `user`'s divisions (as their list shows them)."""
    query = select(func.count()).where(Application.status == "pending")
    if user is not None:
        from app.admission.scope import division_filter

        query = query.where(division_filter(user, Application.division_code))
    return db.session.scalar(query) or 0


def token_of(application: Application) -> EnrollmentToken | None:
    return application.token


def retired_codes_pending(codes: set[str]) -> list[str]:
    """divisions.retirement_checks entry: name every application waiting for review for a retired code. Approval
    refuses it (retired_division_code) while it holds its key and endpoint: it is to be rejected."""
    rows = db.session.scalars(select(Application).where(
        Application.division_code.in_(codes), Application.status == "pending", Application.kind == "admission")
        .order_by(Application.division_code, Application.created_at, Application.id))
    return [f"application {a.id} ({a.org_name}) is waiting for review for retired code {a.division_code}"
            for a in rows]
