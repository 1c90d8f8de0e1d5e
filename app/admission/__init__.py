"""Node admission (SPEC §3): enrollment tokens, applications, review, node lifecycle, addressing."""


def init_app(app) -> None:
    from flask_babel import lazy_gettext as _l

    from app import console
    from app.admission import applications, cli, cli_submit, node_views, nodes, tokens
    from app.admission.api import bp as api_bp
    from app.admission.views import bp
    from app.divisions import service as divisions

    app.register_blueprint(api_bp)
    app.register_blueprint(bp)
    app.register_blueprint(node_views.bp)
    if node_views.dashboard_panel not in console.dashboard_panels:
        console.dashboard_panels.append(node_views.dashboard_panel)
        console.nav_entries.extend([
            ("nodes.index", _l("Nodes"), ("ministry_admin", "provincial_admin", "auditor")),
            ("admission.application_list", _l("Applications"), ("ministry_admin", "provincial_admin")),
            ("admission.token_list", _l("Enrollment tokens"), ("ministry_admin", "provincial_admin")),
            ("nodes.resolve", _l("Resolve"), ("ministry_admin", "provincial_admin", "auditor")),
        ])
    cli.applications_cli.add_command(cli_submit.applications_submit)  # the application form's twins
    cli.nodes_cli.add_command(cli_submit.nodes_change)
    for group in (cli.tokens_cli, cli.applications_cli, cli.nodes_cli):
        app.cli.add_command(group)
    for check in (nodes.retired_codes_in_use, applications.retired_codes_pending, tokens.retired_codes_unused):
        if check not in divisions.retirement_checks:
            divisions.retirement_checks.append(check)
