"""Routing-table pulls under a real HTTP load generator (wrk) against gunicorn, same run.

3,000 nodes in the table, gunicorn with its default worker count, PostgreSQL. Figures (issue 5):
- 304 pulls/s ÷ a hello-world endpoint of the same app (goal ≥ 0.8);
- full-table pulls/s ÷ the same pre-serialised bytes from a bare endpoint (goal ≥ 0.7);
- delta pulls (one change) /s ÷ hello-world (goal ≥ 0.7).
Run: `.venv/bin/python bench/routes.py` (needs wrk and PostgreSQL at 127.0.0.1:5432, trust auth).
gunicorn imports this module as `routes:bench_app()` with bench/ on its path.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

NODES = 3000
DATABASE = "mpim_bench_routes"
ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def bench_app():
    """The real app plus two bench-only routes: hello-world, and the current table's bytes as-is."""
    from app import create_app
    from app.routing import service

    app = create_app()
    with app.app_context():
        body = service.head().body

    @app.get("/bench/hello")
    def hello():
        return "ok"

    @app.get("/bench/bare")
    def bare():
        return body, 200, {"Content-Type": "application/json"}

    return app


def psql(sql: str) -> None:
    subprocess.run(["psql", ADMIN_URL, "-qc", sql], check=True, capture_output=True)


def seed(env: dict) -> tuple[str, int]:
    """Migrate a fresh database, load 3,000 nodes with real certificates, publish two versions."""
    os.environ.update(env)
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from flask_migrate import upgrade

    from app import create_app
    from app.admission.models import CAPABILITIES, Application, Node
    from app.divisions import service as divisions
    from app.extensions import db
    from app.pki import lifecycle
    from app.pki import service as pki
    from app.pki.models import Certificate
    from app.routing import service as routing
    from app.sessions import service as sessions
    from tests.factories import NodeKeys

    app = create_app()
    with app.app_context():
        upgrade()
        divisions.import_revision(divisions.DEFAULT_FILE.read_bytes(), "2023", actor="bench")
        lifecycle.initialise(actor="bench")
        keys = NodeKeys()
        csr = x509.load_pem_x509_csr(keys.csr.encode())
        provinces = ["110000", "360000", "440000", "510000", "650000", "330000"]
        authority = pki.authority()
        applications, nodes, certificates = [], [], []
        for index in range(NODES):
            division = provinces[index % len(provinces)]
            node_id = f"{division}00002025{index + 1:06d}"
            common = dict(division_code=division, org_name=f"公安厅 {index}", system_name=f"系统 {index}",
                          vendor="Vendor", endpoint=f"https://n{index}.example.cn", contact_name="张三",
                          contact_phone="0791-1234567", contact_email="ops@example.cn", capabilities=list(CAPABILITIES))
            applications.append({"id": f"{index:032x}", "kind": "admission", "status": "approved", **common})
            nodes.append({"node_id": node_id, "province_prefix": division[:2], "status": "active",
                          "application_id": f"{index:032x}", "approved_by": "bench", **common})
            certificate = authority.issue_node_certificate(csr, node_id=node_id, org_name="bench",
                                                           endpoint_host=f"n{index}.example.cn")
            certificates.append({
                "serial": format(certificate.serial_number, "x"), "kind": "node", "node_id": node_id,
                "subject": node_id, "sha256": certificate.fingerprint(hashes.SHA256()).hex(), "key_description": "EC",
                "pem": certificate.public_bytes(serialization.Encoding.PEM).decode(), "issued_by": "bench",
                "not_before": certificate.not_valid_before_utc, "not_after": certificate.not_valid_after_utc})
        db.session.execute(Application.__table__.insert(), applications)
        db.session.execute(Node.__table__.insert(), nodes)
        db.session.execute(Certificate.__table__.insert(), certificates)
        routing.publish("bench")
        db.session.get(Node, nodes[7]["node_id"]).endpoint = "https://moved.example.cn"
        version = routing.publish("bench change").version
        raw, _, _ = sessions.open_session(keys.session_request(nodes[0]["node_id"]))
        db.session.commit()
        size = len(routing.head().body)
        db.engine.dispose()
        del ec
    print(f"seeded {NODES} nodes; table v{version} is {size // 1024} KB")
    return raw, version


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wrk(url: str, headers: dict[str, str], seconds: int = 5) -> float:
    args = ["wrk", "-t2", "-c32", f"-d{seconds}s"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    output = subprocess.run([*args, url], check=True, capture_output=True, text=True).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"{url}: {non_2xx.group(1)} error responses\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def main() -> None:
    from common import report

    psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    psql(f"CREATE DATABASE {DATABASE}")
    instance = Path(tempfile.mkdtemp(prefix="mpim-bench-routes-"))
    env = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:5432/{DATABASE}", "MPIM_INSTANCE_PATH": str(instance),
           "MPIM_CA_PASSPHRASE": "bench-passphrase", "SECRET_KEY": "bench", "MPIM_ACCESS_LOG": "/dev/null"}
    token, version = seed(env)
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("gunicorn")), "-c", str(ROOT / "gunicorn.conf.py"),
                               "--pythonpath", f"{HERE},{ROOT}", "-b", f"127.0.0.1:{port}", "routes:bench_app()"],
                              cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/bench/hello", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("gunicorn did not start") from None
                time.sleep(0.2)
        auth = {"Authorization": f"Bearer {token}"}
        wrk(f"{base}/bench/hello", {}, 2)  # warm every worker
        wrk(f"{base}/api/v1/routes", auth, 2)
        hello = wrk(f"{base}/bench/hello", {})
        not_modified = wrk(f"{base}/api/v1/routes", {**auth, "If-None-Match": f'"{version}"'})
        bare = wrk(f"{base}/bench/bare", {})
        full = wrk(f"{base}/api/v1/routes", auth)
        delta = wrk(f"{base}/api/v1/routes?since={version - 1}", auth)
    finally:
        server.terminate()
        server.wait(30)
        psql(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    print(f"hello {hello:.0f}/s, 304 {not_modified:.0f}/s, bare body {bare:.0f}/s, full {full:.0f}/s, "
          f"delta {delta:.0f}/s")
    report("routes_304", not_modified, hello, 0.8, unit="requests/s, wrk -t2 -c32, gunicorn default workers")
    report("routes_full", full, bare, 0.7, unit="requests/s", nodes=NODES)
    report("routes_delta", delta, hello, 0.7, unit="requests/s", changes=1)


if __name__ == "__main__":
    main()
