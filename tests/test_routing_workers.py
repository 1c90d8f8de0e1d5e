"""Many workers, one truth: gunicorn with 2 workers on PostgreSQL serves a change made through one
worker from the other on the next pull, with the new version and a valid signature (issue 5)."""

from __future__ import annotations

import base64
import http.cookiejar
import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from app.extensions import db
from tests.appnode_processes import free_port
from tests.conftest import PASSWORD, stop_process
from tests.test_sessions import admit_with_keys, people  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parent.parent


class Browser:
    """Cookies and CSRF tokens over real HTTP, each request on a fresh connection."""

    def __init__(self, base: str):
        self.base = base
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def get(self, path: str, headers: dict | None = None):
        request = urllib.request.Request(self.base + path, headers={"Connection": "close", **(headers or {})})
        try:
            response = self.opener.open(request, timeout=10)
        except urllib.error.HTTPError as error:
            response = error
        return response, response.read()

    def post_form(self, page: str, data: dict, action: str | None = None):
        _, html = self.get(page)
        token = re.search(rb'name="csrf_token"[^>]*value="([^"]+)"', html).group(1).decode()
        body = urllib.parse.urlencode({**data, "csrf_token": token}).encode()
        request = urllib.request.Request(self.base + (action or page), data=body, headers={"Connection": "close"})
        response = self.opener.open(request, timeout=10)
        return response, response.read()


def test_a_change_through_one_worker_is_served_by_the_other(app, client, people):  # noqa: F811
    if db.engine.dialect.name != "postgresql":
        pytest.skip("two gunicorn workers sharing one truth is proven on PostgreSQL (CI's second run)")
    puller, keys = admit_with_keys(people)
    target, _ = admit_with_keys(people)
    token = client.post("/api/v1/session", json=keys.session_request(puller.node_id)).get_json()["token"]
    port = free_port()
    env = {**os.environ, "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"].replace("+psycopg", ""),
           "MPIM_INSTANCE_PATH": app.config["MPIM_INSTANCE_PATH"], "MPIM_CA_PASSPHRASE": "test-ca-passphrase",
           "SECRET_KEY": "test-secret-key", "MPIM_COOKIE_SECURE": "0", "MPIM_EXPOSE_WORKER_PID": "1",
           "MPIM_ACCESS_LOG": "/dev/null"}
    server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-w", "2", "-b",
                               f"127.0.0.1:{port}", "wsgi:app"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    browser = Browser(base)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1).read()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "gunicorn did not start"
                time.sleep(0.2)
        auth = {"Authorization": f"Bearer {token}"}
        before, body = browser.get("/api/v1/routes", auth)
        old_version = json.loads(body)["version"]
        assert target.node_id in body.decode()

        browser.post_form("/login", {"username": "minister", "password": PASSWORD})
        browser.post_form(f"/nodes/{target.node_id}", {"reason": "drill"}, action=f"/nodes/{target.node_id}/suspend")
        db.session.expire_all()
        assert db.session.get(type(target), target.node_id).status == "suspended"  # made through one worker

        signer = x509.load_pem_x509_certificate(browser.get("/ca/route-signer.pem")[1])
        seen: dict[str, dict] = {}
        deadline = time.monotonic() + 30
        while len(seen) < 2 and time.monotonic() < deadline:  # until both workers have answered
            response, body = browser.get("/api/v1/routes", {**auth, "If-None-Match": f'"{old_version}"'})
            if response.status == 200:
                signature = base64.b64decode(response.headers["X-Route-Signature"])
                signer.public_key().verify(signature, body, ec.ECDSA(hashes.SHA256()))
                seen[response.headers["X-Served-By"]] = json.loads(body)
        assert len(seen) == 2, "both workers should have answered"
        for table in seen.values():  # so whichever worker made the change, the other serves it too
            assert table["version"] == old_version + 1
            assert target.node_id not in [entry["node_id"] for entry in table["nodes"]]
    finally:
        stop_process(server)
