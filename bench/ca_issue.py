"""Certificate issuance through the service against a bare cryptography signing loop, same run.

Service path per certificate: parse the CSR, apply the key policy, sign with the intermediate,
store the row and its audit record, commit. Baseline: CertificateBuilder.sign with a fixed
subject and an EC P-256 key, nothing else. Goal (issue 4): ratio ≥ 0.5.
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import fresh_app, report  # noqa: E402
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

COUNT = 1500


def csrs(count: int) -> list[str]:
    """Node keys and CSRs are the nodes' work, made before the clock starts."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    pem = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256()) \
        .public_bytes(serialization.Encoding.PEM).decode()
    return [pem] * count


def baseline_rate(count: int) -> float:
    issuer_key = ec.generate_private_key(ec.SECP256R1())
    subject_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.now(UTC)
    started = time.perf_counter()
    for _ in range(count):
        (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=90))
         .sign(issuer_key, hashes.SHA256()))
    return count / (time.perf_counter() - started)


def service_rate(count: int) -> float:
    app = fresh_app("ca", MPIM_CA_PASSPHRASE="bench-passphrase")
    with app.app_context():
        from app.admission import applications
        from app.admission.information import parse
        from app.auth import service as users
        from app.extensions import db
        from app.pki import service as pki

        pki.initialise(actor="bench")
        minister = users.create_user(users.UserDraft("minister", "Bench-Password-1", "ministry_admin"))
        pem = csrs(1)[0]
        document = {"division_code": "360000", "org_name": "江西省公安厅", "system_name": "bench", "vendor": "v",
                    "endpoint": "https://bench.example", "capabilities": ["text"],
                    "contact": {"name": "n", "phone": "0791-1234567", "email": "a@b.cn"}}
        node = applications.approve(applications.submit_by_user(parse(document), pem, by=minister), by=minister)
        db.session.commit()
        node_id = node.node_id
        batch = csrs(count)
        db.session.remove()
        started = time.perf_counter()
        for csr in batch:  # one session per issuance, as one request has
            from app.admission.models import Node

            pki.issue_for_node(db.session.get(Node, node_id), csr, actor="bench")
            db.session.commit()
            db.session.remove()
        return count / (time.perf_counter() - started)


def main() -> None:
    baseline_rate(100)  # warm up
    baseline = baseline_rate(COUNT)
    value = service_rate(COUNT)
    print(f"service {value:.0f} certificates/s, bare signing {baseline:.0f}/s")
    report("ca_issue", value, baseline, 0.5, unit="certificates per second (SQLite, one process)")


if __name__ == "__main__":
    main()
