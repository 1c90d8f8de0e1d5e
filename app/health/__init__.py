"""Health polling of every node (issue 6): the poller, damped state, history, alerts, console."""


def init_app(app) -> None:
    from flask_babel import lazy_gettext as _l

    from app import console
    from app.admission import hooks, node_views
    from app.health import history, rounds, service, views, webhook
    from app.health.cli import cli
    from app.scheduler import registry

    app.register_blueprint(views.bp)
    app.cli.add_command(cli)
    registry.register(registry.Job("health.poll", rounds.poll_job, app.config["MPIM_HEALTH_INTERVAL"],
                                   timeout_seconds=app.config["MPIM_HEALTH_INTERVAL"] * 2))
    # Registered before the routing feature's hook (FEATURES order): the table it publishes lists the node unknown.
    if service.forget_verdict not in hooks.node_status_changed:
        hooks.node_status_changed.append(service.forget_verdict)
    if service.forget_verdict_after_move not in hooks.node_changed:
        hooks.node_changed.append(service.forget_verdict_after_move)
    registry.register(registry.Job("health.downsample", history.downsample, 3600))
    if webhook.outbox.finish not in registry.at_stop:  # alerts queued by the last rounds
        registry.at_stop.append(webhook.outbox.finish)
    column = ("health", _l("Health"), views.health_cells)
    if all(name != column[0] for name, _, _ in node_views.node_columns):
        node_views.node_columns.append(column)
    if views.node_section not in node_views.node_sections:
        node_views.node_sections.append(views.node_section)
    if views.banner not in console.banner_sources:
        console.banner_sources.append(views.banner)
    if views.province_down not in node_views.province_contributors:
        node_views.province_contributors.append(views.province_down)
    entry = ("health.events", _l("Health events"), ("ministry_admin", "provincial_admin", "auditor"))
    if entry not in console.nav_entries:
        console.nav_entries.append(entry)
