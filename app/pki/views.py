"""Console: certificate inventory, detail with PEM and fingerprint, revocation, CA warnings."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from sqlalchemy import false, func, select

from app.auth.access import roles_required
from app.auth.forms import ConfirmForm
from app.auth.views import form_error
from app.console.pages import shows_page
from app.database import paginate
from app.errors import DomainError
from app.extensions import db
from app.i18n import sentences
from app.pki import agreement, intermediate, inventory, own_keys, published, readiness, revocation, service
from app.pki.forms import RenewForm
from app.pki.models import CERTIFICATE_KINDS, Certificate

bp = Blueprint("certificates", __name__, url_prefix="/certificates")
VIEWERS = ("ministry_admin", "auditor", "provincial_admin")


def _visible(row: Certificate) -> bool:
    """As the list shows them: a provincial admin sees their divisions' nodes' certificates, not the management
    node's own (route signer, TLS), which the list leaves out for them."""
    if current_user.role != "provincial_admin":
        return True
    if row.node_id is None:
        return False
    from app.admission.models import Node

    node = db.session.get(Node, row.node_id)
    return node is not None and current_user.can_access_division(node.division_code)


@bp.get("/")
@roles_required(*VIEWERS)
def index():
    """Filters are kept as typed (nodes.node_filter; blanks around a state or kind aside). A node filter that is
    no node id, or a state or kind no option has (which listed everything, its box showing "All"), is said so at
    its box and lists nothing until it is corrected; an unknown kind is said so to a provincial admin too, who
    has no kind box."""
    from app.admission.nodes import node_filter

    state = request.args.get("state", "").strip()
    node_id, not_node_id = node_filter(request.args.get("node", ""))
    kind = request.args.get("kind", "").strip()
    unknown = {name for name, value, known in (("state", state, inventory.STATES), ("kind", kind, CERTIFICATE_KINDS))
               if value and value not in known}
    query = inventory.visible_to(inventory.inventory_query(state=state, node_id=node_id, kind=kind), current_user)
    if not_node_id:
        query = query.where(false())
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"],
                    decode=inventory.listed)
    return render_template("pki/index.html", page=page, state=state, node_id=node_id, not_node_id=not_node_id,
                           kind=kind, unknown=unknown, ready=service.is_ready())


def _visible_certificate(serial: str) -> Certificate:
    """The certificate, if this user may see it; else the very answer a serial with no certificate gets, so
    a provincial admin cannot learn which serials exist outside their divisions."""
    row = service.get(serial)
    if not _visible(row):
        raise service.not_found(serial)
    return row


@bp.get("/<serial>")
@roles_required(*VIEWERS)
def detail(serial: str):
    row = _visible_certificate(serial)
    return _detail_page(row, RenewForm())


def _detail_page(row: Certificate, renew_form: RenewForm, status: int = 200):
    """`newest`: the node's newest certificate; renewal is offered on that one only (whatever its
    state: after a revocation it is where an admin issues the replacement). `last_valid`: revoking this
    one leaves the node no valid certificate, so the confirmation says the node leaves the routing table.
    `same_key`: the node's other valid certificates of this key, which a revocation as key_compromise takes
    with it (`same_key_all`: and those are all the others it has)."""
    node = newest = None
    last_valid = same_key_all = False
    same_key: list[Certificate] = []
    if row.node_id:
        from app.admission.models import Node

        node = db.session.get(Node, row.node_id)
        newest = service.node_certificates(row.node_id)[0]
        valid = service.valid_certificates(row.node_id)
        last_valid = [c.serial for c in valid] == [row.serial]
        others = [c for c in valid if c.serial != row.serial]
        valid_serials = {c.serial for c in valid}
        same_key = [c for c in revocation.same_key_certificates(row) if c.serial in valid_serials]
        same_key_all = bool(same_key) and len(same_key) == len(others)
    return render_template("pki/detail.html", row=row, state=inventory.state_of(row), node=node, newest=newest,
                           reasons=revocation.REASONS, in_service=revocation.in_service_role(row, from_files=True),
                           confirm_form=ConfirmForm(), renew_form=renew_form, last_valid=last_valid,
                           same_key=same_key, same_key_all=same_key_all), status


def node_section(node) -> dict | None:
    """The node page's certificate card: the valid certificate, or why the node is out of the routing
    table (an active node with none valid is left out, which its status and health do not show)."""
    if node.status == "revoked":
        return None
    certificates = service.node_certificates(node.node_id)
    return {"template": "pki/node_section.html", "current": service.current_certificate(node.node_id),
            "newest": certificates[0] if certificates else None}


@bp.get("/<serial>.pem")
@roles_required(*VIEWERS)
def download(serial: str):
    row = _visible_certificate(serial)
    body = row.pem + published.chain_pem().decode()  # the files: no key is opened to hand out a certificate
    return Response(body, mimetype="application/x-pem-file",
                    headers={"Content-Disposition": f"attachment; filename={row.node_id or row.kind}-{row.serial}.pem"})


@bp.post("/<serial>/revoke")
@roles_required("ministry_admin")
def revoke(serial: str):
    row = service.get(serial)
    if ConfirmForm().validate_on_submit():
        try:
            replacement = revocation.revoke(row, request.form.get("reason", ""), by=current_user).replacement
            db.session.commit()
            flash(_("Certificate %(serial)s revoked; the CRL was regenerated.", serial=serial), "success")
            if replacement is not None and replacement.kind == "route_signer":
                flash(_("It was the route signer in use: a new route signer signs the routing table from now on."),
                      "success")
            elif replacement is not None:
                flash(_("It was the management node’s TLS certificate in use: health polling presents a new one "
                        "from now on."), "success")
        except DomainError as error:
            db.session.rollback()
            flash(error.message, "error")
    return redirect(url_for("certificates.detail", serial=serial))


@bp.post("/<serial>/renew")
@shows_page("certificates.detail")
@roles_required("ministry_admin")
def renew(serial: str):
    """A new certificate for the node from its new CSR, whatever the renewal window; the old one
    stays valid until it expires or is revoked (as with a node's own renewal)."""
    row = service.get(serial)
    form = RenewForm()
    if row.node_id is None:
        abort(404)
    if service.node_certificates(row.node_id)[0].serial != row.serial:
        return _to_the_newer_certificate(row)  # a stale tab: the page offers renewal on the newest certificate only
    if form.validate_on_submit():
        from app.admission import nodes

        try:
            issued = service.renew(nodes.get(row.node_id), form.csr_pem() or "", by=current_user,
                                   expected_current=row.serial)
            db.session.commit()
        except DomainError as error:
            db.session.rollback()
            if error.code == "newer_certificate":  # another tab's renewal committed while this one waited
                return _to_the_newer_certificate(row)
            form_error(form, error)
        else:
            flash(_("Certificate %(serial)s issued for node %(node)s; the routing table carries it now.",
                    serial=issued.serial, node=row.node_id), "success")
            return redirect(url_for("certificates.detail", serial=issued.serial))
    return _detail_page(row, form, 422)


def _to_the_newer_certificate(row: Certificate):
    flash(_("Node %(node)s has a newer certificate: renew from its page if it is still needed.",
            node=row.node_id), "error")
    return redirect(url_for("certificates.detail", serial=service.node_certificates(row.node_id)[0].serial))


def dashboard_panel(user) -> dict | None:
    """Node certificates only (the management node's own have their own warnings), and a provincial
    admin counts only their divisions' nodes, as their inventory lists them. "Expiring" counts the nodes
    whose current certificate expires within 30 days, those that still have to renew (a renewed node's old
    certificate is superseded); the link lists exactly those (kind=node)."""
    if not service.is_ready():
        return {"template": "pki/dashboard_panel.html", "ready": False}

    def counted(state: str) -> int:
        return inventory.count(inventory.visible_to(inventory.inventory_query(state=state, kind="node"), user))

    return {"template": "pki/dashboard_panel.html", "ready": True, "expiring": counted("expiring"),
            "valid": counted("valid"), "without": _active_without_certificate(user)}


def _active_without_certificate(user) -> int:
    """Active nodes the routing table leaves out for want of a valid certificate (all revoked or expired):
    their status still reads active."""
    from app.admission import nodes

    return db.session.scalar(select(func.count()).select_from(
        nodes.list_query(user, status="no_certificate").order_by(None).subquery())) or 0


CA_UNUSABLE = {
    "key_unreadable": _l("The CA key cannot be opened: the CA passphrase is wrong, or a file in the CA directory "
                         "cannot be read."),
    "passphrase_missing": _l("No CA passphrase is set: MPIM_CA_PASSPHRASE or MPIM_CA_PASSPHRASE_FILE."),
    "files_missing": _l("The CA directory (MPIM_CA_DIR) holds no CA, though this registry has one: is it "
                        "mounted?"),
}


def banner(user) -> list[dict]:
    """Ministry admins are told at once when the CA cannot sign (before an approval fails on it), when the root
    revoked the intermediate (nothing it signs counts), when the database does not know the CA directory's
    certificates (`agreement`) and when the route signer in use is revoked or expired (no table is published);
    they and auditors see the CA's certificates expiring."""
    if user.role not in ("ministry_admin", "auditor"):
        return []
    found = readiness.condition()
    if found.state in CA_UNUSABLE:
        if user.role != "ministry_admin":
            return []
        return [{"kind": "error", "text": sentences(CA_UNUSABLE[found.state], _l(
            "Until an operator corrects it, no certificate can be issued, renewed or revoked, no OCSP response, "
            "CRL or routing table signed, and no node's health polled (the console shows each node's last known "
            "state); /healthz answers 503. Detail: %(reason)s", reason=found.reason))}]
    banners = []
    if found.state == "ok" and user.role == "ministry_admin":
        mismatch = agreement.mismatch()
        if mismatch:
            banners.append({"kind": "error", "text": sentences(*mismatch, _l(
                "/healthz answers 503 until the database and the CA directory agree."))})
        revoked_intermediate = intermediate.revocation_of_current()
        if revoked_intermediate is not None:
            banners.append({"kind": "error", "text": str(intermediate.revoked_message(revoked_intermediate))})
        unusable = own_keys.route_signer_problem(own_keys.route_signer()[1])
        if unusable is not None:
            banners.append({"kind": "error", "text": str(unusable.message)})
    return banners + [{"kind": "warning", "text": str(text)} for text in own_keys.expiry_warnings()]
