"""Where the CA meets the rest of the registry: `flask ca init`, and admission's hooks (a node admitted,
changed, or revoked) deciding what happens to its certificates.
"""

from __future__ import annotations

from flask import current_app

from app.audit import service as audit
from app.database import utcnow
from app.pki import authority as ca
from app.pki import revocation, service


def initialise(*, key_type: str | None = None, actor: str = "cli") -> dict:
    """`flask ca init`: root + intermediate, then the route signer and the management node's TLS
    certificate, then the first CRL. Refuses to overwrite an existing CA."""
    if not service.is_ready() and service.database_holds_ca():
        raise ca.CAAlreadyInitialised(
            f"{service.missing_ca_message()} A new CA here would be one that no admitted node trusts, so "
            "`flask ca init` refuses.", code="ca_files_missing")
    config = service.ca_config()
    if key_type:
        config = ca.CAConfig(**{**config.__dict__, "key_type": key_type})
    ca.init_ca(service.ca_directory(), service.passphrase(), config)
    current_app.extensions.pop("mpim_authority", None)
    loaded = service.authority()
    audit.record("ca.init", loaded.intermediate_certificate.subject.rfc4514_string(),
                 {"key_type": config.key_type, "root_not_after": loaded.root_certificate.not_valid_after_utc},
                 actor=actor)
    signer = service.store(loaded.route_signer_certificate, "route_signer", None, actor)
    management = service.store(loaded.management_certificate, "management", None, actor)
    revocation.regenerate_crl(actor=actor)
    revocation.regenerate_root_crl(actor=actor)
    return {"root": service.fingerprint(loaded.root_certificate),
            "intermediate": service.fingerprint(loaded.intermediate_certificate),
            "route_signer": signer.sha256, "management": management.sha256}


def node_admitted(node, application) -> None:
    """admission hook: approval issues the certificate from the application's CSR."""
    service.issue_for_node(node, application.csr_pem, actor=application.reviewed_by or "system")


def node_status_changed(node, old: str, new: str, reason: str) -> None:
    """admission hook: revoking a node revokes all its certificates."""
    if new == "revoked":
        now = utcnow()
        for row in service.node_certificates(node.node_id):
            if row.revoked_at is None and row.not_after > now:
                revocation.revoke_with_node(row, "cessation_of_operation", now=now)
        revocation.regenerate_crl()


def node_changed(node, application, changes: dict) -> None:
    """admission hook: an approved change with a new CSR gets a new certificate; when the endpoint
    host changed, the old certificates name a host the node no longer has and are superseded."""
    if not application.csr_pem:
        return
    previous = [row for row in service.node_certificates(node.node_id) if row.revoked_at is None]
    service.issue_for_node(node, application.csr_pem, actor=application.reviewed_by or "system")
    if "endpoint" in changes:
        from app.admission.information import endpoint_host

        old_host, new_host = (endpoint_host(value) for value in changes["endpoint"])
        if old_host != new_host:
            for row in previous:
                revocation.revoke_with_node(row, "superseded", now=utcnow())
            revocation.regenerate_crl()
