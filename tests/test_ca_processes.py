"""The CA's service keys across processes (issue 4 §6): `flask ca rotate-route-signer` runs as its own
process beside gunicorn's workers; every worker must then serve the new signer certificate and sign with
the new key, and two rotations must not interleave."""

from __future__ import annotations

import base64
import fcntl
import json
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from app.extensions import db
from app.routing import service as routing
from tests.appnode_processes import ManagementNode
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)


def fetch(url: str, headers: dict | None = None):
    """One request on a fresh connection, so that either worker may answer."""
    request = urllib.request.Request(url, headers={"Connection": "close", **(headers or {})})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers, response.read()


def from_every_worker(url: str, headers: dict | None = None) -> dict[str, tuple]:
    """(headers, body) as each of the two workers answers `url`."""
    answers: dict[str, tuple] = {}
    deadline = time.monotonic() + 30
    while len(answers) < 2:
        assert time.monotonic() < deadline, "both workers should have answered"
        response_headers, body = fetch(url, headers)
        answers.setdefault(response_headers["X-Served-By"], (response_headers, body))
    return answers


def fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def test_every_worker_signs_with_the_route_signer_another_process_rotated(app, client, people):  # noqa: F811
    admitted = [admit_with_keys(people) for _ in range(3)]
    assert routing.head_version() >= 3
    node, keys = admitted[0]
    token = client.post("/api/v1/session", json=keys.session_request(node.node_id)).get_json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    db.session.commit()
    ca_dir = Path(app.config["MPIM_CA_DIR"])
    old = x509.load_pem_x509_certificate((ca_dir / "route-signer.pem").read_bytes())
    server = ManagementNode(app.config["SQLALCHEMY_DATABASE_URI"], app.config["MPIM_INSTANCE_PATH"], workers=2,
                            env={"MPIM_EXPOSE_WORKER_PID": "1"})
    try:
        for _, body in from_every_worker(f"{server.url}/ca/route-signer.pem").values():
            assert fingerprint(x509.load_pem_x509_certificate(body)) == fingerprint(old)
        head = routing.head_version()
        for headers, _ in from_every_worker(f"{server.url}/api/v1/routes?since={head - 2}", auth).values():
            assert headers["X-Route-Signer"] == fingerprint(old)  # each worker signed this delta itself

        done = server.flask("ca", "rotate-route-signer")
        assert done.returncode == 0, done.stderr
        new = x509.load_pem_x509_certificate((ca_dir / "route-signer.pem").read_bytes())
        assert fingerprint(new) != fingerprint(old)

        for _, body in from_every_worker(f"{server.url}/ca/route-signer.pem").values():
            assert fingerprint(x509.load_pem_x509_certificate(body)) == fingerprint(new)
        db.session.expire_all()
        head = routing.head_version()  # the rotation re-signed the table as a new version
        for url in (f"{server.url}/api/v1/routes", f"{server.url}/api/v1/routes?since={head - 2}"):
            for headers, body in from_every_worker(url, auth).values():
                assert headers["X-Route-Signer"] == fingerprint(new)
                new.public_key().verify(base64.b64decode(headers["X-Route-Signature"]), body,
                                        ec.ECDSA(hashes.SHA256()))
                assert json.loads(body)["version"] == head
    finally:
        server.stop()


def test_a_rotation_waits_for_the_one_in_progress(app):
    ca_dir = Path(app.config["MPIM_CA_DIR"])
    db.session.commit()
    before = (ca_dir / "route-signer.pem").read_bytes()
    server = ManagementNode(app.config["SQLALCHEMY_DATABASE_URI"], app.config["MPIM_INSTANCE_PATH"])
    try:
        with open(ca_dir / ".rotation.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # as a rotation in another process holds it
            rotating = server.flask("ca", "rotate-route-signer", wait=False)
            time.sleep(3)
            assert rotating.poll() is None, "the rotation should wait for the lock"
            assert (ca_dir / "route-signer.pem").read_bytes() == before
            fcntl.flock(lock, fcntl.LOCK_UN)
        out, err = rotating.communicate(timeout=60)
        assert rotating.returncode == 0, err
    finally:
        server.stop()
    current = x509.load_pem_x509_certificate((ca_dir / "route-signer.pem").read_bytes())
    assert current.public_bytes(serialization.Encoding.PEM) != before
    current_key = serialization.load_pem_private_key((ca_dir / "route-signer.key").read_bytes(),
                                                     b"test-ca-passphrase")
    assert current_key.public_key().public_numbers() == current.public_key().public_numbers()
    old_serial = format(x509.load_pem_x509_certificate(before).serial_number, "x")
    archived = x509.load_pem_x509_certificate((ca_dir / f"route-signer.{old_serial}.pem").read_bytes())
    archived_key = serialization.load_pem_private_key((ca_dir / f"route-signer.{old_serial}.key").read_bytes(),
                                                      b"test-ca-passphrase")
    assert archived.public_bytes(serialization.Encoding.PEM) == before
    assert archived_key.public_key().public_numbers() == archived.public_key().public_numbers()
    assert not list(ca_dir.glob("*.new"))
