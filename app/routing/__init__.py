"""The signed routing table (SPEC §5): publication, serving, history, and the node-side client."""


def publish_after(reason: str, *, force: bool = False):
    def hook(*_args) -> None:
        from app.routing import service

        service.publish(reason, force=force)

    hook.__name__ = f"publish_after_{reason.replace(' ', '_')}"
    return hook


_hooks = {
    "node_admitted": publish_after("node admitted"),
    # Forced for the same reason as a revoked certificate (below): suspending or revoking a node the table
    # does not list (its certificate expired) must still end its sessions cached in every worker.
    "node_status_changed": publish_after("node status", force=True),
    "node_changed": publish_after("node changed"),
}
_health_hook = publish_after("health round")
_certificate_hook = publish_after("certificate changed")
# Every worker forgets its cached node sessions when the version changes (serving.py): a revoked
# certificate ends the node's sessions, so the version changes even when the table does not.
_revocation_hook = publish_after("certificate revoked", force=True)


def init_app(app) -> None:
    from flask_babel import lazy_gettext as _l

    from app import console
    from app.admission import hooks
    from app.health import service as health
    from app.pki import service as pki
    from app.routing.api import bp as api_bp
    from app.routing.cli import cli
    from app.routing.views import banner, bp
    from app.scheduler import registry

    app.register_blueprint(api_bp)
    app.register_blueprint(bp)
    app.cli.add_command(cli)
    for name, hook in _hooks.items():
        registry_list = getattr(hooks, name)
        if hook not in registry_list:
            registry_list.append(hook)
    if _health_hook not in health.status_changed:
        health.status_changed.append(_health_hook)
    if _certificate_hook not in pki.certificate_changed:
        pki.certificate_changed.append(_certificate_hook)
    if _revocation_hook not in pki.certificate_revoked:
        pki.certificate_revoked.append(_revocation_hook)
    if _resign_after_rotation not in pki.route_signer_changed:
        pki.route_signer_changed.append(_resign_after_rotation)
    registry.register(registry.Job("routes.resign", _resign, 600))
    if banner not in console.banner_sources:
        console.banner_sources.append(banner)
    # Not provincial admins: the table lists every province's nodes, and they are scoped to their own.
    entry = ("routes.index", _l("Routes"), ("ministry_admin", "auditor"))
    if entry not in console.nav_entries:
        console.nav_entries.append(entry)


def _resign_after_rotation(actor: str) -> None:
    """Old signatures name the old signer: publish the same table again, signed by the new one."""
    from app.routing import service

    service.publish("route signer rotated", force=True, actor=actor)


def _resign() -> str:
    from app.routing import service

    return service.resign_job()
