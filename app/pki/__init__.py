"""The certificate authority (issue 4): issue, renew, revoke, publish."""


def init_app(app) -> None:
    from flask_babel import lazy_gettext as _l

    from app import console
    from app.admission import hooks, node_views
    from app.pki import lifecycle, own_keys, readiness, revocation, views
    from app.pki.api import bp as api_bp
    from app.pki.cli import cli
    from app.scheduler import registry

    app.register_blueprint(api_bp)
    app.register_blueprint(views.bp)
    app.cli.add_command(cli)
    for name, hook in (("node_admitted", lifecycle.node_admitted), ("node_changed", lifecycle.node_changed),
                       ("node_status_changed", lifecycle.node_status_changed)):
        hook_list = getattr(hooks, name)
        if hook not in hook_list:
            hook_list.insert(0, hook)  # certificates first: routing publishes what they decide
    registry.register(registry.Job("ca.crl_refresh", revocation.crl_refresh_job, 3600))
    registry.register(registry.Job("ca.service_renewal", own_keys.service_renewal_job, 3600))
    if views.dashboard_panel not in console.dashboard_panels:
        console.dashboard_panels.append(views.dashboard_panel)
        console.banner_sources.append(views.banner)
    if ("ca", readiness.health_check) not in console.health_checks:
        console.health_checks.append(("ca", readiness.health_check))
    if ("route_signer", own_keys.health_check) not in console.health_checks:
        console.health_checks.append(("route_signer", own_keys.health_check))
    if views.node_section not in node_views.node_sections:
        node_views.node_sections.insert(0, views.node_section)  # above the health card
    entry = ("certificates.index", _l("Certificates"), ("ministry_admin", "provincial_admin", "auditor"))
    if entry not in console.nav_entries:
        console.nav_entries.append(entry)
