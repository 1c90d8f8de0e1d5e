"""Where the CA meets the rest of the registry: `flask ca init`, and admission's hooks (a node admitted,
changed, or revoked) deciding what happens to its certificates.
"""

from __future__ import annotations

from pathlib import Path

from flask import current_app

from app.audit import service as audit
from app.database import serialise, utcnow
from app.errors import ValidationFailed
from app.pki import authority as ca
from app.pki import csr_policy, revocation, service
from app.readable import misleading, shows_nothing

# A certificate's common name holds 64 bytes of UTF-8 (RFC 5280's ub-common-name, as cryptography counts it).
COMMON_NAME_BYTES = 64
# The database lock `flask ca init` holds from storing its CA until commit: one CA per database.
INIT_LOCK = "ca.init"


PASSPHRASE_MIN_LENGTH = 16


def _check_passphrase_length(passphrase: bytes) -> None:
    """The key files are PBKDF2 with few rounds (app.pki.keys): what protects them, the root key `root-offline`
    exports included, is the passphrase's length. `MPIM_CA_PASSPHRASE=a` made a CA. Checked when the keys are
    made; a CA made before keeps working with the passphrase it has."""
    length = len(passphrase.decode("utf-8", "replace"))
    if length >= PASSPHRASE_MIN_LENGTH:
        return
    if current_app.config.get("MPIM_CA_PASSPHRASE"):
        setting, instead = "MPIM_CA_PASSPHRASE", "set a longer one"
    else:  # the file set, or the default one under instance/ (`--generate-passphrase` keeps one that exists)
        path = current_app.config["MPIM_CA_PASSPHRASE_FILE"]
        setting, instead = f"MPIM_CA_PASSPHRASE_FILE ({path})", f"write a longer one to {path}, or remove it for " \
            "`flask ca init --generate-passphrase` to make one"
    raise ValidationFailed(f"{setting} holds a passphrase of {length} characters: the CA's keys need at least "
                           f"{PASSPHRASE_MIN_LENGTH}, since the passphrase is all that protects them. Make one with "
                           f"`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'` and {instead}.",
                           code="weak_passphrase", field="passphrase")


def initialise(*, key_type: str | None = None, actor: str = "cli", generate_passphrase: bool = False) -> dict:
    """`flask ca init`: root + intermediate, then the route signer and the management node's TLS
    certificate, then the first CRL. Refuses to overwrite an existing CA, and refuses a setting the CA
    cannot be made with (naming it) before anything is written. `generate_passphrase`: create
    MPIM_CA_PASSPHRASE_FILE when neither it nor MPIM_CA_PASSPHRASE holds one."""
    if not service.is_ready() and service.database_holds_ca():
        raise ca.CAAlreadyInitialised(
            f"{service.missing_ca_message()} A new CA here would be one that no admitted node trusts, so "
            "`flask ca init` refuses.", code="ca_files_missing")
    if service.is_ready() and not service.database_holds_ca():
        from app.i18n import english
        from app.pki import agreement

        raise ca.CAAlreadyInitialised(f"{english(agreement.no_records_message())} `flask ca init` refuses to make a "
                                      f"second CA in {service.ca_directory()}.", code="database_mismatch")
    config = service.ca_config()
    if key_type:
        config = ca.CAConfig(**{**config.__dict__, "key_type": key_type})
    if config.key_type not in ("ec", "rsa"):
        raise ValidationFailed(f"MPIM_CA_KEY_TYPE is {config.key_type!r}, no key type the CA knows: use 'ec' or "
                               "'rsa' (or `--key-type`).", code="invalid_key_type", field="key_type")
    _check_names(config)
    if generate_passphrase and not current_app.config["MPIM_CA_PASSPHRASE"]:
        service.create_passphrase_file()
    passphrase = service.passphrase()
    _check_passphrase_length(passphrase)
    directory = service.ca_directory()
    there_before = {name for name in ca.INIT_FILES if (directory / name).exists()}
    try:
        ca.init_ca(directory, passphrase, config)
    except ca.CADirectoryUnusable as error:
        raise ValidationFailed(f"MPIM_CA_DIR {directory} cannot hold the CA: {error.message}; nothing was kept.",
                               code=error.code) from error
    # Held until the caller commits. Two inits on two hosts (each its own MPIM_CA_DIR) both passed the checks
    # above while neither had stored its CA; the keys take long to make, so the check is made again here.
    serialise(INIT_LOCK)
    if service.database_holds_ca():
        for name in ca.INIT_FILES:
            if name not in there_before:  # only what this init wrote
                (directory / name).unlink(missing_ok=True)
        raise ca.CAAlreadyInitialised("Another `flask ca init` made this database's CA while this one was making its "
                                      f"keys; `flask ca init` refuses a second CA and kept nothing in {directory}.")
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


def root_offline(export_path: Path, *, actor: str) -> None:
    """`flask ca root-offline`: the root key leaves this server (`authority.root_offline`). Before `flask ca init`
    there is no key to take: said so, rather than that the key is not here any more."""
    if not service.is_ready():
        raise service.CANotReady(service.missing_ca_message())
    ca.root_offline(service.ca_directory(), export_path)
    audit.record("ca.root_offline", export_path.name, actor=actor)


def _check_names(config: ca.CAConfig) -> None:
    """The CA's names as certificates hold them: cryptography's ValueError, out of `flask ca init`, named neither
    the setting nor the bound."""
    for setting, name in (("MPIM_CA_ROOT_NAME", config.root_common_name),
                          ("MPIM_CA_INTERMEDIATE_NAME", config.intermediate_common_name)):
        size = len(name.encode("utf-8"))
        if shows_nothing(name):  # "\u200b\u3000" as much as "   ": a name that shows as nothing is none
            raise ValidationFailed(f"{setting} is {'only spaces or invisible characters' if name else 'empty'}: a "
                                   "CA certificate needs a name (leave the setting out for the default).",
                                   code="invalid_ca_name")
        if misleading(name):  # every node shows the CA's name; a bidi override would show another one
            raise ValidationFailed(f"{setting} holds a control or bidi character: a CA certificate's name must read "
                                   "as it is.", code="invalid_ca_name")
        if size > COMMON_NAME_BYTES:
            raise ValidationFailed(f"{setting} is {size} bytes in UTF-8; a certificate's common name holds at most "
                                   f"{COMMON_NAME_BYTES} (about 21 Chinese characters): shorten it.",
                                   code="invalid_ca_name")


def _reviewer(application):
    """The admin who approved `application` (None for "system"): a refusal to certify its key (key_in_use) names
    the holder to them as far as their scope reaches, as `uniqueness.require_key_free` does."""
    from sqlalchemy import select

    from app.auth.models import User
    from app.extensions import db

    return db.session.scalar(select(User).where(User.username == application.reviewed_by)) \
        if application.reviewed_by else None


def node_admitted(node, application) -> None:
    """admission hook: approval issues the certificate from the application's CSR."""
    service.issue_for_node(node, csr_policy.pem_block_of(application.csr_pem),
                           actor=application.reviewed_by or "system", by=_reviewer(application))


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
    service.issue_for_node(node, csr_policy.pem_block_of(application.csr_pem),
                           actor=application.reviewed_by or "system", by=_reviewer(application))
    if "endpoint" in changes:
        from app.admission.information import endpoint_host

        old_host, new_host = (endpoint_host(value) for value in changes["endpoint"])
        if old_host != new_host:
            superseded = [row for row in previous if revocation.revoke_with_node(row, "superseded", now=utcnow())]
            revocation.regenerate_crl()
            if superseded:  # the sessions they opened end with them, as with an admin's revocation
                for hook in service.certificate_revoked:
                    hook(node.node_id)
