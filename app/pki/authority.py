"""The CA (issue 4): a root, an issuing intermediate, and what the intermediate signs.

Files in the CA directory (0700; keys encrypted PKCS#8, 0600; certificates 0644):

    root.pem, root.key                  EC P-384 (RSA 3072 with key_type "rsa"), ~20 years; the key
                                        may be taken offline (`root_offline`): nothing here needs it
                                        after `init_ca`
    intermediate.pem, intermediate.key  EC P-256 (RSA 3072), ~10 years, CA:TRUE pathlen:0; signs
                                        node and service certificates, the CRL and OCSP responses
    route-signer.pem, route-signer.key  EC P-256; EKU documentSigning (RFC 9336): signs route tables
                                        (SPEC §5) and nothing else: it is not a TLS identity
    management.pem, management.key      EC P-256; serverAuth+clientAuth: the management node's own
                                        TLS identity (health polling, HTTPS)

Rotation keeps history: a new pair is first staged as `<role>.<new serial hex>.new.pem/.key`, so the
pair in use is untouched until its caller committed the new certificate; installing it links the
current pair to `<role>.<old serial hex>.pem/.key`, then replaces it (key first, certificate last, each
an atomic rename), holding `.rotation.lock` so two installs cannot interleave. Other processes (gunicorn
workers, the scheduler) notice a replaced certificate file on their next use of the CA and load the
new pair (`refresh_service_keys`), so none keeps signing with a rotated key.

Pure domain code: no database, no request. The service layer stores, audits and publishes what
this module returns. Times are aware UTC; `clock` is injectable for tests.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask_babel import lazy_gettext as _l

from app.errors import Conflict, DomainError, ValidationFailed
from app.i18n import english
from app.pki import crl, csr_policy, keys, ocsp, profiles
from app.pki.keys import KeyType, SigningKey, now_utc, signature_hash
from app.readable import shows_nothing

ServiceRole = Literal["route-signer", "management"]
SERVICE_ROLES: tuple[ServiceRole, ...] = ("route-signer", "management")
BACKDATE = timedelta(minutes=1)  # tolerate clients whose clocks run a little behind ours
MANAGEMENT_NODE_ID = "10000000002015000001"  # SPEC §2: the ministry's management node
ROTATION_LOCK = ".rotation.lock"  # the service pairs' installs, one at a time
CA_FILES = ("root.pem", "root.key", "intermediate.pem", "intermediate.key")
# Every file `init_ca` writes, in one place: an `init` that lost the race to another removes what it wrote of
# these (`lifecycle.initialise`), and a file init_ca writes that this list misses would stay behind.
INIT_FILES = (*CA_FILES, *(f"{role}.{suffix}" for role in SERVICE_ROLES for suffix in ("key", "pem")), ROTATION_LOCK)
Clock = Callable[[], datetime]
log = logging.getLogger(__name__)


class CAAlreadyInitialised(Conflict):
    code = "ca_exists"


class RootKeyOffline(Conflict):
    code = "root_offline"


class CADirectoryUnusable(ValidationFailed):
    """The CA's files could not be written (no permission, a full disk); `init_ca` removed what it had written."""

    code = "ca_dir_unusable"


class CAExpired(DomainError):
    code = "ca_expired"
    status = 503


@dataclass(frozen=True)
class CAConfig:
    """Names, algorithms, lifetimes and the addresses written into every issued certificate."""

    organisation: str = "Ministry of Public Security"
    root_common_name: str = "MPIM Root CA"
    intermediate_common_name: str = "MPIM Issuing CA 1"
    country: str = "CN"
    key_type: KeyType = "ec"
    crl_url: str = "http://127.0.0.1:5000/ca/crl.crl"
    root_crl_url: str = "http://127.0.0.1:5000/ca/root-crl.crl"
    ocsp_url: str = "http://127.0.0.1:5000/ca/ocsp"
    root_validity_days: int = 7305
    intermediate_validity_days: int = 3653
    node_validity_days: int = 90
    service_validity_days: int = 365
    management_host: str = "127.0.0.1"
    management_node_id: str = MANAGEMENT_NODE_ID


def is_initialised(directory: Path) -> bool:
    return (directory / "intermediate.pem").exists()


def _read_certificate(path: Path) -> x509.Certificate:
    """A CA certificate file, or `CAKeyUnreadable` naming it: one cut short or overwritten is a 503 and a
    readiness state, not cryptography's ValueError (a 500 on every page that asks for the CA)."""
    try:
        return x509.load_pem_x509_certificate(keys.read_ca_file(path))
    except ValueError as error:
        raise keys.CAKeyUnreadable(_l("%(file)s is not a PEM certificate.", file=path.name)) from error


def service_certificate(directory: Path, role: ServiceRole) -> x509.Certificate:
    """The certificate of the service pair in use, from its file, opening no key: checking what it signed needs
    no more (the CA passphrase may be wrong)."""
    return _read_certificate(directory / f"{role}.pem")


def _ca_name(config: CAConfig, common_name: str) -> x509.Name:
    return profiles.subject_name(config.country, config.organisation, common_name)


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _sign(builder: x509.CertificateBuilder, key: SigningKey) -> x509.Certificate:
    return builder.sign(key.signer(), signature_hash(key))


def init_ca(directory: Path, passphrase: bytes, config: CAConfig, *, clock: Clock = now_utc) -> Authority:
    """Create the root, the intermediate, the route signer and the management node's certificate.

    Refuses (`CAAlreadyInitialised`) when any CA file is there already: a CA is never overwritten."""
    if any((directory / name).exists() for name in CA_FILES):
        raise CAAlreadyInitialised(f"A CA exists already in {directory}; refusing to overwrite it.")
    now = clock()
    root_key = keys.FileSigningKey(keys.generate(config.key_type, "root"))
    root = _sign(profiles.ca_certificate(_ca_name(config, config.root_common_name), None, root_key.public_key(),
                                         now - BACKDATE, now + timedelta(days=config.root_validity_days), None),
                 root_key)
    intermediate_key = keys.FileSigningKey(keys.generate(config.key_type, "intermediate"))
    intermediate_end = min(now + timedelta(days=config.intermediate_validity_days), root.not_valid_after_utc)
    intermediate = _sign(profiles.ca_certificate(_ca_name(config, config.intermediate_common_name), root,
                                                 intermediate_key.public_key(), now - BACKDATE, intermediate_end, 0,
                                                 crl_url=config.root_crl_url),
                         root_key)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except FileExistsError as error:
        raise CADirectoryUnusable(_l("it is a file, not a directory")) from error
    except OSError as error:
        raise CADirectoryUnusable(keys.os_error_reason(error)) from error
    written: list[Path] = []  # removed again if a write fails: half a CA would refuse every later `init`
    try:
        for name, write in (("root.key", lambda path: keys.write_private_key(path, root_key.signer(), passphrase)),
                            ("root.pem", lambda path: keys.write_public_file(path, pem(root))),
                            ("intermediate.key",
                             lambda path: keys.write_private_key(path, intermediate_key.signer(), passphrase)),
                            ("intermediate.pem", lambda path: keys.write_public_file(path, pem(intermediate)))):
            write(directory / name)
            written.append(directory / name)
        authority = Authority(directory, config, root_certificate=root, intermediate_certificate=intermediate,
                              intermediate_key=intermediate_key, passphrase=passphrase, clock=clock)
        for role in SERVICE_ROLES:
            pair = [directory / f"{role}.key", directory / f"{role}.pem"]
            written += [path for path in pair if not path.exists()]
            authority.create_service_certificate(role)
    except FileExistsError as error:  # another `init` won the race
        _remove(written)
        raise CAAlreadyInitialised(f"A CA exists already in {directory}; refusing to overwrite it.") from error
    except OSError as error:
        _remove(written)
        raise CADirectoryUnusable(keys.os_error_reason(error)) from error
    return authority


def _remove(paths: list[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def root_offline(directory: Path, export_path: Path) -> None:
    """Move the root key out of the server (to `export_path`, 0600, never overwritten); the
    intermediate keeps issuing. The root certificate stays: it is the trust anchor we publish."""
    source = directory / "root.key"
    if not source.exists():
        raise RootKeyOffline("The root key is not on this server any more.")
    try:
        keys.write_new_file(export_path, source.read_bytes(), 0o600)
    except FileExistsError as error:
        raise Conflict(f"{export_path} exists; refusing to overwrite it.", code="export_exists") from error
    except OSError as error:  # no such folder, no permission, a full disk: the key stays where it is
        raise ValidationFailed(f"Cannot write {export_path}: {error.strerror or error}; the root key stays on "
                               "this server.", code="export_failed") from error
    source.unlink()


@dataclass(frozen=True)
class StagedServicePair:
    """A new service pair on disk beside the pair in use, not in use yet (`Authority.stage_service_pair`)."""

    role: ServiceRole
    certificate: x509.Certificate
    key: SigningKey
    key_path: Path
    certificate_path: Path


def discard_service_pair(staged: StagedServicePair) -> None:
    """Remove a staged pair's files (its rotation was not committed); the pair in use is untouched."""
    for path in (staged.key_path, staged.certificate_path):
        path.unlink(missing_ok=True)


class Authority:
    """The loaded CA: certificates in memory, every key behind `SigningKey`."""

    route_signer_certificate: x509.Certificate | None = None
    route_signer_key: SigningKey | None = None
    management_certificate: x509.Certificate | None = None
    management_key: SigningKey | None = None

    def __init__(self, directory: Path, config: CAConfig, *, root_certificate: x509.Certificate,
                 intermediate_certificate: x509.Certificate, intermediate_key: SigningKey, passphrase: bytes,
                 clock: Clock = now_utc):
        self.directory, self.config, self.clock = directory, config, clock
        self.root_certificate, self.intermediate_certificate = root_certificate, intermediate_certificate
        self.intermediate_key = intermediate_key
        self._passphrase = passphrase
        self._leaf_hash = signature_hash(intermediate_key)
        self._templates: dict[tuple[tuple[x509.ObjectIdentifier, ...], bool], x509.CertificateBuilder] = {}
        self._service_files: dict[ServiceRole, tuple | None] = {}

    @classmethod
    def load(cls, directory: Path, passphrase: bytes, config: CAConfig, *, clock: Clock = now_utc) -> Authority:
        """Read the CA from `directory`; the root key is never read, so it may be offline."""
        authority = cls(directory, config, passphrase=passphrase, clock=clock,
                        root_certificate=_read_certificate(directory / "root.pem"),
                        intermediate_certificate=_read_certificate(directory / "intermediate.pem"),
                        intermediate_key=keys.FileSigningKey.load(directory / "intermediate.key", passphrase))
        authority.refresh_service_keys(strict=True)
        return authority

    def _file_identity(self, role: ServiceRole) -> tuple | None:
        """What changes when either file of a service pair is replaced; None without a certificate."""
        def identity(path: Path) -> tuple[int, int, int] | None:
            try:
                status = os.stat(path)
            except FileNotFoundError:
                return None
            return status.st_ino, status.st_mtime_ns, status.st_size

        certificate = identity(self.directory / f"{role}.pem")
        return None if certificate is None else (certificate, identity(self.directory / f"{role}.key"))

    def refresh_service_keys(self, *, strict: bool = False) -> None:
        """Load a service pair whose files changed since this process read them (another process
        rotated it). A pair that cannot be used is tried again only once a file changes again: it
        raises with `strict` (loading the CA), else it is logged and the pair in use stays."""
        for role in SERVICE_ROLES:
            identity = self._file_identity(role)
            if identity is None or identity == self._service_files.get(role):
                continue
            with self._rotation_lock(shared=True):  # never between a rotation's two renames
                self._service_files[role] = self._file_identity(role)
                try:
                    certificate, key = self._read_service_pair(role)
                except keys.CAKeyUnreadable as error:
                    if strict:
                        raise
                    log.warning("keeping the %s pair in use: %s", role, english(error.message))
                    continue
            self._hold(role, certificate, key)

    def _read_service_pair(self, role: ServiceRole) -> tuple[x509.Certificate, SigningKey]:
        certificate = _read_certificate(self.directory / f"{role}.pem")
        key = keys.FileSigningKey.load(self.directory / f"{role}.key", self._passphrase)
        if key.public_key().public_numbers() != certificate.public_key().public_numbers():
            raise keys.CAKeyUnreadable(_l("%(key)s is not the key of %(certificate)s.", key=f"{role}.key",
                                          certificate=f"{role}.pem"))
        return certificate, key

    @property
    def root_key_online(self) -> bool:
        return (self.directory / "root.key").exists()

    def chain_pem(self) -> bytes:
        """Intermediate then root: what follows a leaf certificate when it is handed out."""
        return pem(self.intermediate_certificate) + pem(self.root_certificate)

    # --- issuance ---------------------------------------------------------------------------------

    def _validity(self, days: int, not_before: datetime | None, not_after: datetime | None
                  ) -> tuple[datetime, datetime]:
        """notBefore backdated by a minute; notAfter never past the intermediate's own. Refused (CAExpired) once
        the intermediate has ended: the backdated start would otherwise let it sign, for a minute, certificates
        expired the moment they are issued."""
        if days <= 0:
            raise ValidationFailed(_l("A validity must be at least one day."), code="invalid_validity",
                                   field="validity")
        for value in (not_before, not_after):
            if value is not None and value.tzinfo is None:
                raise ValidationFailed("Certificate validity times must be timezone-aware.", code="invalid_validity")
        now = self.clock()
        ca_end = self.intermediate_certificate.not_valid_after_utc
        if ca_end <= now:
            raise CAExpired(_l("The issuing CA certificate expired on %(date)s: no certificate is issued until "
                               "there is a new CA.", date=f"{ca_end:%Y-%m-%d %H:%M:%S} UTC"))
        start = not_before or now - BACKDATE
        end = min(not_after or now + timedelta(days=days), ca_end)
        if end <= start:
            if end == ca_end:
                raise CAExpired(_l("The issuing CA certificate expires before this certificate would start."))
            raise ValidationFailed(_l("A certificate cannot end before it starts."), code="invalid_validity")
        return start, end

    def _leaf(self, public_key, subject: x509.Name, names: list[x509.GeneralName],
              usages: tuple[x509.ObjectIdentifier, ...], validity: tuple[datetime, datetime]) -> x509.Certificate:
        rsa_key = isinstance(public_key, rsa.RSAPublicKey)
        template = self._templates.get((usages, rsa_key))
        if template is None:
            template = self._templates[usages, rsa_key] = profiles.leaf_template(
                self.intermediate_certificate, usages=usages, rsa_key=rsa_key, crl_url=self.config.crl_url,
                ocsp_url=self.config.ocsp_url)
        builder = profiles.leaf_certificate(template, subject, public_key, names=names, not_before=validity[0],
                                            not_after=validity[1])
        return builder.sign(self.intermediate_key.signer(), self._leaf_hash)

    def issue_node_certificate(self, csr: x509.CertificateSigningRequest, *, node_id: str, org_name: str,
                               endpoint_host: str, validity_days: int | None = None,
                               not_before: datetime | None = None, not_after: datetime | None = None
                               ) -> x509.Certificate:
        """SPEC §3.4: a node's certificate. The CA decides subject and extensions; the CSR gives
        only its public key (its subject, SANs, CA:true, key usages are ignored).

        CN = node id, O = organisation (cut at 64 characters), C = CN; SAN = the endpoint host and
        `urn:mpim:node:<node id>`; serverAuth+clientAuth. `not_before`/`not_after` override the
        validity (tests make expired certificates with them); the intermediate's notAfter still clips."""
        names = profiles.node_names(node_id, endpoint_host)
        if shows_nothing(org_name):  # "\u200b\u3000" as much as " ": no organisation to name
            raise ValidationFailed(_l("The organisation name is empty."), code="invalid_org_name", field="org_name")
        csr_policy.check_csr_key(csr)  # never issue for a refused key, whatever the caller checked
        public_key = csr.public_key()
        validity = self._validity(validity_days or self.config.node_validity_days, not_before, not_after)
        subject = profiles.subject_name(self.config.country, org_name, node_id)
        return self._leaf(public_key, subject, names, profiles.TLS_USAGES, validity)

    def issue_service_certificate(self, role: ServiceRole, public_key: ec.EllipticCurvePublicKey, *,
                                  validity_days: int | None = None, not_before: datetime | None = None,
                                  not_after: datetime | None = None) -> x509.Certificate:
        """A certificate for one of the management node's own keys (no files touched).

        route-signer: CN "MPIM route signer", no SAN, EKU documentSigning only, so a stolen route
        signer cannot pose as a TLS peer. management: CN = the management node id, SAN = its host
        and `urn:mpim:node:<id>`, serverAuth+clientAuth."""
        validity = self._validity(validity_days or self.config.service_validity_days, not_before, not_after)
        if role == "route-signer":
            return self._leaf(public_key, _ca_name(self.config, "MPIM route signer"), [],
                              profiles.ROUTE_SIGNING_USAGES, validity)
        if role == "management":
            node_id = self.config.management_node_id
            return self._leaf(public_key, _ca_name(self.config, node_id),
                              profiles.node_names(node_id, self.config.management_host), profiles.TLS_USAGES, validity)
        raise ValidationFailed(f"Unknown service certificate role {role!r}.", code="invalid_role")

    def create_service_certificate(self, role: ServiceRole) -> x509.Certificate:
        """A fresh EC P-256 key and its certificate, written to the directory and in use at once; the previous
        pair, if any, is kept as `<role>.<old serial hex>.pem/.key`. Returns the new certificate. For a caller
        with nothing to commit (`init_ca`); one that records the pair in a database stages it, commits, then
        installs it (`stage_service_pair`)."""
        staged = self.stage_service_pair(role)
        self.install_service_pair(staged)
        return staged.certificate

    def stage_service_pair(self, role: ServiceRole) -> StagedServicePair:
        """A fresh EC P-256 key and its certificate, written beside the pair in use under names of their own
        (`<role>.<new serial hex>.new.key/.pem`): the pair in use stays in use, on disk and here, until
        `install_service_pair`; `discard_service_pair` removes the new files instead."""
        key = keys.generate("ec", "service")
        certificate = self.issue_service_certificate(role, key.public_key())
        stem = f"{role}.{certificate.serial_number:x}.new"
        staged = StagedServicePair(role, certificate, keys.FileSigningKey(key), self.directory / f"{stem}.key",
                                   self.directory / f"{stem}.pem")
        try:
            keys.write_private_key(staged.key_path, key, self._passphrase)
            keys.write_public_file(staged.certificate_path, pem(certificate))
        except BaseException:
            discard_service_pair(staged)
            raise
        return staged

    def install_service_pair(self, staged: StagedServicePair) -> None:
        """Put a staged pair in place of the pair in use, which is kept as `<role>.<old serial hex>.pem/.key`:
        key first, certificate last, each an atomic rename, under the rotation lock."""
        role = staged.role
        with self._rotation_lock():
            current_pem, current_key = self.directory / f"{role}.pem", self.directory / f"{role}.key"
            if current_pem.exists():
                old_serial = format(x509.load_pem_x509_certificate(current_pem.read_bytes()).serial_number, "x")
                for current in (current_pem, current_key):
                    archived = self.directory / f"{role}.{old_serial}{current.suffix}"
                    if current.exists() and not archived.exists():
                        os.link(current, archived)
            os.replace(staged.key_path, current_key)
            os.replace(staged.certificate_path, current_pem)
            self._hold(role, staged.certificate, staged.key)
            self._service_files[role] = self._file_identity(role)

    @contextmanager
    def service_files_settled(self) -> Iterator[None]:
        """For callers that read a service pair's files themselves (ssl's `load_cert_chain`)."""
        with self._rotation_lock(shared=True):
            yield

    @contextmanager
    def _rotation_lock(self, *, shared: bool = False) -> Iterator[None]:
        """One rotation at a time across processes, and no reader in the middle of one (an advisory
        lock on a file in the CA directory: exclusive to rotate, shared to read a rotated pair)."""
        with open(self.directory / ROTATION_LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def rotate_route_signer(self) -> x509.Certificate:
        """SPEC §5: a new route-signing key and certificate; the old pair stays on disk, archived."""
        return self.create_service_certificate("route-signer")

    def _hold(self, role: ServiceRole, certificate: x509.Certificate, key: SigningKey) -> None:
        if role == "route-signer":
            self.route_signer_certificate, self.route_signer_key = certificate, key
        else:
            self.management_certificate, self.management_key = certificate, key

    # --- revocation ---------------------------------------------------------------------------------

    def build_crl(self, revoked: Iterable[crl.RevokedEntry | tuple], *, this_update: datetime,
                  next_update: datetime, crl_number: int) -> x509.CertificateRevocationList:
        """The intermediate's full CRL; see `crl.build_crl`."""
        return crl.build_crl(revoked, issuer=self.intermediate_certificate, signing_key=self.intermediate_key,
                             this_update=this_update, next_update=next_update, crl_number=crl_number)

    def load_root_key(self, path: Path | None = None) -> SigningKey:
        """The root key from the CA directory, or from `path` when it was taken offline and is
        brought back for a moment (`flask ca root-crl --root-key`)."""
        path = path or self.directory / "root.key"
        if not path.exists():
            raise RootKeyOffline("The root key is offline: bring it back with --root-key PATH to sign the root CRL.")
        key = keys.FileSigningKey.load(path, self._passphrase)
        if key.public_key().public_numbers() != self.root_certificate.public_key().public_numbers():
            raise Conflict(f"{path.name} is not the root certificate's key.", code="wrong_root_key")
        return key

    def build_root_crl(self, root_key: SigningKey, revoked: Iterable[crl.RevokedEntry | tuple] = (), *,
                       this_update: datetime, next_update: datetime, crl_number: int) -> x509.CertificateRevocationList:
        """The root's CRL: the certificates the root signed that are revoked. The root signs only the
        intermediate, so the list is empty until the intermediate's key is compromised and the ministry revokes
        it (`revoked`: `flask ca revoke-intermediate`; recovery is then a new CA). Empty, it exists so that relying
        parties checking every level of the chain (`openssl verify -crl_check_all`) find a current CRL for the
        intermediate too."""
        return crl.build_crl(revoked, issuer=self.root_certificate, signing_key=root_key, this_update=this_update,
                             next_update=next_update, crl_number=crl_number)

    def respond_ocsp(self, request_der: bytes, lookup: Callable[[int], ocsp.CertStatusInfo], *,
                     validity: timedelta = ocsp.RESPONSE_VALIDITY) -> bytes:
        """An RFC 6960 response (DER) signed by the intermediate; see `ocsp.respond`."""
        return ocsp.respond(request_der, lookup, issuer=self.intermediate_certificate,
                            signing_key=self.intermediate_key, validity=validity, clock=self.clock)
