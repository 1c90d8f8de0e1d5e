"""The node's side of SPEC §4: applying, fetching the certificate, node sessions, route pulls, renewal.

Plain HTTP(S) with the standard library against the management node; the identity (key, certificate, CA
files) lives under the data directory's `tls/`, private key 0600.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app import strict_json
from app.errors import DomainError, ValidationFailed

# The largest answer read from the management node: the largest routing table a route client takes
# (app.routing.client.DEFAULT_MAX_BODY_SIZE); certificates, CRLs and JSON answers are far smaller.
REGISTRY_ANSWER_LIMIT = 8 * 1024 * 1024

# What an operator told `registry_unreachable` does next. `init --if-missing` takes a corrected address only before
# the node has applied (Node.amend_config); after, the address is config.json's or MPIM_NODE_REGISTRY_URL's.
UNREACHABLE_NEXT = ("is the management node running? correct its address with `init --if-missing --registry URL` "
                    "(before the node has applied; after, in config.json or MPIM_NODE_REGISTRY_URL)")


class RegistryError(DomainError):
    """The management node refused or could not be reached; `code` is its error code when it sent one,
    `retry_after` its Retry-After header when it sent one (a 503 while its CA key cannot be opened), and `what`
    the request it refused, in the words `RegistryClient.fail` was given (the CLI's line for a wait names it)."""

    code = "registry_error"
    status = 502
    retry_after: str | None = None
    what: str | None = None


class NotJoined(DomainError):
    code, status = "not_joined", 409


class CannotWrite(DomainError):
    """A file the node or its operator asked for could not be written (no such directory, no permission, a full
    disk, a name too long): the message names the path."""

    code = "cannot_write"


class CannotRead(DomainError):
    """A file the node keeps in its data directory could not be read (removed, no permission, a directory in its
    place): the message names the path."""

    code = "cannot_read"


@dataclass
class HTTPResult:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        """The answer's document, read as strictly as the node reads a peer's envelope (app.strict_json): an
        answer with a key twice, a BOM or in UTF-16 is a RegistryError saying so, not a value guessed at."""
        try:
            return strict_json.parse(self.body)
        except strict_json.NotStrictJSON as error:
            raise RegistryError(f"the management node answered HTTP {self.status} with a body that is not strict "
                                f"JSON: {error}") from None


class Identity:
    """The files of a node's identity: its key, its certificate (with the chain) and the CA's certificates."""

    def __init__(self, data_dir: Path):
        self.dir = data_dir / "tls"
        self.key_file = self.dir / "node.key"
        self.cert_file = self.dir / "node.pem"
        self.ca_file = self.dir / "ca.pem"
        self.chain_file = self.dir / "chain.pem"
        self.bundle_file = self.dir / "ca-bundle.pem"
        self.signer_file = self.dir / "route-signer.pem"
        self.crl_file = self.dir / "crl.crl"  # the intermediate's CRL (DER), the route signer is checked against
        self.root_crl_file = self.dir / "root-crl.crl"  # the root's CRL (DER), the intermediate is checked against
        self.pending_key_file = self.dir / "pending.key"

    def has_key(self) -> bool:
        return self.key_file.exists()

    def has_certificate(self) -> bool:
        return self.cert_file.exists()

    @staticmethod
    def new_key() -> ec.EllipticCurvePrivateKey:
        """A new EC P-256 key, in memory only until `keep_key` writes it."""
        return ec.generate_private_key(ec.SECP256R1())

    def generate_key(self, path: Path | None = None) -> ec.EllipticCurvePrivateKey:
        """A new key, kept (`keep_key`)."""
        key = self.new_key()
        self.keep_key(key, path)
        return key

    def keep_key(self, key: ec.EllipticCurvePrivateKey, path: Path | None = None) -> None:
        """`key` written unencrypted but readable by the node's user only (0600)."""
        write_private(path or self.key_file, key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))

    def key(self, path: Path | None = None):
        return serialization.load_pem_private_key((path or self.key_file).read_bytes(), password=None)

    @staticmethod
    def csr_for(key, common_name: str = "mpim-node") -> str:
        """The CA decides subject and extensions (SPEC §3); the CSR only proves the key."""
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode("ascii")

    def certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def fingerprint(self) -> str:
        return self.certificate().fingerprint(hashes.SHA256()).hex()

    def store_certificate(self, pem_chain: bytes) -> None:
        """The node certificate followed by its chain, as the management node serves it."""
        certificates = x509.load_pem_x509_certificates(pem_chain)
        if not certificates:
            raise RegistryError("the management node sent no certificate")
        write_atomic(self.cert_file, pem_chain)

    def store_ca(self, root_pem: bytes, chain_pem: bytes, signer_pem: bytes | None = None) -> None:
        write_atomic(self.ca_file, root_pem)
        write_atomic(self.chain_file, chain_pem)
        write_atomic(self.bundle_file, root_pem + chain_pem)
        if signer_pem is not None:
            write_atomic(self.signer_file, signer_pem)

    def sign_session(self, node_id: str, timestamp: str, nonce: str, key_file: Path | None = None) -> str:
        """A.2: ECDSA-SHA256 (DER) over node_id, timestamp and nonce joined by newlines, base64; with the
        current key unless `key_file` names another (the pending key)."""
        message = f"{node_id}\n{timestamp}\n{nonce}".encode()
        return base64.b64encode(self.key(key_file).sign(message, ec.ECDSA(hashes.SHA256()))).decode("ascii")


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """`data` in `path`, whole or not at all: written beside it and renamed over it. When that fails (a full
    disk) the OSError is raised and the temporary file is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, 0o600)


def registry_context(ca_file: str | None) -> ssl.SSLContext | None:
    """The TLS context for an https management node whose CA certificates are in `ca_file` (None: the system's).
    A file that cannot be read or holds no certificate is refused naming it (invalid_config), at `init` before
    anything is written and whenever the node is opened, where it failed with a traceback."""
    if ca_file is None or ca_file == "":
        return None
    if not isinstance(ca_file, str):
        raise ValidationFailed(f"registry_ca_file ({ca_file!r}) in config.json must be a file name",
                               code="invalid_config")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except ssl.SSLError as error:
        reason = f"it holds no certificate OpenSSL can read ({error.reason})"
    except OSError as error:
        reason = error.strerror or str(error)
    raise ValidationFailed(f"the management node's CA file {ca_file} (`init --registry-ca`, registry_ca_file in "
                           f"config.json) cannot be used: {reason}", code="invalid_config")


class RegistryClient:
    """JSON over HTTP(S) to the management node; a node session is opened when needed and kept in memory."""

    def __init__(self, base_url: str, identity: Identity, *, ca_file: str | None = None, timeout: float = 15):
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self._context = registry_context(ca_file)
        self._session: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # --- plumbing ----------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, body: dict | None = None, headers: dict | None = None,
                bearer: str | None = None) -> HTTPResult:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, method=method,
                                         headers={"Accept": "application/json", **(headers or {})})
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if bearer:
            request.add_header("Authorization", f"Bearer {bearer}")
        try:
            try:
                response = urllib.request.urlopen(request, timeout=self.timeout, context=self._context)
            except urllib.error.HTTPError as error:
                response = error
            with response:
                headers = dict(response.headers.items())
                return HTTPResult(response.code, headers, self._read(response, headers, f"{method} {path}"))
        except http.client.HTTPException as error:  # IncompleteRead, BadStatusLine...: no OSError
            raise RegistryError(f"the management node at {self.base_url} is unreachable: its answer to {method} "
                                f"{path} was cut short or is not HTTP ({error!r}); {UNREACHABLE_NEXT}",
                                code="registry_unreachable") from None
        except OSError as error:
            raise RegistryError(f"the management node at {self.base_url} is unreachable: {error}; {UNREACHABLE_NEXT}",
                                code="registry_unreachable") from None

    def _read(self, response, headers: dict[str, str], what: str) -> bytes:
        """The answer's body, at most REGISTRY_ANSWER_LIMIT bytes: one announcing more is refused before a byte
        of it is read, one running past it when it is read (`registry_answer_too_large`). A body shorter than its
        Content-Length is IncompleteRead, which `read(amount)` does not raise by itself."""
        length = _content_length(headers)
        if length is not None and length > REGISTRY_ANSWER_LIMIT:
            raise RegistryError(f"the answer of the management node at {self.base_url} to {what} announces "
                                f"{length} bytes, past the {REGISTRY_ANSWER_LIMIT} this node reads",
                                code="registry_answer_too_large")
        body = response.read(REGISTRY_ANSWER_LIMIT + 1)
        if len(body) > REGISTRY_ANSWER_LIMIT:
            raise RegistryError(f"the answer of the management node at {self.base_url} to {what} runs past "
                                f"{REGISTRY_ANSWER_LIMIT} bytes", code="registry_answer_too_large")
        if length is not None and len(body) < length:
            raise http.client.IncompleteRead(body, length - len(body))
        return body

    @staticmethod
    def fail(result: HTTPResult, what: str) -> RegistryError:
        try:
            error = result.json()["error"]
            failure = RegistryError(f"{what}: {error.get('message')}", code=error.get("code"), status=result.status)
        except (RegistryError, KeyError, TypeError, AttributeError):
            failure = RegistryError(f"{what}: HTTP {result.status}", status=result.status)
        failure.retry_after = next((value for name, value in result.headers.items()
                                    if name.lower() == "retry-after"), None)
        failure.what = what
        return failure

    def fetch_ca(self) -> None:
        """The trust anchor, the issuing chain and the route signer (SPEC §4 `/ca/*`), kept as they come: only
        when applying to join, the one moment the node takes a root on the management node's word. Afterwards
        the root is never fetched again (`fetch_signer`); a new root is the operator's `trust-root FILE`
        (docs/operations.md)."""
        parts = {name: self._fetch_ca_file(name) for name in ("ca.pem", "chain.pem", "route-signer.pem")}
        self.identity.store_ca(parts["ca.pem"], parts["chain.pem"], parts["route-signer.pem"])

    def fetch_signer(self) -> tuple[bytes, bytes]:
        """The route signer certificate and the issuing chain the management node serves (`/ca/route-signer.pem`,
        `/ca/chain.pem`), as they come and kept nowhere: the caller takes them only once they chain to the root
        the node holds and a table they sign is accepted (a rotation of the signer)."""
        return self._fetch_ca_file("route-signer.pem"), self._fetch_ca_file("chain.pem")

    def _fetch_ca_file(self, name: str) -> bytes:
        result = self.request("GET", f"/ca/{name}")
        if result.status != 200:
            raise self.fail(result, f"GET /ca/{name}")
        return result.body

    def fetch_crl(self, held_etag: str | None = None, *, root: bool = False) -> bytes | None:
        """The intermediate's CRL (SPEC §4 `/ca/crl.crl`, DER): the route signer is checked against it; with
        `root`, the root's (`/ca/root-crl.crl`), the intermediate is. With `held_etag`, the ETag of the CRL the
        node keeps, in If-None-Match: None when the management node answers 304, the CRL it serves being that one
        (docs/protocol.md §4)."""
        path = "/ca/root-crl.crl" if root else "/ca/crl.crl"
        headers = {"Accept": "application/pkix-crl"}
        if held_etag:
            headers["If-None-Match"] = held_etag
        result = self.request("GET", path, headers=headers)
        if result.status == 304 and held_etag:
            return None
        if result.status != 200:
            raise self.fail(result, f"GET {path}")
        return result.body

    # --- admission ---------------------------------------------------------------------------------
    def apply(self, token: str, information: dict, csr: str) -> str:
        result = self.request("POST", "/api/v1/applications", body={**information, "csr": csr}, bearer=token)
        if result.status != 201:
            raise self.fail(result, "the application was refused")
        return result.json()["application_id"]

    def application(self, token: str, application_id: str) -> dict:
        result = self.request("GET", f"/api/v1/applications/{application_id}", bearer=token)
        if result.status != 200:
            raise self.fail(result, "the application status is unavailable")
        return result.json()

    def fetch_certificate(self, node_id: str, bearer: str) -> bytes:
        result = self.request("GET", f"/api/v1/nodes/{node_id}/certificate", bearer=bearer,
                              headers={"Accept": "application/x-pem-file"})
        if result.status != 200:
            raise self.fail(result, "the certificate is unavailable")
        return result.body

    # --- node session (A.2) ------------------------------------------------------------------------
    def session_token(self, node_id: str, *, fresh: bool = False, key_file: Path | None = None) -> str:
        """The kept node session, or a new one signed with the current key (or `key_file`'s)."""
        with self._lock:
            if not fresh and self._session and self._session[1] > time.time() + 60:
                return self._session[0]
            timestamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            nonce = secrets.token_hex(16)
            result = self.request("POST", "/api/v1/session", body={
                "node_id": node_id, "timestamp": timestamp, "nonce": nonce,
                "signature": self.identity.sign_session(node_id, timestamp, nonce, key_file)})
            if result.status != 201:
                self._session = None
                raise self.fail(result, "the node session was refused")
            body = result.json()
            expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
            self._session = (body["token"], expires)
            return body["token"]

    def with_session(self, node_id: str, method: str, path: str, **kwargs) -> HTTPResult:
        """One call with the node session, opening a new session once if the old one died."""
        result = self.request(method, path, bearer=self.session_token(node_id), **kwargs)
        if result.status == 401:
            result = self.request(method, path, bearer=self.session_token(node_id, fresh=True), **kwargs)
        return result

    def current_certificate(self, node_id: str) -> bytes:
        """The node's newest valid certificate and its chain, fetched with its node session (§4)."""
        result = self.with_session(node_id, "GET", f"/api/v1/nodes/{node_id}/certificate",
                                   headers={"Accept": "application/x-pem-file"})
        if result.status != 200:
            raise self.fail(result, "the current certificate is unavailable")
        return result.body

    def renew(self, node_id: str, csr: str) -> bytes:
        result = self.with_session(node_id, "POST", "/api/v1/certificates/renew", body={"csr": csr})
        if result.status != 201:
            raise self.fail(result, "the renewal was refused")
        return result.body


def _content_length(headers: dict[str, str]) -> int | None:
    """The Content-Length `http.client` goes by: None for a chunked answer, or without one it can read."""
    found = {name.lower(): value for name, value in headers.items()}
    if "chunked" in found.get("transfer-encoding", "").lower():
        return None
    value = found.get("content-length", "").strip()
    return int(value) if value.isascii() and value.isdigit() else None
