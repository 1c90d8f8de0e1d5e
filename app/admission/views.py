"""Console: enrollment tokens, the application form, the review queue and decisions."""

from __future__ import annotations

import re
from collections.abc import Callable

from flask import Blueprint, current_app, flash, make_response, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import false

from app import labels
from app.admission import applications, nodes, probe, tokens
from app.admission.forms import ApplicationForm, RejectForm, TokenForm
from app.admission.information import check_submission
from app.admission.models import APPLICATION_KINDS, APPLICATION_STATUSES, Application
from app.auth.access import roles_required
from app.auth.forms import ConfirmForm
from app.auth.views import form_error, form_status
from app.console.pages import shows_page
from app.database import paginate
from app.divisions import service as divisions
from app.errors import DomainError, every_refusal
from app.extensions import db

bp = Blueprint("admission", __name__)
ADMINS = ("ministry_admin", "provincial_admin")


@bp.route("/tokens/", methods=["GET", "POST"])
@roles_required(*ADMINS)
def token_list():
    """A new token is shown once, in the answer to the POST that issued it, never kept anywhere to be shown
    later: the session cookie is signed, not encrypted, so anyone who saw it could read a token put there.
    The answer is not stored (no-store), and console.js turns its history entry into a plain GET, so a
    reload or Back shows the list again without the token instead of issuing a second one."""
    form = TokenForm()
    issued = None
    if form.validate_on_submit():
        try:
            _, issued = tokens.create_token(form.division_code.data.strip(), by=current_user,
                                            ttl=tokens.parse_ttl(form.ttl.data), note=form.note.data or "")
            db.session.commit()
        except DomainError as error:
            db.session.rollback()
            form_error(form, error)
        else:
            form = TokenForm(formdata=None)  # issued: the form starts again empty
    page = paginate(tokens.visible_tokens_query(current_user), request.args.get("page", 1, type=int),
                    current_app.config["MPIM_PAGE_SIZE"])
    response = make_response(render_template("admission/tokens.html", form=form, page=page, issued=issued,
                                             confirm_form=ConfirmForm()),
                             200 if issued else form_status(form))
    if issued:
        response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/tokens/<int:token_id>/revoke")
@roles_required(*ADMINS)
def token_revoke(token_id: int):
    if ConfirmForm().validate_on_submit():
        try:
            token = tokens.revoke_token(token_id, by=current_user)
            db.session.commit()
            flash(_("Token %(prefix)s… revoked.", prefix=token.prefix), "success")
        except DomainError as error:
            db.session.rollback()
            flash(error.message, "error")
    return redirect(url_for("admission.token_list"))


# The applications list's filters: a state (or all of them), a kind (or both), a division code or its first digits.
APPLICATION_STATES = (*APPLICATION_STATUSES, "all")
DIVISION_FILTER = re.compile(r"[0-9]{1,6}")


@bp.get("/applications/")
@roles_required(*ADMINS)
def application_list():
    """Filters are kept as typed (blanks around them aside): the division was cut to 6 characters, so 3601001
    listed 360100's applications and the box came back changed. One no option has, or a division that is no code
    (a % among them, which listed every application), is said so at its box, and nothing is listed until it is
    corrected. No state given is the queue: pending."""
    filters = {"status": request.args.get("status", "").strip() or "pending",
               "division": request.args.get("division", "").strip(), "kind": request.args.get("kind", "").strip()}
    unknown = {name for name, known in (("status", filters["status"] in APPLICATION_STATES),
                                        ("kind", filters["kind"] in APPLICATION_KINDS),
                                        ("division", DIVISION_FILTER.fullmatch(filters["division"])))
               if filters[name] and not known}
    status = filters["status"]
    query = applications.queue_query(current_user, status=None if status == "all" else status,
                                     division=filters["division"], kind=filters["kind"])
    if unknown:
        query = query.where(false())
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"])
    return render_template("admission/applications.html", page=page, filters=filters, unknown=unknown)


@bp.route("/applications/new", methods=["GET", "POST"])
@roles_required(*ADMINS)
def application_new():
    form = ApplicationForm()
    if request.method == "GET" and current_user.scopes:
        form.division_code.data = current_user.scopes[0]
    if form.is_submitted():
        application = _submit(form, lambda: applications.submit_by_user(
            form.document(), by=current_user, names=form.names(), read_csr=form.csr_pem))
        if application:
            flash(_("Application submitted; a ministry admin will review it."), "success")
            return redirect(url_for("admission.application_detail", application_id=application.id))
    return render_template("admission/application_form.html", form=form, node=None), form_status(form)


def _submit(form: ApplicationForm, submit: Callable[[], Application], *, new: bool = True) -> Application | None:
    """`submit()`'s application, committed, once WTForms passed the form; else only the service's checks, so that
    their refusals come with WTForms' (an empty field's) in one answer. None with every refusal at its field."""
    valid = form.validate()
    try:
        if not valid:
            check_submission(form.document(), new=new, names=form.names(), read_csr=form.csr_pem)
            return None
        application = submit()
        db.session.commit()
        return application
    except DomainError as error:
        db.session.rollback()
        form_error(form, _map_field(error))
        return None


def _map_field(error: DomainError) -> DomainError:
    """API field names (contact.phone, csr) → form field names, in `error` and the refusals it carries."""
    for refusal in every_refusal(error):
        if refusal.field and refusal.field.startswith("contact."):
            refusal.field = "contact_" + refusal.field.split(".", 1)[1]
    return error


@bp.route("/nodes/<node_id>/change", methods=["GET", "POST"])
@roles_required(*ADMINS)
def change_request(node_id: str):
    node = nodes.get_visible(node_id, current_user)
    form = ApplicationForm(obj=node) if request.method == "GET" else ApplicationForm()
    if request.method == "GET":
        form.contact_name.data, form.contact_phone.data = node.contact_name, node.contact_phone
        form.contact_email.data, form.capabilities.data = node.contact_email, node.capabilities
    form.division_code.data = node.division_code
    if form.is_submitted():
        application = _submit(form, lambda: applications.submit_change(
            node, form.document(), by=current_user, names=form.names(), read_csr=form.csr_pem), new=False)
        if application:
            flash(_("Change request submitted for review."), "success")
            return redirect(url_for("admission.application_detail", application_id=application.id))
    return render_template("admission/application_form.html", form=form, node=node,
                           pending_change=applications.pending_change(node)), form_status(form)


@bp.get("/applications/<application_id>")
@roles_required(*ADMINS)
def application_detail(application_id: str):
    return _application_page(applications.get_visible(application_id, current_user))


# The review page names this many of the division's nodes, above the decision; the nodes list has them all.
SERVING_SHOWN = 10


def _application_page(application, status: int = 200, *, reject_form: RejectForm | None = None):
    """The application page; after a refused rejection (`status` 422) with the reason as typed, the refusal at it."""
    csr_info, csr_error = None, None
    if application.csr_pem:
        try:
            csr_info = applications.inspect_csr(application.csr_pem)
        except DomainError as error:
            csr_error = error.message
    division = divisions.get(application.division_code)
    current_node = nodes.get(application.node_id) if application.node_id else None
    changes = applications.requested_changes(application, current_node) \
        if current_node and application.kind == "change" and application.status == "pending" else None
    return render_template(
        "admission/application_detail.html", application=application, csr_info=csr_info, csr_error=csr_error,
        division=division, division_path=divisions.path(division),
        serving=nodes.serving(application.division_code, SERVING_SHOWN), current_node=current_node, changes=changes,
        reject_form=reject_form or RejectForm(formdata=None), confirm_form=ConfirmForm()), status


@bp.get("/applications/<application_id>/probe")
@roles_required(*ADMINS)
def application_probe(application_id: str):
    """Run on demand by the detail page's script, so the page itself never waits on a node."""
    from app.pki import own_keys
    from app.pki import service as pki
    application = applications.get_visible(application_id, current_user)
    identity = own_keys.present_management_identity if pki.is_ready() else None
    result = probe.probe_health(application.endpoint, timeout=current_app.config.get("MPIM_PROBE_TIMEOUT", 3.0),
                                present_identity=identity)
    if result.get("failure"):
        result["message"] = str(labels.health_failure_label(result["failure"]))  # in the reader's language
        if result["failure"] == "error":  # a bare "error" said nothing: its cause too, translated where known
            result["message"] = _("%(failure)s: %(detail)s", failure=result["message"],
                                  detail=labels.health_detail_label(result.get("error")))
    if result.get("failure") == "refused" and application.kind == "admission" and application.status == "pending":
        # The reference node, like most, serves only once it holds the certificate approval issues.
        result["hint"] = _("An application node usually starts serving only once it is approved and holds its "
                           "certificate, so a refused connection before approval is expected.")
    return result


@bp.post("/applications/<application_id>/approve")
@roles_required("ministry_admin")
def application_approve(application_id: str):
    application = applications.get(application_id)
    if ConfirmForm().validate_on_submit():
        try:
            node = applications.approve(application, by=current_user)
            db.session.commit()
            flash(_("Approved: node %(id)s.", id=node.node_id), "success")
            return redirect(url_for("nodes.detail", node_id=node.node_id))
        except DomainError as error:
            db.session.rollback()
            flash(error.message, "error")
    return redirect(url_for("admission.application_detail", application_id=application_id))


@bp.post("/applications/<application_id>/reject")
@shows_page("admission.application_detail")
@roles_required("ministry_admin")
def application_reject(application_id: str):
    application = applications.get(application_id)
    form = RejectForm()
    try:
        applications.reject(application, form.reason.data or "", by=current_user)
        db.session.commit()
    except DomainError as error:
        # The page comes back with the reason as typed and the refusal beside it: a redirect lost the reason.
        db.session.rollback()
        form_error(form, error)
        return _application_page(application, 422, reject_form=form)
    flash(_("Application rejected."), "success")
    return redirect(url_for("admission.application_detail", application_id=application_id))

