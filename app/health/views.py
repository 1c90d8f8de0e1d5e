"""Console: events page, maintenance windows, the node page's charts, the list column, the banner."""

from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, current_app, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user
from markupsafe import Markup, escape
from sqlalchemy import false, func, select

from app import labels
from app.admission import node_views, nodes
from app.admission.models import Node
from app.admission.scope import division_filter
from app.auth.access import roles_required
from app.auth.views import form_error
from app.console.forms import ConsoleForm
from app.console.pages import shows_page
from app.database import paginate, utcnow
from app.errors import Conflict, DomainError
from app.extensions import db
from app.health import charts, history, service
from app.health import maintenance as windows
from app.health.forms import MaintenanceForm
from app.health.models import HealthEvent, NodeHealth
from app.i18n import join_list

bp = Blueprint("health", __name__, url_prefix="/health")
STATUS_LABELS = labels.STATUS_LABELS  # up, down, unknown among them


@bp.get("/events")
@roles_required("ministry_admin", "provincial_admin", "auditor")
def events():
    """The node filter is kept as typed (nodes.node_filter); one that is no node id lists nothing."""
    query = history.events_query(current_user)
    node_id, not_node_id = nodes.node_filter(request.args.get("node", ""))
    if node_id:
        query = query.where(HealthEvent.node_id == node_id) if not not_node_id else query.where(false())
    page = paginate(query, request.args.get("page", 1, type=int), current_app.config["MPIM_PAGE_SIZE"])
    return render_template("health/events.html", page=page, node_id=node_id, not_node_id=not_node_id,
                           labels=STATUS_LABELS)


@bp.post("/<node_id>/maintenance")
@shows_page("nodes.detail")
@roles_required("ministry_admin", "provincial_admin")
def maintenance(node_id: str):
    node = nodes.get_visible(node_id, current_user)
    form = MaintenanceForm()
    if not form.validate_on_submit():
        flash(_("The form expired; try again."), "error")
        return redirect(url_for("nodes.detail", node_id=node_id))
    try:
        health = windows.schedule_maintenance(node, form.hours.data, form.note.data or "", by=current_user,
                                              seen_window=form.seen())
        db.session.commit()
    except DomainError as error:
        # The node page comes back with the note as typed and the refusal beside it: a redirect lost the note.
        db.session.rollback()
        form_error(form, error)
        # A conflict said what the window is now: drawn for it, saving again means to replace it. Any other refusal
        # (a note too long) keeps the window the page was drawn after, so a change since is still named.
        seen = form.seen_window.data
        form.show_window(db.session.get(NodeHealth, node.node_id), node.node_id)
        if not isinstance(error, Conflict):
            form.seen_window.data = seen
        return node_views.detail_page(node, 422, maintenance_form=form)
    # 0 hours ends the window (a hand-made POST, or a page from before the end button): said as the button says it.
    flash(_("Maintenance window saved.") if health is not None else _("Maintenance ended."), "success")
    return redirect(url_for("nodes.detail", node_id=node_id))


@bp.post("/<node_id>/maintenance/end")
@shows_page("nodes.detail")
@roles_required("ministry_admin", "provincial_admin")
def end_maintenance(node_id: str):
    """Its own button, asking first (data-confirm): the node is alerted of and counted against again at once."""
    node = nodes.get_visible(node_id, current_user)
    if not ConsoleForm().validate_on_submit():
        flash(_("The form expired; try again."), "error")
        return redirect(url_for("nodes.detail", node_id=node_id))
    try:
        windows.end_maintenance(node, by=current_user)
        db.session.commit()
    except DomainError as error:
        db.session.rollback()
        flash(error.message, "error")
        return redirect(url_for("nodes.detail", node_id=node_id))
    flash(_("Maintenance ended."), "success")
    return redirect(url_for("nodes.detail", node_id=node_id))


def health_cells(page_nodes: list[Node]) -> dict[str, Markup]:
    """The nodes list's health column for one page, in one query."""
    states = service.statuses([node.node_id for node in page_nodes])
    return {node.node_id: health_cell(node, states.get(node.node_id)) for node in page_nodes}


def health_cell(node: Node, health: NodeHealth | None) -> Markup:
    if node.status != "active":
        return Markup("—")
    if service.in_maintenance(health):
        return Markup(f'<span class="tag muted">{escape(_("Maintenance"))}</span>')
    status = health.status if health else "unknown"
    kind = {"up": "good", "down": "bad", "unknown": "muted"}[status]
    latency = f" {health.last_latency_ms:.0f} ms" if health and health.last_latency_ms and status == "up" else ""
    return Markup(f'<span class="tag {kind}">{escape(STATUS_LABELS[status])}</span>{latency}')


def node_section(node: Node) -> dict | None:
    if node.status == "revoked":
        return None
    health = db.session.get(NodeHealth, node.node_id)
    now = utcnow()
    flaps = service.flap_counts([node.node_id], now).get(node.node_id, 0)
    active = service.in_maintenance(health, now)
    # The form shows the window as it stands: saved unchanged, it keeps it (it used to reset to "none (end it)").
    form = MaintenanceForm(formdata=None, hours=windows.KEEP_END if active else None,
                           note=health.maintenance_note if active else "").show_window(health, node.node_id)
    return {
        "template": "health/node_section.html", "health": health, "labels": STATUS_LABELS,
        "polled": node.status == "active",
        "maintenance_form": form, "set_by": windows.window_setter(node.node_id) if active else None,
        "in_maintenance": active, "flapping": service.is_flapping(flaps),
        "flaps": flaps,
        "latency_chart": Markup(charts.latency_chart(
            history.latency_series(node.node_id, 24, now), end=now,
            poll_interval=timedelta(seconds=current_app.config["MPIM_HEALTH_INTERVAL"]))),
        "bars": [(label, Markup(charts.uptime_bars(history.uptime_buckets(node.node_id, span=span, buckets=count,
                                                                          now=now), label=str(label))),
                  history.uptime_ratio(node.node_id, span, now))
                 for label, span, count in ((_l("24 hours"), timedelta(hours=24), 24),
                                            (_l("7 days"), timedelta(days=7), 28),
                                            (_l("90 days"), timedelta(days=90), 90))],
        "events": db.session.scalars(select(HealthEvent).where(HealthEvent.node_id == node.node_id)
                                     .order_by(HealthEvent.at.desc(), HealthEvent.id.desc()).limit(10)).all(),
    }


def down_nodes(user):
    """The active nodes a user sees that are down and not in maintenance, as a select of `Node` (a nationwide
    outage is thousands of them: the banner counts them and names 5, the tile map counts per province)."""
    return select(Node).where(Node.status == "active", service.down_now(Node.node_id),
                              division_filter(user, Node.division_code))


def banner(user) -> list[dict]:
    down = down_nodes(user)
    total = db.session.scalar(down.with_only_columns(func.count(), maintain_column_froms=True))
    if not total:
        return []
    first = db.session.execute(down.with_only_columns(Node.org_name, Node.node_id).order_by(Node.node_id).limit(5))
    # The list's punctuation is the reader's: 、 and full-width brackets in Chinese, commas in English.
    names = join_list(_("%(org)s (%(node)s)", org=org_name, node=node_id) for org_name, node_id in first)
    more = _(" and %(n)s more", n=total - 5) if total > 5 else ""
    return [{"kind": "error", "text": ngettext("%(num)s node is down: %(names)s%(more)s.",
                                               "%(num)s nodes are down: %(names)s%(more)s.", total,
                                               names=names, more=more),
             "link": (url_for("nodes.index", status="down"), _("List every node that is down"))}]


def province_down(user, figures) -> None:
    from app.admission.tilemap import ProvinceFigures

    rows = db.session.execute(down_nodes(user).with_only_columns(Node.province_prefix, func.count())
                              .group_by(Node.province_prefix))
    for prefix, count in rows:
        figures.setdefault(prefix, ProvinceFigures()).down += count
