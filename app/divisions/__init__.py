"""GB/T 2260 administrative divisions: codes, levels, parents and revisions."""


def init_app(app) -> None:
    from app.divisions.api import bp as api_bp
    from app.divisions.cli import cli
    from app.divisions.names import division_name
    from app.divisions.views import bp

    app.register_blueprint(bp)
    app.register_blueprint(api_bp)
    app.cli.add_command(cli)
    app.jinja_env.filters["division_name"] = division_name
