"""Node sessions (A.2): proof of key possession in exchange for a bearer token."""


def init_app(app) -> None:
    from app.admission import hooks
    from app.pki import service as pki
    from app.scheduler import registry
    from app.sessions import service
    from app.sessions.api import bp

    app.register_blueprint(bp)
    if service.end_sessions not in hooks.node_status_changed:
        hooks.node_status_changed.append(service.end_sessions)
    if service.end_node_sessions not in pki.certificate_revoked:
        pki.certificate_revoked.append(service.end_node_sessions)
    registry.register(registry.Job("sessions.cleanup", service.cleanup, 3600))
