"""A part the management node depends on fails for a while, then comes back: the database, Redis.

While it is away a request is answered with a 503 saying so (a client retries a 503; a 500 says the
server is broken), and once it is back the same request succeeds, with no process restarted."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from app.extensions import db
from app.sessions import nonces
from tests.appnode_processes import ManagementNode, eventually, free_port
from tests.conftest import PASSWORD, stop_process
from tests.test_routing_workers import Browser
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def request(url: str, body: dict | None = None) -> tuple[int, dict, str]:
    """(status, headers, body) of one request on a fresh connection; an HTTP error is an answer too."""
    data = json.dumps(body).encode() if body is not None else None
    outgoing = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json",
                                                               "Connection": "close"})
    try:
        with urllib.request.urlopen(outgoing, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


class DatabaseOutage:
    """PostgreSQL refusing every connection to the test's database, and dropping those it had."""

    def __init__(self, url: str):
        self.name = make_url(url).database
        self.admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")

    def begin(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false'))
            connection.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                                    " WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": self.name})

    def end(self) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS true'))
        self.admin.dispose()


def test_while_the_database_is_away_requests_get_503_and_afterwards_succeed(app, people):  # noqa: F811
    if db.engine.dialect.name != "postgresql":
        pytest.skip("a database server going away is PostgreSQL's; SQLite is a file in the process")
    node, keys = admit_with_keys(people)
    node_id = node.node_id
    server = ManagementNode(app.config["SQLALCHEMY_DATABASE_URI"], app.config["MPIM_INSTANCE_PATH"])
    outage = DatabaseOutage(app.config["SQLALCHEMY_DATABASE_URI"])
    console = Browser(server.url)
    console.post_form("/login", {"username": "minister", "password": PASSWORD})
    db.session.remove()
    db.engine.dispose()
    try:
        outage.begin()
        try:
            status, headers, body = request(f"{server.url}/api/v1/session", keys.session_request(node_id))
            assert status == 503, body
            assert json.loads(body)["error"]["code"] == "database_unavailable"
            assert int(headers["Retry-After"]) > 0
            response, page = console.get("/nodes/")
            assert response.status == 503 and "Retry-After" in response.headers, page
        finally:
            outage.end()
        status, _, body = request(f"{server.url}/api/v1/session", keys.session_request(node_id))
        assert status == 201, body
        assert console.get("/nodes/")[0].status == 200
    finally:
        server.stop()


class RedisServer:
    """A redis-server of the test's own on a free port, kept in memory only (as `--save ''` runs it):
    stopping it and starting it again loses every key, as a restart without persistence does."""

    def __init__(self):
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is part of this machine; it must be installed")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.process = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                         "--save", "", "--appendonly", "no"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        eventually(lambda: self._answers(client), what=f"redis-server on port {self.port}")
        client.close()

    @staticmethod
    def _answers(client) -> bool:
        try:
            return client.ping()
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture
def redis_server(app):
    server = RedisServer()
    try:
        app.config["REDIS_URL"] = server.url
        redis.Redis.from_url(server.url).set(nonces.SINCE_KEY, "0")  # as if it had remembered nonces for long
        yield server
    finally:
        server.stop()


def test_while_redis_is_away_a_session_gets_503_and_afterwards_opens(app, client, people, redis_server):  # noqa: F811
    node, keys = admit_with_keys(people)
    assert client.post("/api/v1/session", json=keys.session_request(node.node_id)).status_code == 201
    redis_server.stop()
    away = client.post("/api/v1/session", json=keys.session_request(node.node_id))
    assert away.status_code == 503, away.get_data(as_text=True)
    assert away.get_json()["error"]["code"] == "nonce_store_unavailable"
    assert int(away.headers["Retry-After"]) > 0
    redis_server.start()  # with no keys: see the next test
    assert client.post("/api/v1/session", json=keys.session_request(node.node_id)).status_code == 503
    later = datetime.now(UTC) + nonces.WINDOW
    back = client.post("/api/v1/session", json=keys.session_request(node.node_id, timestamp=stamp(later)))
    assert back.status_code == 201, back.get_data(as_text=True)


def stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_a_nonce_used_before_redis_lost_its_keys_is_not_accepted_again(app, client, people, redis_server):  # noqa: F811
    """Redis restarted without persistence (or flushed, or failed over to an empty replica) has forgotten
    every nonce: a session request captured before, replayed within its 5 minutes, must not open a session.
    Until no request signed before the loss can still pass the timestamp check, the registry says so."""
    node, keys = admit_with_keys(people)
    captured = keys.session_request(node.node_id)
    assert client.post("/api/v1/session", json=captured).status_code == 201
    redis_server.stop()
    redis_server.start()
    replay = client.post("/api/v1/session", json=captured)
    assert replay.status_code == 503, replay.get_data(as_text=True)
    assert replay.get_json()["error"]["code"] == "nonce_store_restarted"
    assert 0 < int(replay.headers["Retry-After"]) <= 2 * nonces.WINDOW.total_seconds()
    fresh = client.post("/api/v1/session", json=keys.session_request(node.node_id))
    assert fresh.status_code == 503  # signed now, yet no newer than a request captured just before the loss
    # A request signed a full window after Redis began remembering again cannot have been seen before.
    later = datetime.now(UTC) + nonces.WINDOW
    assert client.post("/api/v1/session",
                       json=keys.session_request(node.node_id, timestamp=stamp(later))).status_code == 201


def unreadable(path: Path) -> Path:
    """Put something that cannot be read as a file where `path` was (a directory: permissions would do
    too, but the suite may run as root, who reads through them); returns where the file went."""
    kept = path.with_name(path.name + ".kept")
    path.rename(kept)
    path.mkdir()
    return kept


def readable_again(path: Path, kept: Path) -> None:
    path.rmdir()
    kept.rename(path)


@contextmanager
def database_away(app) -> Iterator[None]:
    """The app's database unreachable for the block: PostgreSQL refusing connections, or for SQLite a
    directory where its file was (what a lost mount looks like). The app's pooled connections are
    closed first, so its next query has to connect."""
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    db.session.remove()
    db.engine.dispose()
    if db.engine.dialect.name == "postgresql":
        outage = DatabaseOutage(url)
        outage.begin()
        try:
            yield
        finally:
            outage.end()
    else:
        path = Path(make_url(url).database)
        kept = unreadable(path)
        try:
            yield
        finally:
            readable_again(path, kept)


@pytest.mark.parametrize("name", ["intermediate.key", "intermediate.pem", "route-signer.key"])
def test_a_ca_file_that_cannot_be_read_is_a_503_and_then_recovers(app, client, name):
    """Every process reads the CA directory (a shared file system on several hosts): a file it cannot
    read (an unmounted share, permissions, an I/O error) was a 500 and a traceback. What needs the CA's
    keys (OCSP here) answers tryLater, the reason named to the admins (the console's banner) and not to anyone
    asking; the route signer's certificate, which needs no key, is published all along."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    from app.pki import readiness

    directory = Path(app.config["MPIM_CA_DIR"])
    signer = x509.load_pem_x509_certificate((directory / "route-signer.pem").read_bytes())
    issuer = x509.load_pem_x509_certificate((directory / "intermediate.pem").read_bytes())
    asked = ocsp.OCSPRequestBuilder().add_certificate(signer, issuer, hashes.SHA256()).build()

    def ask_ocsp():
        response = client.post("/ca/ocsp", data=asked.public_bytes(serialization.Encoding.DER),
                               content_type="application/ocsp-request")
        assert response.status_code == 200 and name.encode() not in response.data
        return ocsp.load_der_ocsp_response(response.data).response_status

    assert ask_ocsp() == ocsp.OCSPResponseStatus.SUCCESSFUL
    kept = unreadable(directory / name)
    try:
        if name.startswith("route-signer"):  # a process that runs already keeps the pair it holds
            assert ask_ocsp() == ocsp.OCSPResponseStatus.SUCCESSFUL
        app.extensions.pop("mpim_authority", None)  # as a process starting now
        assert ask_ocsp() == ocsp.OCSPResponseStatus.TRY_LATER
        assert name in readiness.condition().reason
        assert client.get("/ca/route-signer.pem").status_code == 200
    finally:
        readable_again(directory / name, kept)
    assert ask_ocsp() == ocsp.OCSPResponseStatus.SUCCESSFUL
