"""Console: the nodes list and detail, lifecycle actions, the resolver and the dashboard panel."""

from __future__ import annotations

from flask import Blueprint, abort, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_login import current_user
from markupsafe import Markup
from sqlalchemy import false, func, select

from app import labels
from app.admission import applications, node_changes, nodes, tilemap
from app.admission.forms import ReasonForm
from app.admission.models import Node
from app.admission.scope import division_filter, provinces_within
from app.auth.access import roles_required
from app.auth.views import form_error
from app.console.pages import shows_page
from app.database import paginate
from app.divisions import service as divisions
from app.divisions.codes import typed_code
from app.errors import Conflict, DomainError, PermissionDenied
from app.extensions import db

bp = Blueprint("nodes", __name__, url_prefix="/nodes")
VIEWERS = ("ministry_admin", "provincial_admin", "auditor")


@bp.get("/")
@roles_required(*VIEWERS)
def index():
    """Filters are kept as typed (blanks around them aside) and compared as typed: cut to 60 characters, a vendor
    the dropdown offered listed nothing. No length is cut anywhere: a value longer than its column matches nothing,
    and the request line's own limit bounds what can come. A province, state or capability no option has is said
    so at its box and nothing is listed until it is corrected (as the health events' node filter); a sort no
    column has is said to be ignored, the list sorted by node id."""
    filters = {key: request.args.get(key, "").strip() for key in
               ("province", "status", "vendor", "capability", "q", "sort", "division")}
    provinces = tilemap.province_names()
    unknown = {name for name, known in (("province", nodes.province_prefix(filters["province"]) in provinces),
                                        ("status", filters["status"] in nodes.LIST_STATES),
                                        ("capability", filters["capability"] in labels.CAPABILITIES))
               if filters[name] and not known}
    sort = filters["sort"] if filters["sort"] in nodes.SORTS else "node_id"
    descending = request.args.get("desc") == "1"
    query = nodes.list_query(current_user, province=filters["province"], status=filters["status"],
                             vendor=filters["vendor"], capability=filters["capability"], q=filters["q"],
                             sort=sort, descending=descending, division=filters["division"])
    if unknown:
        query = query.where(false())
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"])
    vendors = db.session.scalars(select(Node.vendor).where(division_filter(current_user, Node.division_code))
                                 .group_by(Node.vendor).order_by(Node.vendor).limit(200)).all()
    columns = [(name, header, render(page.items)) for name, header, render in node_columns]
    return render_template("admission/nodes.html", page=page, filters=filters, sort=sort, descending=descending,
                           unknown=unknown, province=nodes.province_prefix(filters["province"]), vendors=vendors,
                           provinces=provinces, capabilities=labels.CAPABILITIES, columns=columns)


# Extra columns other features add to the nodes list: (name, header, function(nodes of the page) ->
# {node_id: markup}); one call per page, so a column costs one query, not one per row.
node_columns: list[tuple[str, object, object]] = []
# Extra sections on the node page: functions (node) -> {"template": ..., **context} | None.
node_sections: list = []


@bp.get("/<node_id>")
@roles_required(*VIEWERS)
def detail(node_id: str):
    return detail_page(nodes.get_visible(node_id, current_user))


def detail_page(node: Node, status: int = 200, *, form: ReasonForm | None = None, refused_action: str | None = None,
                **refused_forms):
    """The node page; after a refusal (`status` 422) with the refused form as it was sent, its error at its field:
    `form` for the lifecycle action `refused_action` (a refusal of no field in its `form_errors`; an action the
    node no longer offers comes back all the same, its button disabled), or a section's own form by the name its
    template reads (health's `maintenance_form`)."""
    sections = [section for section in (build(node) for build in node_sections) if section]
    form = form or ReasonForm(formdata=None)
    if form.seen() is None:  # a page loaded now, or after a refusal that told what the node is now
        form.seen_change.data = str(node_changes.mark(node_changes.latest(node.node_id)))
    # Resuming brings the node back into the routing table only with a valid certificate: the confirmation says which.
    back_in_routes = node.status != "suspended" or nodes.holds_valid_certificate(node)
    return render_template("admission/node_detail.html", node=node, form=form,
                           refused_action=refused_action, sections=sections, capabilities=labels.CAPABILITIES,
                           back_in_routes=back_in_routes, declined=nodes.declined_suspension(node),
                           **refused_forms), status


LIFECYCLE = {"suspend": nodes.suspend, "resume": nodes.resume, "revoke": nodes.revoke,
             "request-suspension": nodes.request_suspension, "decline-suspension": nodes.decline_suspension,
             "withdraw-suspension": nodes.withdraw_suspension}
# What a done request-related action says: nothing changed the node's status, so "Done: … is active" would mislead.
REQUEST_DONE = {"request-suspension": _l("Suspension of %(node)s requested; a ministry admin decides."),
                "decline-suspension": _l("Suspension request for %(node)s declined; it stays active."),
                "withdraw-suspension": _l("Suspension request for %(node)s withdrawn.")}


@bp.post("/<node_id>/<action>")
@shows_page("nodes.detail")
@roles_required("ministry_admin", "provincial_admin")
def lifecycle(node_id: str, action: str):
    # The node first: one outside this admin's divisions answers as a missing one does, whatever the action.
    node = nodes.get_visible(node_id, current_user)
    if action not in LIFECYCLE:
        abort(404)  # an address that names no action: nothing was done, and no form is read
    form = ReasonForm()
    try:
        LIFECYCLE[action](node, form.reason.data or "", by=current_user, seen_change=form.seen())
        db.session.commit()
    except DomainError as error:
        # The page comes back with the reason as typed and the refusal beside it: a redirect lost the reason.
        # A refusal of no field (the node changed meanwhile: invalid_transition) is the sent form's too, said at
        # it rather than flashed at the top of the page, away from the reason it leaves undone.
        db.session.rollback()
        if error.field is None:
            form.form_errors.append(error.message)
        else:
            form_error(form, error)
        if isinstance(error, Conflict):
            # It said what the node is now (changed meanwhile, already so): the page that says it is loaded after
            # that. Any other refusal keeps what the form was loaded after, so a change since is still named.
            form.seen_change.data = ""
        # A refusal of who asks (a provincial admin's hand-made suspend: ministry_only) is a 403, the rest 422.
        return detail_page(node, 403 if isinstance(error, PermissionDenied) else 422, form=form,
                           refused_action=action)
    if action in REQUEST_DONE:  # the status did not change: say what did (and, for a request, who decides)
        flash(REQUEST_DONE[action] % {"node": node.node_id}, "success")
    else:
        flash(_("Done: %(node)s is %(status)s.", node=node.node_id, status=labels.status_word(node.status)),
              "success")
        if action == "resume" and not nodes.holds_valid_certificate(node):
            flash(nodes.not_back_in_routes(node), "info")
    return redirect(url_for("nodes.detail", node_id=node_id))


@bp.get("/resolve")
@roles_required(*VIEWERS)
def resolve():
    code = typed_code(request.args.get("division", ""))
    result, error, division = None, None, None
    if code:
        try:
            result = nodes.resolve(code)
            division = divisions.get(code)
        except DomainError as failure:
            error = failure.message
    return render_template("admission/resolve.html", code=code, result=result, error=error, division=division)


def province_figures(user) -> dict[str, tilemap.ProvinceFigures]:
    rows = db.session.execute(select(Node.province_prefix, Node.status, func.count())
                              .where(division_filter(user, Node.division_code), Node.status != "revoked")
                              .group_by(Node.province_prefix, Node.status)).all()
    figures: dict[str, tilemap.ProvinceFigures] = {}
    for prefix, status, count in rows:
        setattr(figures.setdefault(prefix, tilemap.ProvinceFigures()), status, count)
    for contribute in province_contributors:
        contribute(user, figures)
    return figures


# Functions (user, figures) that add to the tile figures (health adds `down`).
province_contributors: list = []


def dashboard_panel(user) -> dict:
    return {"template": "admission/dashboard_panel.html", "node_counts": nodes.counts_by_status(user),
            "pending": applications.pending_count(user) if user.role in ("ministry_admin", "provincial_admin")
            else None,
            "suspension_requests": nodes.suspension_requests_count(user) if user.role == "ministry_admin" else 0,
            "tilemap": Markup(tilemap.render(province_figures(user), within=provinces_within(user))),
            "scoped": user.role == "provincial_admin",
            **_retired_division_figures(user)}


# The dashboard names this many nodes on retired division codes; the nodes list pages through the rest.
RETIRED_SHOWN = 10


def _retired_division_figures(user) -> dict:
    if user.role == "provincial_admin":
        return {"retired_nodes": [], "retired_total": 0}
    return {"retired_nodes": nodes.nodes_in_retired_divisions(RETIRED_SHOWN),
            "retired_total": nodes.count_in_retired_divisions()}
